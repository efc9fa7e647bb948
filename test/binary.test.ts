/**
 * Needs the build tool: builds the host CPU executable with build.ts, copies it alone into an empty
 * directory with a fresh HOME and no node_modules, and uses it with the network off (`unshare -n`
 * where the machine allows it). Also: reproducible runtime hash, integrity check and re-extraction,
 * simultaneous first runs, pruning, an unwritable home, loud failures for bad platform packages.
 * Skipped where build.ts has no CPU target for the host (only linux-x64 here).
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { embeddedArchive, inspectArtifact, inspectExecutable } from "../build.ts";
import { writeTinyModel } from "../src/gguf/presets.ts";
import { REPO } from "./helpers.ts";

// Builds a 120 MB executable and runs it several times on 2 shared cores.
setDefaultTimeout(120_000);

const HOST = process.platform === "linux" && process.arch === "x64";
const maybe = HOST ? describe : describe.skip;

let tmp: string;
let exe: string;
let work: string;

function unshareWorks(): boolean {
  const r = Bun.spawnSync(["unshare", "-n", "sh", "-c", "ip link set lo up"], { stdout: "ignore", stderr: "ignore" });
  return r.exitCode === 0;
}

async function run(args: string[], opts: { home: string; env?: Record<string, string>; stdin?: string }) {
  const p = Bun.spawn([exe, ...args], {
    cwd: work,
    env: { PATH: "/usr/bin:/bin", HOME: opts.home, SHIMMY_THREADS: "1", SHIMMY_DEMO_MODEL: "0", ...opts.env },
    stdin: opts.stdin === undefined ? "ignore" : new TextEncoder().encode(opts.stdin),
    stdout: "pipe",
    stderr: "pipe",
  });
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { code, stdout, stderr };
}

const runtimeDirs = (home: string) => {
  const base = path.join(home, ".cache", "shimmy", "runtime");
  return existsSync(base) ? readdirSync(base) : [];
};

maybe("single-file executable", () => {
  beforeAll(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), "shimmy-bin-test-"));
    const out = path.join(tmp, "dist");
    const build = Bun.spawnSync(["bun", path.join(REPO, "build.ts"), "--target", "linux-x64-cpu", "--outdir", out], { cwd: REPO, stdout: "pipe", stderr: "pipe" });
    if (build.exitCode !== 0) throw new Error(`build failed: ${build.stderr}`);
    // Alone: an empty directory with the executable and a model, no node_modules anywhere above it.
    work = path.join(tmp, "alone");
    mkdirSync(path.join(work, "models"), { recursive: true });
    exe = path.join(work, "shimmy");
    copyFileSync(path.join(out, "shimmy-linux-x64-cpu"), exe);
    require("node:fs").chmodSync(exe, 0o755);
    await writeTinyModel(path.join(work, "models", "tiny.gguf"), { seed: 5 });
  });
  afterAll(() => {
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  test("is an x86-64 ELF and builds reproducibly (same runtime hash, same bytes)", () => {
    expect(inspectExecutable(exe)).toEqual({ format: "elf", arch: "x64" });
    const again = path.join(tmp, "dist2");
    const build = Bun.spawnSync(["bun", path.join(REPO, "build.ts"), "--target", "linux-x64-cpu", "--outdir", again], { cwd: REPO, stdout: "pipe", stderr: "pipe" });
    expect(build.exitCode).toBe(0);
    expect(readFileSync(path.join(again, "SHA256SUMS"), "utf8")).toBe(readFileSync(path.join(tmp, "dist", "SHA256SUMS"), "utf8"));
  });

  test("--inspect finds the embedded runtime and its native libraries", () => {
    const artifact = path.join(tmp, "dist", "shimmy-linux-x64-cpu");
    const entries = embeddedArchive(artifact)!;
    expect(entries.map((e) => e.path)).toContain("@node-llama-cpp/linux-x64/bins/linux-x64/llama-addon.node");
    expect(entries.map((e) => e.path)).toContain("node-llama-cpp/package.json");
    const r = inspectArtifact(artifact);
    expect(r.ok).toBe(true);
    expect(r.lines[0]).toMatch(/^shimmy-linux-x64-cpu: elf x64, .* MiB, \d+ embedded files$/);
    // A file that is not an artifact of its name is refused.
    const fake = path.join(tmp, "dist", "shimmy-darwin-arm64");
    copyFileSync(artifact, fake);
    const bad = inspectArtifact(fake);
    expect(bad.ok).toBe(false);
    expect(bad.lines[0]).toContain("is elf/x64, expected macho/arm64");
    rmSync(fake);
  });

  test("works alone and offline: --version, list, generate, serve with SSE and WebSocket", async () => {
    const home = path.join(tmp, "home-offline");
    mkdirSync(home);
    const smoke = ["bun", path.join(REPO, "test/fixtures/binary-smoke.ts"), exe, work, home];
    const offline = unshareWorks();
    const cmd = offline ? ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", ...smoke] : smoke;
    const p = Bun.spawnSync(cmd, { cwd: work, stdout: "pipe", stderr: "pipe" });
    expect(p.exitCode).toBe(0);
    const r = JSON.parse(p.stdout.toString());
    if (offline) expect(r.network).toStartWith("unreachable");
    expect(r.version.code).toBe(0);
    expect(r.version.stdout).toMatch(/^shimmy \d+\.\d+\.\d+\nllama\.cpp \S+ \(node-llama-cpp 3\.21\.1\)\nbackends: cpu\ntarget: linux-x64-cpu\n$/);
    expect(r.list).toMatchObject({ code: 0, stdout: "tiny\n" });
    expect(r.generate.code).toBe(0);
    expect(r.generate.stderr).toBe("");
    const gen = JSON.parse(r.generate.stdout);
    expect(gen.timings.predicted_n).toBe(8);
    expect(gen.text.length).toBeGreaterThan(0);
    expect(r.sse.status).toBe(200);
    expect(r.sse.type).toStartWith("text/event-stream");
    expect(r.sse.body.trimEnd()).toEndWith("data: [DONE]");
    // 5 token events, the named `done` event, [DONE].
    expect(r.sse.body.split("\n\n").filter(Boolean).length).toBe(7);
    expect(r.sse.body).toContain("event: done\ndata: {");
    expect(r.ws.frames.length).toBe(6);
    expect(JSON.parse(r.ws.frames.at(-1))).toMatchObject({ done: true, finish_reason: "length" });
    // The playground page is embedded in the binary.
    expect(r.playground).toMatchObject({ status: 200, type: "text/html; charset=utf-8" });
    expect(r.playground.csp).toContain("script-src 'sha256-");
    expect(r.playground.body).toContain("<title>shimmy playground</title>");
    expect(r.serveExit).toBe(0);
    expect(runtimeDirs(home)).toHaveLength(1);
  });

  test("the executable compiles and installs the persistent CPU threadpools and synchronous greedy sampling (bun:ffi TinyCC inside the binary)", async () => {
    const home = path.join(tmp, "home-threadpool");
    mkdirSync(home);
    const args = ["generate", "tiny", "--prompt", "hello", "--max-tokens", "6", "--temperature", "0", "--threads", "2"];
    const on = await run(args, { home, env: { SHIMMY_LOG: "debug" } });
    expect(on.code).toBe(0);
    expect(on.stderr).toContain("threadpool: persistent pools per context");
    // Synchronous greedy sampling (greedy.c, also TinyCC) installs and checks out in the binary too.
    expect(on.stderr).toContain("sampling: greedy requests sampled synchronously");
    // ...and so do decode steps on the JavaScript thread (greedy.c's llama_decode call).
    expect(on.stderr).toContain("decode: short generation steps on the JavaScript thread");
    // Huge pages for llama.cpp's big buffers (hugepages.c, TinyCC) install in the binary too.
    if (!readFileSync("/sys/kernel/mm/transparent_hugepage/enabled", "utf8").includes("[never]")) expect(on.stderr).toContain("hugepages: llama.cpp's CPU buffers of 16 MiB or more ask for transparent huge pages");
    expect(on.stderr).not.toContain("did not check out");
    expect(on.stderr).not.toContain("differs from node-llama-cpp's");
    const off = await run(args, { home, env: { SHIMMY_LOG: "debug", SHIMMY_THREADPOOL: "0", SHIMMY_SYNC_GREEDY: "0", SHIMMY_SYNC_DECODE: "0", SHIMMY_HUGEPAGES: "0" } });
    expect(off.code).toBe(0);
    expect(off.stderr).toContain("threadpool: node-llama-cpp's default");
    expect(off.stderr).toContain("sampling: node-llama-cpp's sampler for every request: turned off");
    expect(off.stderr).toContain("decode: every step on the addon's worker threads: turned off");
    expect(off.stderr).toContain("hugepages: not used: turned off (SHIMMY_HUGEPAGES=0)");
    expect(on.stdout).toBe(off.stdout);
    expect(on.stdout.length).toBeGreaterThan(0);
  });

  test("simultaneous first runs share one extraction and leave no temp dirs", async () => {
    const home = path.join(tmp, "home-concurrent");
    mkdirSync(home);
    const results = await Promise.all([1, 2, 3].map(() => run(["generate", "tiny", "--max-tokens", "3", "--prompt", "x"], { home })));
    for (const r of results) {
      expect(r.code).toBe(0);
      expect(r.stdout.length).toBeGreaterThan(0);
    }
    expect(runtimeDirs(home)).toHaveLength(1);
  });

  test("a truncated or modified cache is detected and extracted again; other versions are pruned", async () => {
    const home = path.join(tmp, "home-tamper");
    mkdirSync(home);
    expect((await run(["generate", "tiny", "--max-tokens", "2", "--prompt", "x"], { home })).code).toBe(0);
    const base = path.join(home, ".cache", "shimmy", "runtime");
    const [hash] = runtimeDirs(home);
    const lib = path.join(base, hash!, "@node-llama-cpp/linux-x64/bins/linux-x64/libllama.v0.4.0.so");
    const size = statSync(lib).size;
    truncateSync(lib, 1000);
    // A fake older version, as a previous shimmy release would have left it.
    mkdirSync(path.join(base, "0123456789abcdef"));
    writeFileSync(path.join(base, "0123456789abcdef", ".shimmy-runtime.json"), "{}");
    const r = await run(["generate", "tiny", "--max-tokens", "2", "--prompt", "x"], { home });
    expect(r.code).toBe(0);
    expect(r.stderr).toContain("incomplete or modified");
    expect(statSync(lib).size).toBe(size);
    expect(runtimeDirs(home).filter((d) => !d.startsWith("."))).toEqual([hash!]);
  });

  test("SHIMMY_RUNTIME_DIR overrides the location; an unwritable home falls back to the temp dir", async () => {
    const rtDir = path.join(tmp, "custom-runtime");
    expect((await run(["probe", "tiny"], { home: path.join(tmp, "home-x"), env: { SHIMMY_RUNTIME_DIR: rtDir } })).code).toBe(0);
    expect(readdirSync(rtDir).filter((d) => !d.startsWith("."))).toHaveLength(1);
    // HOME is a file: nothing can be created under it.
    const fileHome = path.join(tmp, "home-is-a-file");
    writeFileSync(fileHome, "");
    const tmpRuntime = path.join(tmp, "tmpdir");
    mkdirSync(tmpRuntime);
    const r = await run(["probe", "tiny"], { home: fileHome, env: { TMPDIR: tmpRuntime } });
    expect(r.code).toBe(0);
    expect(readdirSync(tmpRuntime).some((d) => d.startsWith("shimmy-runtime-"))).toBe(true);
  });
});

describe("build.ts failures", () => {
  test("a missing platform package or a version mismatch fails the build loudly", () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "shimmy-pkgs-"));
    try {
      const missing = Bun.spawnSync(["bun", path.join(REPO, "build.ts"), "--target", "darwin-arm64", "--packages-dir", dir, "--outdir", path.join(dir, "out")], { cwd: REPO, stdout: "pipe", stderr: "pipe" });
      expect(missing.exitCode).toBe(1);
      expect(missing.stderr.toString()).toContain("@node-llama-cpp/mac-arm64-metal is missing");
      cpSync(path.join(REPO, "node_modules/@node-llama-cpp/linux-x64"), path.join(dir, "linux-x64"), { recursive: true });
      const pj = path.join(dir, "linux-x64", "package.json");
      writeFileSync(pj, JSON.stringify({ ...JSON.parse(readFileSync(pj, "utf8")), version: "3.20.0" }));
      const mismatch = Bun.spawnSync(["bun", path.join(REPO, "build.ts"), "--target", "linux-x64-cpu", "--packages-dir", dir, "--outdir", path.join(dir, "out")], { cwd: REPO, stdout: "pipe", stderr: "pipe" });
      expect(mismatch.exitCode).toBe(1);
      expect(mismatch.stderr.toString()).toContain("@node-llama-cpp/linux-x64@3.20.0; node-llama-cpp needs @node-llama-cpp/linux-x64@3.21.1 exactly");
      expect(existsSync(path.join(dir, "out", "shimmy-linux-x64-cpu"))).toBe(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("an unknown target is refused", () => {
    const r = Bun.spawnSync(["bun", path.join(REPO, "build.ts"), "--target", "plan9-mips"], { cwd: REPO, stdout: "pipe", stderr: "pipe" });
    expect(r.exitCode).toBe(1);
    expect(r.stderr.toString()).toContain("unknown target 'plan9-mips'");
  });
});
