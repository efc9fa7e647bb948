/**
 * `shimmy init`: each deployment template is written by the real CLI and validated: YAML parses
 * into the expected objects, the systemd unit passes `systemd-analyze verify` where it exists, and
 * the environment the templates set really configures a server (models folder, API key file,
 * /health open without the key).
 */
import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseAllDocuments, parse as parseYaml } from "yaml";
import { writeTinyModel } from "../src/gguf/presets.ts";
import { MAIN, runCli } from "./helpers.ts";

setDefaultTimeout(60_000);

const dir = mkdtempSync(path.join(os.tmpdir(), "shimmy-init-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function init(target: string, ...extra: string[]) {
  const out = path.join(dir, target);
  const r = await runCli(["init", target, "--out", out, ...extra]);
  return { ...r, out };
}

describe("shimmy init", () => {
  test("docker: a Dockerfile with the binary, a /health HEALTHCHECK, a models volume and the key from a secret file", async () => {
    const r = await init("docker");
    expect(r.code).toBe(0);
    const text = readFileSync(path.join(r.out, "Dockerfile"), "utf8");
    expect(text).toMatch(/^FROM debian:/m);
    expect(text).toMatch(/^HEALTHCHECK .*\n\s+CMD curl -fsS http:\/\/127\.0\.0\.1:11435\/health/m);
    expect(text).toMatch(/^VOLUME \/models$/m);
    expect(text).toContain("SHIMMY_API_KEY_FILE=/run/secrets/shimmy_api_key");
    expect(JSON.parse(text.match(/^ENTRYPOINT (.*)$/m)![1]!)).toEqual(["/usr/local/bin/shimmy", "serve", "--bind", "0.0.0.0:11435"]);
    // Existing files are kept unless --force.
    const again = await init("docker");
    expect(again.code).toBe(1);
    expect(again.stderr).toContain("--force");
    expect((await init("docker", "--force")).code).toBe(0);
  });

  test("compose: valid YAML with a healthcheck on /health, the models volume and a secret", async () => {
    const r = await init("compose", "--port", "8080");
    expect(r.code).toBe(0);
    const doc = parseYaml(readFileSync(path.join(r.out, "compose.yaml"), "utf8"));
    const svc = doc.services.shimmy;
    expect(svc.build).toBe(".");
    expect(svc.ports).toEqual(["8080:8080"]);
    expect(svc.volumes).toContain("./models:/models:ro");
    expect(svc.healthcheck.test).toEqual(["CMD", "curl", "-fsS", "http://127.0.0.1:8080/health"]);
    expect(svc.secrets).toEqual(["shimmy_api_key"]);
    expect(doc.secrets.shimmy_api_key.file).toBe("./api_key");
    expect(svc.environment.SHIMMY_API_KEY_FILE).toBe("/run/secrets/shimmy_api_key");
    expect(readFileSync(path.join(r.out, "Dockerfile"), "utf8")).toContain("EXPOSE 8080");
  });

  test("k8s: a PVC, a Deployment with /health probes and the key from a Secret, and a Service", async () => {
    const r = await init("k8s");
    expect(r.code).toBe(0);
    const docs = parseAllDocuments(readFileSync(path.join(r.out, "shimmy.yaml"), "utf8")).map((d) => {
      expect(d.errors).toEqual([]);
      return d.toJS();
    });
    expect(docs.map((d) => d.kind)).toEqual(["PersistentVolumeClaim", "Deployment", "Service"]);
    const c = docs[1].spec.template.spec.containers[0];
    expect(c.readinessProbe.httpGet.path).toBe("/health");
    expect(c.livenessProbe.httpGet.path).toBe("/health");
    expect(c.env).toContainEqual({ name: "SHIMMY_API_KEY_FILE", value: "/run/secrets/shimmy/api-key" });
    expect(docs[1].spec.template.spec.volumes).toContainEqual({ name: "api-key", secret: { secretName: "shimmy-api-key" } });
    expect(docs[1].spec.template.spec.volumes).toContainEqual({ name: "models", persistentVolumeClaim: { claimName: "shimmy-models" } });
    expect(docs[2].spec.ports[0].port).toBe(11435);
  });

  test("systemd: the unit passes systemd-analyze verify (where installed)", async () => {
    const r = await init("systemd", "--bin", process.execPath);
    expect(r.code).toBe(0);
    const unit = path.join(r.out, "shimmy.service");
    const text = readFileSync(unit, "utf8");
    expect(text).toContain(`ExecStart=${process.execPath} serve --bind 0.0.0.0:11435`);
    expect(text).toContain("http://127.0.0.1:11435/health");
    expect(text).toContain("Environment=SHIMMY_API_KEY_FILE=%d/api_key");
    if (!Bun.which("systemd-analyze")) return;
    const ok = Bun.spawnSync(["systemd-analyze", "verify", unit], { stderr: "pipe" });
    expect(ok.stderr.toString()).toBe("");
    expect(ok.exitCode).toBe(0);
    // The check is real: a unit whose binary does not exist fails it.
    const bad = await runCli(["init", "systemd", "--out", path.join(dir, "bad"), "--bin", "/nonexistent/shimmy"]);
    expect(bad.code).toBe(0);
    expect(Bun.spawnSync(["systemd-analyze", "verify", path.join(dir, "bad", "shimmy.service")], { stderr: "pipe" }).exitCode).not.toBe(0);
  });

  test("unknown target and bad port are usage errors", async () => {
    const a = await runCli(["init", "helm", "--out", path.join(dir, "x")]);
    expect(a.code).toBe(1);
    expect(a.stderr).toContain("expected one of docker, compose, systemd, k8s");
    const b = await runCli(["init", "docker", "--port", "99999", "--out", path.join(dir, "y")]);
    expect(b.code).toBe(1);
    expect(b.stderr).toContain("--port");
  });

  test("the templates' environment really configures a server: models folder, key file, open /health", async () => {
    const env = parseYaml(readFileSync(path.join(dir, "compose", "compose.yaml"), "utf8")).services.shimmy.environment as Record<string, string>;
    // Same variables, with this machine's paths for the folder and the secret.
    const models = mkdtempSync(path.join(dir, "models-"));
    await writeTinyModel(path.join(models, "tiny.gguf"), { seed: 1 });
    const keyFile = path.join(dir, "api_key");
    writeFileSync(keyFile, "s3cret\n");
    expect(Object.keys(env).sort()).toEqual(["SHIMMY_API_KEY_FILE", "SHIMMY_MODEL_PATHS"]);
    const proc = Bun.spawn(["bun", MAIN, "serve", "--bind", "127.0.0.1:0"], {
      env: { ...process.env, SHIMMY_THREADS: "1", SHIMMY_GPU: "cpu", SHIMMY_DEMO_MODEL: "0", SHIMMY_MODEL_PATHS: models, SHIMMY_API_KEY_FILE: keyFile },
      stdout: "pipe",
      stderr: "pipe",
    });
    try {
      let url = "";
      const decoder = new TextDecoder();
      let seen = "";
      for await (const chunk of proc.stdout as ReadableStream<Uint8Array>) {
        seen += decoder.decode(chunk);
        const m = seen.match(/http:\/\/127\.0\.0\.1:\d+/);
        if (m) {
          url = m[0];
          break;
        }
      }
      expect(url).not.toBe("");
      expect((await fetch(`${url}/health`)).status).toBe(200);
      expect((await fetch(`${url}/api/models`)).status).toBe(401);
      const list = (await (await fetch(`${url}/api/models`, { headers: { authorization: "Bearer s3cret" } })).json()) as { models: Array<{ name: string }> };
      expect(list.models.map((m) => m.name)).toContain("tiny");
    } finally {
      proc.kill();
      await proc.exited;
    }
  });
});
