/**
 * `shimmy pull` through the real CLI against a local Hugging Face stand-in (test/hub-mock.ts) serving
 * generated models: quantisation choice, exact files, URLs, split sets, resume after a dropped
 * connection and after an interrupted run, verification, hub errors, tokens and endpoints, and that a
 * pulled model is listed and generates. Plus unit tests of the choice rules and the progress display.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { hubSettings } from "../src/config.ts";
import { AmbiguousSourceError, NoGgufError, SourceNotFoundError } from "../src/hub/errors.ts";
import { DEFAULT_QUANTS, pickChoice, quantOf, type RepoFile } from "../src/hub/hf.ts";
import { createProgress } from "../src/hub/progress.ts";
import { parseSource } from "../src/hub/source.ts";
import { HubMock, sha256, splitModelBytes, tinyModelBytes, TOKEN } from "./hub-mock.ts";
import { MAIN } from "./helpers.ts";

setDefaultTimeout(60_000);

const scratch = mkdtempSync(path.join(os.tmpdir(), "shimmy-pull-"));
const hub = new HubMock();
const models: Record<string, Uint8Array> = {};

beforeAll(async () => {
  await hub.start();
  models.q4 = await tinyModelBytes(1, "tiny-q4");
  models.q8 = await tinyModelBytes(2, "tiny-q8");
  models.f16 = await tinyModelBytes(3, "tiny-f16");
  models.other = await tinyModelBytes(4, "other");
  const [p1, p2] = await splitModelBytes(7);
  models.split1 = p1;
  models.split2 = p2;
  const readme = new TextEncoder().encode("# tiny\n");
  hub.addRepo("org/tiny-GGUF", {
    files: [
      { path: ".gitattributes", data: new TextEncoder().encode("*.gguf filter=lfs\n") },
      { path: "README.md", data: readme },
      { path: "tiny-F16.gguf", data: models.f16 },
      { path: "tiny-Q4_K_M.gguf", data: models.q4 },
      { path: "tiny-Q8_0.gguf", data: models.q8 },
    ],
  });
  hub.addRepo("org/ambiguous-GGUF", {
    files: [
      { path: "a-7b-Q4_K_M.gguf", data: models.q4 },
      { path: "a-13b-Q4_K_M.gguf", data: models.q8 },
      { path: "a-7b-Q8_0.gguf", data: models.f16 },
    ],
  });
  hub.addRepo("org/nodefault-GGUF", { files: [{ path: "x-F16.gguf", data: models.q4 }, { path: "x-BF16.gguf", data: models.q8 }] });
  hub.addRepo("org/split-GGUF", {
    files: [
      { path: "README.md", data: readme },
      { path: "Q4_K_M/split-Q4_K_M-00001-of-00002.gguf", data: models.split1 },
      { path: "Q4_K_M/split-Q4_K_M-00002-of-00002.gguf", data: models.split2 },
    ],
  });
  hub.addRepo("org/private-GGUF", { private: true, files: [{ path: "secret-Q4_K_M.gguf", data: models.other }] });
  hub.addRepo("org/gated-GGUF", { gated: true, files: [{ path: "gated-Q4_K_M.gguf", data: models.other }] });
  hub.addRepo("org/bad-GGUF", { files: [{ path: "bad-Q4_K_M.gguf", data: models.other, publishedSha256: "ab".repeat(32) }] });
  hub.addRepo("org/docs-only", { files: [{ path: "README.md", data: readme }] });
  hub.addRepo("org/small-GGUF", { files: [{ path: "small.gguf", data: models.other, lfs: false }] });
  hub.plain.set("plain-model.gguf", { data: models.other });
  hub.plain.set("nohead-model.gguf", { data: models.q8, noHead: true });
  hub.plain.set("plainsplit-00001-of-00002.gguf", { data: models.split1 });
  hub.plain.set("plainsplit-00002-of-00002.gguf", { data: models.split2 });
});

afterAll(async () => {
  await hub.stop();
  rmSync(scratch, { recursive: true, force: true });
});

/** A fresh home: HOME, XDG_DATA_HOME and a cwd of its own, so nothing of this machine leaks in. */
function home() {
  const root = mkdtempSync(path.join(scratch, "home-"));
  const data = path.join(root, "data");
  const cwd = path.join(root, "cwd");
  mkdirSync(cwd, { recursive: true });
  const env: Record<string, string> = {
    HOME: root,
    XDG_DATA_HOME: data,
    XDG_CACHE_HOME: path.join(root, "cache"),
    HF_HOME: "",
    HF_HUB_CACHE: "",
    HF_TOKEN: "",
    HF_TOKEN_PATH: "",
    HF_ENDPOINT: hub.endpoint,
    SHIMMY_HF_ENDPOINT: "",
    OLLAMA_MODELS: "",
    SHIMMY_MODEL_PATHS: "",
    SHIMMY_BASE_GGUF: "",
    SHIMMY_LORA_GGUF: "",
    SHIMMY_LOG: "",
  };
  return {
    root,
    cwd,
    env,
    modelsDir: path.join(data, "shimmy", "models"),
    downloadsDir: path.join(data, "shimmy", "downloads"),
    ggufs: () => (existsSync(path.join(data, "shimmy", "models")) ? readdirSync(path.join(data, "shimmy", "models")).filter((f) => !f.startsWith(".")) : []),
    downloads: () => (existsSync(path.join(data, "shimmy", "downloads")) ? readdirSync(path.join(data, "shimmy", "downloads")) : []),
  };
}
type Home = ReturnType<typeof home>;

/** Spawns the CLI (not through helpers.runCli: a test here needs the process to signal it). */
function spawnCli(h: Home, args: string[], env: Record<string, string> = {}) {
  return Bun.spawn(["bun", MAIN, ...args], {
    cwd: h.cwd,
    env: { ...process.env, SHIMMY_THREADS: "1", SHIMMY_GPU: "cpu", SHIMMY_DEMO_MODEL: "0", ...h.env, ...env },
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
}

async function cli(h: Home, args: string[], env: Record<string, string> = {}) {
  const proc = spawnCli(h, args, env);
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  return { code, stdout, stderr };
}

const pull = (h: Home, ...args: string[]) => cli(h, ["pull", ...args]);

function expectPulled(r: { code: number; stdout: string; stderr: string }, file: string, data: Uint8Array) {
  if (r.code !== 0) console.error(r.stderr);
  expect(r.code).toBe(0);
  expect(r.stdout).toBe(`${file}\n`);
  expect(sha256(readFileSync(file))).toBe(sha256(data));
}

describe("shimmy pull from Hugging Face", () => {
  test("no tag: the default quantisation (Q4_K_M over Q8_0 and F16), verified; stdout is only the path; the tree is read page by page", async () => {
    const h = home();
    const before = hub.requests.length;
    const r = await pull(h, "hf:org/tiny-GGUF");
    expectPulled(r, path.join(h.modelsDir, "tiny-Q4_K_M.gguf"), models.q4);
    expect(r.stderr).toContain("sha256 verified");
    expect(h.ggufs()).toEqual(["tiny-Q4_K_M.gguf"]);
    expect(h.downloads()).toEqual([]);
    const seen = hub.requests.slice(before);
    // 2 directories-free pages of 3 entries: the client followed Link: rel="next".
    expect(seen.filter((q) => q.path.startsWith("/api/models/org/tiny-GGUF/tree/main")).length).toBe(2);
    expect(seen.some((q) => q.server === "hub" && q.path === "/org/tiny-GGUF/resolve/main/tiny-Q4_K_M.gguf")).toBe(true);
    expect(seen.filter((q) => q.server === "cdn" && q.method === "GET").length).toBe(1);
    // Not a terminal: a few plain lines, not a redrawn bar.
    expect(r.stderr).not.toContain("\r");
    expect(r.stderr.split("\n").length).toBeLessThan(12);
    expect(r.stderr).toMatch(/pulled tiny-Q4_K_M\.gguf: .* in .* s/);
  });

  test("an explicit quantisation, any case; --json describes the result", async () => {
    const h = home();
    const r = await pull(h, "hf:org/tiny-GGUF:q8_0", "--json");
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j).toMatchObject({ name: "tiny-q8-0", path: path.join(h.modelsDir, "tiny-Q8_0.gguf"), size_bytes: models.q8!.length, sha256: [sha256(models.q8!)], source: "hf:org/tiny-GGUF/tiny-Q8_0.gguf", already_present: false });
    expect(h.ggufs()).toEqual(["tiny-Q8_0.gguf"]);
  });

  test("ambiguous: a tag (or the default) matching several files lists them and exits 1 without downloading", async () => {
    const h = home();
    const before = hub.seen("cdn").length;
    for (const source of ["hf:org/ambiguous-GGUF", "hf:org/ambiguous-GGUF:Q4_K_M"]) {
      const r = await pull(h, source);
      expect(r.code).toBe(1);
      expect(r.stdout).toBe("");
      expect(r.stderr).toContain("matches 2 files in org/ambiguous-GGUF; pick one:");
      expect(r.stderr).toContain("a-7b-Q4_K_M.gguf");
      expect(r.stderr).toContain("a-13b-Q4_K_M.gguf");
      expect(r.stderr).not.toContain("a-7b-Q8_0.gguf");
    }
    const none = await pull(h, "hf:org/nodefault-GGUF");
    expect(none.code).toBe(1);
    expect(none.stderr).toContain("none of the default quantisations");
    expect(none.stderr).toContain("x-F16.gguf");
    expect(none.stderr).toContain("x-BF16.gguf");
    expect(hub.seen("cdn").length).toBe(before);
    expect(h.ggufs()).toEqual([]);
    // The listed choices work.
    expect((await pull(h, "hf:org/ambiguous-GGUF:Q8_0")).code).toBe(0);
    expect((await pull(h, "hf:org/nodefault-GGUF:bf16")).code).toBe(0);
    expect(h.ggufs().sort()).toEqual(["a-7b-Q8_0.gguf", "x-BF16.gguf"]);
  });

  test("an exact file name picks that file", async () => {
    const h = home();
    const r = await pull(h, "hf:org/ambiguous-GGUF:a-13b-Q4_K_M.gguf");
    expectPulled(r, path.join(h.modelsDir, "a-13b-Q4_K_M.gguf"), models.q8!);
  });

  test("a split set: every part, verified, moved in together; `shimmy list` shows one model; it loads", async () => {
    const h = home();
    const r = await pull(h, "hf:org/split-GGUF:Q4_K_M");
    expectPulled(r, path.join(h.modelsDir, "split-Q4_K_M-00001-of-00002.gguf"), models.split1!);
    expect(sha256(readFileSync(path.join(h.modelsDir, "split-Q4_K_M-00002-of-00002.gguf")))).toBe(sha256(models.split2!));
    expect(r.stderr).toContain("[1/2] split-Q4_K_M-00001-of-00002.gguf");
    expect(r.stderr).toContain("[2/2] split-Q4_K_M-00002-of-00002.gguf");
    const list = await cli(h, ["list", "--json"]);
    expect(list.code).toBe(0);
    const entries = JSON.parse(list.stdout) as Array<{ name: string; shards?: string[]; error?: string; size_bytes: number }>;
    expect(entries.map((e) => e.name)).toEqual(["split-q4-k-m"]);
    expect(entries[0]!.shards).toHaveLength(2);
    expect(entries[0]!.error).toBeUndefined();
    expect(entries[0]!.size_bytes).toBe(models.split1!.length + models.split2!.length);
    const probe = await cli(h, ["probe", "split-q4-k-m"]);
    expect(probe.code).toBe(0);
    expect(probe.stdout).toContain("ok: loaded split-q4-k-m");
  });

  test("a mirror without the tree API: the file list comes from the model-info API (?blobs=true)", async () => {
    const h = home();
    hub.noTreeApi = true;
    try {
      const before = hub.requests.length;
      const r = await pull(h, "hf:org/tiny-GGUF:Q8_0");
      expectPulled(r, path.join(h.modelsDir, "tiny-Q8_0.gguf"), models.q8!);
      expect(r.stderr).toContain("sha256 verified");
      expect(hub.requests.slice(before).some((q) => q.path === "/api/models/org/tiny-GGUF/revision/main?blobs=true")).toBe(true);
    } finally {
      hub.noTreeApi = false;
    }
  });

  test("a file stored in git (no LFS) is checked against its git blob id", async () => {
    const h = home();
    const r = await pull(h, "hf:org/small-GGUF");
    expectPulled(r, path.join(h.modelsDir, "small.gguf"), models.other!);
    expect(r.stderr).toContain("git checksum verified");
  });
});

describe("resume and verification", () => {
  test("a connection dropped mid-file is resumed with Range and ends verified", async () => {
    const h = home();
    hub.faults.set(`/blobs/${sha256(models.q4!)}`, { kind: "drop", afterBytes: 200_000 });
    const before = hub.requests.length;
    const r = await pull(h, "hf:org/tiny-GGUF:Q4_K_M");
    expectPulled(r, path.join(h.modelsDir, "tiny-Q4_K_M.gguf"), models.q4!);
    const gets = hub.requests.slice(before).filter((q) => q.server === "cdn" && q.method === "GET");
    expect(gets.length).toBe(2);
    expect(gets[0]!.range).toBeUndefined();
    const resumedAt = Number(gets[1]!.range?.match(/^bytes=(\d+)-$/)?.[1]);
    expect(resumedAt).toBeGreaterThan(0);
    expect(resumedAt).toBeLessThanOrEqual(200_000);
    expect(gets[1]!.ifRange).toBe(`"${sha256(models.q4!)}"`);
    expect(r.stderr).toMatch(/retrying in .* \(attempt 2 of 6\)/);
    expect(h.downloads()).toEqual([]);
  });

  test("an interrupted pull keeps its partial outside the models folder; running it again resumes", async () => {
    const h = home();
    const blob = `/blobs/${sha256(models.q8!)}`;
    hub.faults.set(blob, { kind: "stall", afterBytes: 300_000 });
    const proc = spawnCli(h, ["pull", "hf:org/tiny-GGUF:Q8_0"]);
    const part = path.join(h.downloadsDir, "tiny-Q8_0.gguf.part");
    for (let i = 0; i < 200 && !(existsSync(part) && statSync(part).size >= 300_000); i++) await Bun.sleep(50);
    proc.kill("SIGINT");
    const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
    expect(code).toBe(130);
    expect(stderr).toContain("run the same pull again to resume");
    expect(h.ggufs()).toEqual([]);
    expect(statSync(part).size).toBe(300_000);
    expect(JSON.parse(readFileSync(`${part}.json`, "utf8"))).toMatchObject({ sha256: sha256(models.q8!), size: models.q8!.length });

    const before = hub.requests.length;
    const r = await pull(h, "hf:org/tiny-GGUF:Q8_0");
    expectPulled(r, path.join(h.modelsDir, "tiny-Q8_0.gguf"), models.q8!);
    expect(r.stderr).toContain("resuming at 293.0 KB");
    const gets = hub.requests.slice(before).filter((q) => q.server === "cdn" && q.method === "GET");
    expect(gets.map((g) => g.range)).toEqual(["bytes=300000-"]);
    expect(h.downloads()).toEqual([]);
  });

  test("a server that answers a Range request with 200 is restarted from zero", async () => {
    const h = home();
    hub.faults.set(`/blobs/${sha256(models.f16!)}`, { kind: "drop", afterBytes: 100_000 });
    hub.ignoreRange = true;
    try {
      const r = await pull(h, "hf:org/tiny-GGUF:F16");
      expectPulled(r, path.join(h.modelsDir, "tiny-F16.gguf"), models.f16!);
      expect(r.stderr).toContain("the server sent the whole file instead of resuming");
    } finally {
      hub.ignoreRange = false;
    }
  });

  test("416 on a complete partial (size unknown without HEAD): verified and moved in without downloading again", async () => {
    const h = home();
    mkdirSync(h.downloadsDir, { recursive: true });
    const url = hub.fileUrl("nohead-model.gguf");
    writeFileSync(path.join(h.downloadsDir, "nohead-model.gguf.part"), models.q8!);
    writeFileSync(path.join(h.downloadsDir, "nohead-model.gguf.part.json"), JSON.stringify({ url }));
    const before = hub.requests.length;
    const r = await pull(h, url, "--sha256", sha256(models.q8!));
    expectPulled(r, path.join(h.modelsDir, "nohead-model.gguf"), models.q8!);
    const gets = hub.requests.slice(before).filter((q) => q.server === "cdn" && q.method === "GET");
    expect(gets.map((g) => g.range)).toEqual([`bytes=${models.q8!.length}-`]);
    expect(r.stderr).toContain("sha256 verified");
  });

  test("a partial locked by a running pull is left alone; a stale lock is taken over", async () => {
    const h = home();
    mkdirSync(h.downloadsDir, { recursive: true });
    const lock = path.join(h.downloadsDir, "tiny-Q4_K_M.gguf.part.lock");
    writeFileSync(lock, String(process.pid));
    const busy = await pull(h, "hf:org/tiny-GGUF");
    expect(busy.code).toBe(2);
    expect(busy.stderr).toContain(`another shimmy pull (pid ${process.pid}) is downloading tiny-Q4_K_M.gguf`);
    expect(readFileSync(lock, "utf8")).toBe(String(process.pid));
    const dead = Bun.spawnSync(["true"]).pid;
    writeFileSync(lock, String(dead));
    expectPulled(await pull(h, "hf:org/tiny-GGUF"), path.join(h.modelsDir, "tiny-Q4_K_M.gguf"), models.q4!);
    expect(h.downloads()).toEqual([]);
  });

  test("a published checksum that does not match: exit 2, the partial deleted, nothing in the models folder", async () => {
    const h = home();
    const r = await pull(h, "hf:org/bad-GGUF");
    expect(r.code).toBe(2);
    expect(r.stdout).toBe("");
    expect(r.stderr).toContain(`sha256 mismatch: the source publishes ${"ab".repeat(32)}, the download has ${sha256(models.other!)}`);
    expect(r.stderr).toContain("the partial download was deleted");
    expect(h.ggufs()).toEqual([]);
    expect(h.downloads()).toEqual([]);
  });

  test("already present and identical: said so, exit 0, nothing downloaded; a different file needs --force", async () => {
    const h = home();
    expect((await pull(h, "hf:org/tiny-GGUF")).code).toBe(0);
    const before = hub.seen("cdn").length;
    const again = await pull(h, "hf:org/tiny-GGUF");
    expect(again.code).toBe(0);
    expect(again.stdout).toBe(`${path.join(h.modelsDir, "tiny-Q4_K_M.gguf")}\n`);
    expect(again.stderr).toContain("already present");
    expect(hub.seen("cdn").length).toBe(before);

    writeFileSync(path.join(h.modelsDir, "tiny-Q4_K_M.gguf"), models.q8!);
    const differs = await pull(h, "hf:org/tiny-GGUF");
    expect(differs.code).toBe(1);
    expect(differs.stderr).toContain("already exists and differs");
    expect(differs.stderr).toContain("--force");
    const forced = await pull(h, "hf:org/tiny-GGUF", "--force");
    expectPulled(forced, path.join(h.modelsDir, "tiny-Q4_K_M.gguf"), models.q4!);
  });
});

describe("URLs", () => {
  test("a plain http URL: size from Content-Length, sha256 from --sha256", async () => {
    const h = home();
    const r = await pull(h, hub.fileUrl("plain-model.gguf"), "--sha256", sha256(models.other!).toUpperCase());
    expectPulled(r, path.join(h.modelsDir, "plain-model.gguf"), models.other!);
    expect(r.stderr).toContain("sha256 verified");
    expect(r.stderr).not.toContain("not encrypted"); // loopback
    const bare = await pull(home(), hub.fileUrl("plain-model.gguf"));
    expect(bare.code).toBe(0);
    expect(bare.stderr).toContain("size verified (no checksum published)");
  });

  test("a wrong --sha256 for a URL: exit 2 and nothing kept", async () => {
    const h = home();
    const r = await pull(h, hub.fileUrl("plain-model.gguf"), "--sha256", "0".repeat(64));
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("sha256 mismatch");
    expect(h.ggufs()).toEqual([]);
    expect(h.downloads()).toEqual([]);
  });

  test("a split URL brings every part", async () => {
    const h = home();
    const r = await pull(h, hub.fileUrl("plainsplit-00001-of-00002.gguf"));
    expectPulled(r, path.join(h.modelsDir, "plainsplit-00001-of-00002.gguf"), models.split1!);
    expect(h.ggufs().sort()).toEqual(["plainsplit-00001-of-00002.gguf", "plainsplit-00002-of-00002.gguf"]);
  });

  test("a connection that keeps failing: exit 2 after the retries", async () => {
    const h = home();
    const closed = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response() });
    const port = closed.port;
    closed.stop(true);
    const r = await pull(h, `http://127.0.0.1:${port}/files/x.gguf`, "--retries", "1");
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("download failed after 2 attempts: connection refused");
    expect(h.downloads()).toEqual([]);
    expect(h.ggufs()).toEqual([]);
  });
});

describe("errors, tokens and endpoints", () => {
  test("404s name what is missing: the repository, the file, the quantisation, the revision", async () => {
    const h = home();
    const repo = await pull(h, "hf:org/nope-GGUF");
    expect(repo.code).toBe(2);
    expect(repo.stderr).toContain(`repository org/nope-GGUF not found on ${hub.endpoint}`);
    expect(repo.stderr).toContain("HF_TOKEN");
    const file = await pull(h, "hf:org/tiny-GGUF:missing.gguf");
    expect(file.code).toBe(2);
    expect(file.stderr).toContain("file 'missing.gguf' not found in org/tiny-GGUF");
    expect(file.stderr).toContain("tiny-Q4_K_M.gguf");
    const quant = await pull(h, "hf:org/tiny-GGUF:Q2_K");
    expect(quant.code).toBe(2);
    expect(quant.stderr).toContain("no GGUF file matching 'Q2_K' in org/tiny-GGUF");
    const rev = await pull(h, "hf:org/tiny-GGUF", "--revision", "v9");
    expect(rev.code).toBe(2);
    expect(rev.stderr).toContain("revision 'v9' not found in org/tiny-GGUF");
    const url = await pull(h, hub.fileUrl("missing.gguf"));
    expect(url.code).toBe(2);
    expect(url.stderr).toContain("not found (HTTP 404)");
    const docs = await pull(h, "hf:org/docs-only");
    expect(docs.code).toBe(2);
    expect(docs.stderr).toContain("org/docs-only has no .gguf file");
    expect(h.ggufs()).toEqual([]);
  });

  test("HF_TOKEN: a private repository needs it; it goes to the hub as a Bearer token and never to the CDN", async () => {
    const h = home();
    const denied = await pull(h, "hf:org/private-GGUF");
    expect(denied.code).toBe(2);
    expect(denied.stderr).toContain("set HF_TOKEN");
    const wrong = await cli(h, ["pull", "hf:org/private-GGUF"], { HF_TOKEN: "hf_wrong" });
    expect(wrong.code).toBe(2);
    expect(wrong.stderr).toContain("HF_TOKEN is set but was refused");
    const gated = await pull(h, "hf:org/gated-GGUF");
    expect(gated.code).toBe(2);
    expect(gated.stderr).toContain("org/gated-GGUF is gated: accept its terms");
    expect(gated.stderr).toContain("set HF_TOKEN");
    const gatedWithToken = await cli(h, ["pull", "hf:org/gated-GGUF"], { HF_TOKEN: TOKEN });
    expect(gatedWithToken.stderr).toContain("check that HF_TOKEN belongs to that account");
    const before = hub.requests.length;
    const r = await cli(h, ["pull", "hf:org/private-GGUF"], { HF_TOKEN: TOKEN });
    expectPulled(r, path.join(h.modelsDir, "secret-Q4_K_M.gguf"), models.other!);
    const seen = hub.requests.slice(before);
    expect(seen.filter((q) => q.server === "hub").every((q) => q.authorization === `Bearer ${TOKEN}`)).toBe(true);
    expect(seen.filter((q) => q.server === "cdn").length).toBeGreaterThan(0);
    expect(seen.filter((q) => q.server === "cdn").every((q) => q.authorization === undefined)).toBe(true);
  });

  test("the token file ($HF_HOME/token) is used when HF_TOKEN is unset", async () => {
    const h = home();
    mkdirSync(path.join(h.root, "hf"), { recursive: true });
    writeFileSync(path.join(h.root, "hf", "token"), `${TOKEN}\n`);
    const r = await cli(h, ["pull", "hf:org/private-GGUF"], { HF_HOME: path.join(h.root, "hf") });
    expect(r.code).toBe(0);
  });

  test("SHIMMY_HF_ENDPOINT wins over HF_ENDPOINT", async () => {
    const h = home();
    const r = await cli(h, ["pull", "hf:org/tiny-GGUF"], { HF_ENDPOINT: "http://127.0.0.1:9/", SHIMMY_HF_ENDPOINT: `${hub.endpoint}/` });
    expectPulled(r, path.join(h.modelsDir, "tiny-Q4_K_M.gguf"), models.q4!);
    const s = hubSettings({ HF_ENDPOINT: "https://mirror.example/", HOME: "/h" });
    expect(s).toEqual({ endpoint: "https://mirror.example", token: undefined, modelsDir: "/h/.local/share/shimmy/models", downloadsDir: "/h/.local/share/shimmy/downloads" });
    expect(hubSettings({ HOME: "/h", HF_TOKEN_PATH: "/nonexistent" }).endpoint).toBe("https://huggingface.co");
    expect(() => hubSettings({ SHIMMY_HF_ENDPOINT: "ftp://x" })).toThrow("SHIMMY_HF_ENDPOINT must be an http(s) URL");
  });

  test("disk problems: a models folder that cannot be created is a clear error (exit 2)", async () => {
    const h = home();
    const file = path.join(h.root, "a-file");
    writeFileSync(file, "x");
    const r = await pull(h, "hf:org/tiny-GGUF", "--dir", path.join(file, "models"));
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`cannot write to ${path.join(file, "models")}`);
    expect(r.stderr).toContain("not a directory");
  });

  test("usage errors exit 1: a source of no known form, a bad --sha256, --sha256 for the hub", async () => {
    const h = home();
    const bad = await pull(h, "llama3");
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain("expected hf:ORG/REPO");
    expect((await pull(h, hub.fileUrl("plain-model.gguf"), "--sha256", "xyz")).code).toBe(1);
    const hf = await pull(h, "hf:org/tiny-GGUF", "--sha256", "0".repeat(64));
    expect(hf.code).toBe(1);
    expect(hf.stderr).toContain("--sha256 is for URL sources");
    const notGguf = await pull(h, `${hub.cdnOrigin}/files/model.bin`);
    expect(notGguf.code).toBe(1);
    expect(notGguf.stderr).toContain(".gguf");
  });
});

describe("a pulled model is served", () => {
  test("listed by `shimmy list --json` and generates text", async () => {
    const h = home();
    expect((await pull(h, "hf:org/tiny-GGUF")).code).toBe(0);
    const list = await cli(h, ["list", "--json"]);
    expect(list.code).toBe(0);
    const entries = JSON.parse(list.stdout) as Array<{ name: string; path: string; error?: string }>;
    expect(entries).toEqual([expect.objectContaining({ name: "tiny-q4-k-m", path: path.join(h.modelsDir, "tiny-Q4_K_M.gguf") })]);
    expect(entries[0]!.error).toBeUndefined();
    const gen = await cli(h, ["generate", "tiny-q4-k-m", "--prompt", "hello", "--max-tokens", "6", "--temperature", "0", "--json"]);
    expect(gen.code).toBe(0);
    const out = JSON.parse(gen.stdout) as { text: string; timings: { predicted_n: number } };
    expect(out.timings.predicted_n).toBe(6);
    expect(out.text.length).toBeGreaterThan(0);
  });
});

describe("choice rules (unit)", () => {
  const files = (...paths: string[]): RepoFile[] => paths.map((p) => ({ path: p, size: 1000 }));

  test("quantisation tokens from file names", () => {
    expect(quantOf("Qwen2.5-7B-Instruct-Q4_K_M.gguf")).toBe("Q4_K_M");
    expect(quantOf("llama-2-7b.q8_0.gguf")).toBe("Q8_0");
    expect(quantOf("x-UD-Q4_K_XL-00001-of-00003.gguf")).toBe("Q4_K_XL");
    expect(quantOf("model-IQ4_XS.gguf")).toBe("IQ4_XS");
    expect(quantOf("model-bf16.gguf")).toBe("BF16");
    expect(quantOf("model.gguf")).toBeUndefined();
  });

  test("the default order, projectors skipped, a lone file always chosen", () => {
    expect(DEFAULT_QUANTS[0]).toBe("Q4_K_M");
    expect(pickChoice("o/r", files("m-Q8_0.gguf", "m-Q4_K_S.gguf", "m-Q5_K_M.gguf")).files[0]!.path).toBe("m-Q4_K_S.gguf");
    expect(pickChoice("o/r", files("m-Q8_0.gguf", "m-Q4_0.gguf", "m-F16.gguf")).files[0]!.path).toBe("m-Q4_0.gguf");
    expect(pickChoice("o/r", files("mmproj-m-F16.gguf", "m-F16.gguf")).files[0]!.path).toBe("m-F16.gguf");
    expect(pickChoice("o/r", files("anything.gguf", "README.md")).files[0]!.path).toBe("anything.gguf");
    expect(pickChoice("o/r", files("mmproj-m-F16.gguf", "m-Q4_K_M.gguf"), "mmproj-m-F16.gguf").files[0]!.path).toBe("mmproj-m-F16.gguf");
    expect(() => pickChoice("o/r", files("README.md"))).toThrow(NoGgufError);
  });

  test("tags: exact quantisation first, then a delimited word of the path; a split part brings its set", () => {
    const repo = files("Q4_K_M/m-Q4_K_M-00002-of-00002.gguf", "Q4_K_M/m-Q4_K_M-00001-of-00002.gguf", "m-UD-Q4_K_XL.gguf", "m-Q4_K_S.gguf");
    const split = pickChoice("o/r", repo);
    expect(split.files.map((f) => f.path)).toEqual(["Q4_K_M/m-Q4_K_M-00001-of-00002.gguf", "Q4_K_M/m-Q4_K_M-00002-of-00002.gguf"]);
    expect(pickChoice("o/r", repo, "ud-q4_k_xl").files[0]!.path).toBe("m-UD-Q4_K_XL.gguf");
    expect(pickChoice("o/r", repo, "m-Q4_K_M-00002-of-00002.gguf").files).toHaveLength(2);
    expect(() => pickChoice("o/r", repo, "Q4_K")).toThrow(SourceNotFoundError);
    expect(() => pickChoice("o/r", files("a-Q4_K_M.gguf", "b-Q4_K_M.gguf"), "Q4_K_M")).toThrow(AmbiguousSourceError);
  });

  test("source forms", () => {
    expect(parseSource("hf:org/repo")).toEqual({ kind: "hf", repo: "org/repo", tag: undefined });
    expect(parseSource("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M")).toEqual({ kind: "hf", repo: "bartowski/Llama-3.2-1B-Instruct-GGUF", tag: "Q4_K_M" });
    expect(parseSource("https://huggingface.co/org/repo")).toEqual({ kind: "hf", repo: "org/repo", tag: undefined });
    expect(parseSource("https://huggingface.co/org/repo/resolve/v1.0/sub/m-Q4_K_M.gguf?download=true")).toEqual({ kind: "hf", repo: "org/repo", tag: "sub/m-Q4_K_M.gguf", revision: "v1.0" });
    expect(parseSource("https://hf.co/org/repo/blob/main/m.gguf")).toEqual({ kind: "hf", repo: "org/repo", tag: "m.gguf", revision: "main" });
    expect(parseSource("https://example.com/m.gguf").kind).toBe("url");
    expect(() => parseSource("hf:repo-without-org")).toThrow("ORG/REPO");
  });
});

describe("progress display (unit)", () => {
  const sink = (isTTY: boolean) => {
    let out = "";
    let t = 0;
    const clock = { now: () => t, advance: (ms: number) => (t += ms) };
    const p = createProgress({ isTTY, write: (s: string) => void (out += s) }, clock.now);
    return { p, clock, out: () => out };
  };

  test("a terminal gets one redrawn line with bytes, percent, rate and ETA", () => {
    const { p, clock, out } = sink(true);
    p.start("m.gguf", 100 * 1024 * 1024, 0);
    for (let i = 1; i <= 50; i++) {
      clock.advance(200);
      p.update(i * 1024 * 1024);
    }
    const frames = out().split("\r\x1b[2K").filter(Boolean);
    expect(frames.length).toBeGreaterThan(40);
    expect(frames.at(-1)).toMatch(/^m\.gguf {2}50\.0 MB \/ 100\.0 MB \[#{12}\.{12}\] {2}50% {2}5\.0 MB\/s {2}ETA 10s$/);
    p.finish("sha256 verified");
    expect(out()).toMatch(/\r\x1b\[2Kpulled m\.gguf: 50\.0 MB in 10\.0 s, 5\.0 MB\/s, sha256 verified\n$/);
  });

  test("a pipe gets a start line, 25/50/75% and a summary, however many updates", () => {
    const { p, clock, out } = sink(false);
    p.start("m.gguf", 1000, 0);
    for (let i = 1; i <= 1000; i++) {
      clock.advance(1);
      p.update(i);
    }
    p.finish("size verified");
    const lines = out().trimEnd().split("\n");
    expect(lines).toHaveLength(5);
    expect(lines[0]).toBe("pulling m.gguf (1000 B)");
    expect(lines[1]).toContain("m.gguf: 25% (250 B of 1000 B");
    expect(lines[4]).toStartWith("pulled m.gguf: 1000 B in 1.0 s");
    expect(out()).not.toContain("\r");
  });
});

