/**
 * Zero-config discovery end to end: a temporary HOME holding realistic Hugging Face, Ollama and LM
 * Studio stores, $XDG_DATA_HOME/shimmy/models and a ./models in a temporary cwd, all filled with
 * GENERATED models (the project's GGUF writer, a different seed per file), broken files, adapters,
 * split sets, symlink loops, a dangling link and an unreadable folder. Asserted through the real CLI
 * (`list`, `discover`, `probe`, `generate`), a real server (a file dropped in after start is served at
 * once), and `scanRoot` directly (the walk over 10,000 files; its time is printed, not asserted).
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { createHash } from "node:crypto";
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, renameSync, rmSync, symlinkSync, unlinkSync, utimesSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { discoveryRoots, scanRoot } from "../src/engine/discovery.ts";
import { Engine } from "../src/engine/engine.ts";
import { ModelRegistry } from "../src/engine/registry.ts";
import { tinyModelSpec, writeTinyLora, writeTinyModel } from "../src/gguf/presets.ts";
import { kv, writeGguf, type GgufFile, type GgufValue } from "../src/gguf/writer.ts";
import { createApp } from "../src/server/app.ts";
import { listen, type Listening } from "../src/server/listen.ts";
import { runCli } from "./helpers.ts";

// Spawns the CLI and loads models on 2 shared cores: allow 60 s per test (bun's default is 5 s).
setDefaultTimeout(60_000);

/**
 * Keeps the host's settings out: runCli merges process.env, so every variable discovery or config
 * reads is blanked here unless a test sets it (HOME is always the temporary one).
 */
const CLEAN_ENV: Record<string, string> = {
  SHIMMY_MODEL_PATHS: "",
  SHIMMY_BASE_GGUF: "",
  SHIMMY_LORA_GGUF: "",
  SHIMMY_CTX_SIZE: "",
  SHIMMY_CHAT_TEMPLATE: "",
  SHIMMY_CACHE_DIR: "",
  SHIMMY_LOG: "",
  NO_COLOR: "",
  XDG_CACHE_HOME: "",
  XDG_DATA_HOME: "",
  HF_HOME: "",
  HF_HUB_CACHE: "",
  OLLAMA_MODELS: "",
};

const IS_ROOT = process.getuid?.() === 0;

/** The tiny model's parameter count (every tensor's elements). */
const TINY_PARAMS = (() => {
  let n = 0;
  for (const t of tinyModelSpec().tensors) n += t.dims.reduce((a, b) => a * b, 1);
  return n;
})();

interface ListJson {
  name: string;
  path: string;
  source: string;
  size_bytes: number;
  architecture?: string;
  parameters?: number;
  quantization?: string;
  context_length?: number | null;
  chat_template?: boolean;
  loras?: Array<{ path: string; scale: number }>;
  shards?: string[];
  error?: string;
}
interface DiscoverJson {
  roots: Array<{ path: string; kind: string; exists: boolean; files: number; error?: string }>;
  models: ListJson[];
  adapters: Array<{ name: string; path: string; source: string; architecture?: string; size_bytes?: number; paired_with: string[] }>;
  problems: Array<{ name: string; path: string; source: string; problem: string }>;
}
interface GenJson {
  model: string;
  text: string;
  finish_reason: string;
  timings: { prompt_n: number; predicted_n: number };
}

let scratch: string;
let seq = 0;
const sha256 = (file: string) => createHash("sha256").update(readFileSync(file)).digest("hex");
const revision = (label: string) => createHash("sha1").update(label).digest("hex");

/** Writes a file with `write` into scratch, then moves it to `<dir>/<prefix><sha256>`; returns the hex digest. */
async function blob(dir: string, prefix: string, write: (file: string) => Promise<void> | void): Promise<string> {
  const tmp = path.join(scratch, `blob-${seq++}`);
  await write(tmp);
  const hex = sha256(tmp);
  mkdirSync(dir, { recursive: true });
  renameSync(tmp, path.join(dir, `${prefix}${hex}`));
  return hex;
}

const tiny = (seed: number) => (file: string) => writeTinyModel(file, { seed, name: `tiny-${seed}` });
const lora = (seed: number) => (file: string) => writeTinyLora(file, { seed });

/** The tiny model's spec with its metadata rewritten by `edit`. */
function editedSpec(seed: number, edit: (kvs: Array<[string, GgufValue]>) => Array<[string, GgufValue]>): GgufFile {
  const spec = tinyModelSpec({ seed, name: `tiny-${seed}` });
  return { kv: edit([...(spec.kv as ReadonlyArray<readonly [string, GgufValue]>)].map(([k, v]) => [k, v] as [string, GgufValue])), tensors: spec.tensors };
}

/**
 * A real llama.cpp split model: `<dir>/<base>-0000N-of-00002.gguf`, each part carrying `split.no`
 * (u16, 0-based), `split.count` (u16) and `split.tensors.count` (i32); the first part has all the
 * metadata, the tensors are divided between the parts.
 */
async function writeSplitModel(dir: string, base: string, seed: number): Promise<string[]> {
  const spec = tinyModelSpec({ seed, name: `split-${seed}` });
  const half = Math.ceil(spec.tensors.length / 2);
  const parts = [spec.tensors.slice(0, half), spec.tensors.slice(half)];
  const files: string[] = [];
  for (let i = 0; i < 2; i++) {
    const split: Array<[string, GgufValue]> = [
      ["split.no", kv.u16(i)],
      ["split.count", kv.u16(2)],
      ["split.tensors.count", kv.i32(spec.tensors.length)],
    ];
    const file = path.join(dir, `${base}-0000${i + 1}-of-00002.gguf`);
    await writeGguf(file, { kv: i === 0 ? [...(spec.kv as ReadonlyArray<readonly [string, GgufValue]>), ...split] : split, tensors: parts[i]! });
    files.push(file);
  }
  return files;
}

function ollamaManifest(root: string, rel: string, layers: Array<{ mediaType: string; hex: string }>): void {
  const file = path.join(root, "manifests", rel);
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(
    file,
    JSON.stringify({
      schemaVersion: 2,
      mediaType: "application/vnd.docker.distribution.manifest.v2+json",
      config: { mediaType: "application/vnd.docker.container.image.v1+json", digest: `sha256:${"0".repeat(64)}`, size: 2 },
      layers: layers.map((l) => ({ mediaType: l.mediaType, digest: `sha256:${l.hex}`, size: 1 })),
    }),
  );
}
const MODEL_LAYER = "application/vnd.ollama.image.model";
const ADAPTER_LAYER = "application/vnd.ollama.image.adapter";
const TEMPLATE_LAYER = "application/vnd.ollama.image.template";

/** A Hugging Face hub repo: blobs/<sha256>, refs/main, snapshots/<rev>/<file> -> ../../blobs/<sha256>. */
async function hfRepo(hub: string, repo: string, revs: Array<{ rev: string; files: Record<string, (file: string) => Promise<void> | void>; mtime?: number }>, main?: string) {
  const dir = path.join(hub, repo);
  for (const r of revs) {
    const snap = path.join(dir, "snapshots", r.rev);
    mkdirSync(snap, { recursive: true });
    for (const [name, write] of Object.entries(r.files)) {
      const hex = await blob(path.join(dir, "blobs"), "", write);
      symlinkSync(path.join("..", "..", "blobs", hex), path.join(snap, name));
    }
    if (r.mtime !== undefined) utimesSync(snap, r.mtime, r.mtime);
  }
  if (main) {
    mkdirSync(path.join(dir, "refs"), { recursive: true });
    writeFileSync(path.join(dir, "refs", "main"), main);
  }
}

// ---------------------------------------------------------------------------------------------------
// The main tree

let home: string;
let cwd: string;
/** Paths tests assert on. */
const P: Record<string, string> = {};

async function buildMainTree(): Promise<void> {
  home = path.join(scratch, "home");
  cwd = path.join(scratch, "cwd");
  const models = path.join(cwd, "models");
  mkdirSync(models, { recursive: true });

  // ./models: good models, a real split set, an incomplete set, a split set with a cut part, broken files.
  await tiny(10)((P.local = path.join(models, "local.gguf")));
  await tiny(11)((P.sharedDir = path.join(models, "shared.gguf")));
  P.bigShards = JSON.stringify(await writeSplitModel(models, "big", 7));
  await tiny(13)(path.join(models, "half-00001-of-00003.gguf"));
  const cut = await writeSplitModel(models, "cut", 14);
  writeFileSync(cut[1]!, readFileSync(cut[1]!).subarray(0, 100_000));
  writeFileSync(path.join(models, "garbage.gguf"), "this is not a GGUF file, just text that happens to end in .gguf\n".repeat(64));
  writeFileSync(path.join(models, "empty.gguf"), "");
  const whole = path.join(scratch, "whole.gguf");
  await tiny(21)(whole);
  const bytes = readFileSync(whole);
  writeFileSync(path.join(models, "truncated.gguf"), bytes.subarray(0, Math.floor(bytes.length * 0.7)));
  await writeGguf(path.join(models, "noheads.gguf"), editedSpec(22, (kvs) => kvs.filter(([k]) => k !== "llama.attention.head_count")));
  await writeGguf(
    path.join(models, "nobytes.gguf"),
    editedSpec(23, (kvs) =>
      kvs.map(([k, v]) => [k, k === "tokenizer.ggml.tokens" && v.type === "array" ? kv.strArray(Array.from(v.value as ArrayLike<string>, (t) => t.replace(/^<0x([0-9A-F]{2})>$/, "byte-$1"))) : v] as [string, GgufValue]),
    ),
  );
  // A symlink loop (a folder linking to its parent, and to itself), a dangling link, a hidden folder,
  // an unreadable folder, an orphan adapter, files that are not .gguf.
  mkdirSync(path.join(models, "nested", "deeper"), { recursive: true });
  await tiny(15)(path.join(models, "nested", "deeper", "deep.gguf"));
  symlinkSync("..", path.join(models, "nested", "deeper", "loop"));
  symlinkSync(".", path.join(models, "nested", "self"));
  symlinkSync(path.join(models, "nowhere.gguf"), path.join(models, "dangling.gguf"));
  symlinkSync(path.join(scratch, "no-such-dir"), path.join(models, "dangling-dir"));
  await tiny(17)(path.join(models, ".hidden", "hidden.gguf"));
  await tiny(16)(path.join(models, "locked", "secret.gguf"));
  chmodSync(path.join(models, "locked"), 0o000);
  await lora(2)((P.orphanLora = path.join(models, "adapters", "orphan-lora.gguf")));
  writeFileSync(path.join(models, "README.md"), "# models\n");
  writeFileSync(path.join(models, "weights.bin"), "x");

  // Ollama: a library model (with a template layer), a user-namespace model, a model with an adapter
  // layer, a model pulled from another registry, a manifest whose blob is missing, an unparsable manifest.
  const ollama = path.join(home, ".ollama", "models");
  const blobs = path.join(ollama, "blobs");
  const tinyllama = await blob(blobs, "sha256-", tiny(4));
  P.tinyllamaBlob = path.join(blobs, `sha256-${tinyllama}`);
  const template = await blob(blobs, "sha256-", (f) => writeFileSync(f, "{{ .Prompt }}"));
  ollamaManifest(ollama, "registry.ollama.ai/library/tinyllama/latest", [
    { mediaType: MODEL_LAYER, hex: tinyllama },
    { mediaType: TEMPLATE_LAYER, hex: template },
  ]);
  ollamaManifest(ollama, "registry.ollama.ai/someone/coder/7b", [{ mediaType: MODEL_LAYER, hex: await blob(blobs, "sha256-", tiny(5)) }]);
  const styled = await blob(blobs, "sha256-", tiny(6));
  const adapter = await blob(blobs, "sha256-", lora(3));
  P.ollamaAdapter = path.join(blobs, `sha256-${adapter}`);
  ollamaManifest(ollama, "registry.ollama.ai/library/styled/latest", [
    { mediaType: MODEL_LAYER, hex: styled },
    { mediaType: ADAPTER_LAYER, hex: adapter },
  ]);
  ollamaManifest(ollama, "hf.co/someorg/somerepo-gguf/q8_0", [{ mediaType: MODEL_LAYER, hex: await blob(blobs, "sha256-", tiny(18)) }]);
  ollamaManifest(ollama, "registry.ollama.ai/library/ghost/latest", [{ mediaType: MODEL_LAYER, hex: "f".repeat(64) }]);
  mkdirSync(path.join(ollama, "manifests", "registry.ollama.ai", "library", "corrupt"), { recursive: true });
  writeFileSync(path.join(ollama, "manifests", "registry.ollama.ai", "library", "corrupt", "latest"), "{not json");

  // Hugging Face: refs/main names the new revision; an older snapshot (touched later, so the newest by
  // mtime) must not be used. A repo without refs/main falls back to its newest snapshot.
  const hub = path.join(home, ".cache", "huggingface", "hub");
  P.revNew = revision("new");
  P.revOld = revision("old");
  const now = Date.now() / 1000;
  await hfRepo(
    hub,
    "models--org--repo",
    [
      { rev: P.revNew, files: { "model-q8.gguf": tiny(2), "README.md": (f) => writeFileSync(f, "# card\n") }, mtime: now - 3600 },
      { rev: P.revOld, files: { "model-q8.gguf": tiny(3), "old-only.gguf": tiny(24) }, mtime: now },
    ],
    P.revNew,
  );
  await hfRepo(hub, "models--org--norefs", [
    { rev: revision("stale"), files: { "stale.gguf": tiny(25) }, mtime: now - 7200 },
    { rev: revision("fresh"), files: { "fresh.gguf": tiny(26) }, mtime: now - 60 },
  ]);
  await hfRepo(hub, "datasets--org--data", [{ rev: revision("data"), files: { "dataset.gguf": tiny(27) } }], revision("data"));
  mkdirSync(path.join(hub, ".locks", "models--org--repo"), { recursive: true });

  // LM Studio: a model with its adapter beside it, a name that collides with ./models, the legacy folder.
  const lms = path.join(home, ".lmstudio", "models");
  await tiny(8)(path.join(lms, "publisher", "repo", "file.gguf"));
  await lora(4)((P.lmsLora = path.join(lms, "publisher", "repo", "file-lora.gguf")));
  await tiny(19)((P.sharedLms = path.join(lms, "other-pub", "repo", "shared.gguf")));
  await tiny(9)(path.join(home, ".cache", "lm-studio", "models", "pub2", "repo2", "legacy.gguf"));

  // $XDG_DATA_HOME/shimmy/models (default ~/.local/share).
  await tiny(20)(path.join(home, ".local", "share", "shimmy", "models", "xdg-model.gguf"));
}

function cli(args: string[], opts: { env?: Record<string, string>; cwd?: string } = {}) {
  return runCli(args, { cwd: opts.cwd ?? cwd, env: { ...CLEAN_ENV, HOME: home, ...opts.env } });
}

async function listJson(opts: { env?: Record<string, string>; cwd?: string } = {}): Promise<ListJson[]> {
  const r = await cli(["list", "--json"], opts);
  expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: expect.any(String) });
  return JSON.parse(r.stdout) as ListJson[];
}

beforeAll(async () => {
  scratch = realpathSync(mkdtempSync(path.join(os.tmpdir(), "shimmy-discovery-")));
  await buildMainTree();
});

afterAll(() => {
  if (!scratch) return;
  try {
    chmodSync(path.join(scratch, "cwd", "models", "locked"), 0o755);
  } catch {}
  rmSync(scratch, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------------

describe("discovery roots (no CLI)", () => {
  test("order and env overrides: HF_HUB_CACHE > HF_HOME/hub > XDG_CACHE_HOME/huggingface/hub > ~/.cache; OLLAMA_MODELS; XDG_DATA_HOME", () => {
    const h = "/h";
    const roots = (env: Record<string, string | undefined>) => discoveryRoots({ cwd: "/w", modelDirs: ["extra"], env: { HOME: h, ...env } }).map((r) => `${r.kind}:${r.path}`);
    expect(roots({})).toEqual([
      "dir:/w/models",
      "dir:/w/extra",
      "ollama:/h/.ollama/models",
      "huggingface:/h/.cache/huggingface/hub",
      "lmstudio:/h/.lmstudio/models",
      "lmstudio:/h/.cache/lm-studio/models",
      "dir:/h/.local/share/shimmy/models",
    ]);
    const over = roots({ OLLAMA_MODELS: "/o", HF_HUB_CACHE: "/hub", HF_HOME: "/hfh", XDG_CACHE_HOME: "/xc", XDG_DATA_HOME: "/xd" });
    expect(over).toContain("ollama:/o");
    expect(over).toContain("huggingface:/hub");
    expect(over).toContain("dir:/xd/shimmy/models");
    expect(roots({ HF_HOME: "/hfh", XDG_CACHE_HOME: "/xc" })).toContain("huggingface:/hfh/hub");
    expect(roots({ XDG_CACHE_HOME: "/xc" })).toContain("huggingface:/xc/huggingface/hub");
    // Empty values count as unset.
    expect(roots({ HF_HUB_CACHE: "", HF_HOME: "", OLLAMA_MODELS: "" })).toEqual(roots({}));
  });

  test("a root reachable twice (same real path) is kept once, first position", () => {
    const roots = discoveryRoots({ cwd, modelDirs: ["models", path.join(cwd, "models", "nested", "self")], env: { HOME: home } });
    expect(roots.filter((r) => r.kind === "dir" && realpathSync(r.path) === realpathSync(path.join(cwd, "models")))).toEqual([{ kind: "dir", path: path.join(cwd, "models") }]);
  });
});

describe("list --json over a realistic HOME", () => {
  let list: ListJson[];
  const byName = (name: string) => {
    const m = list.find((e) => e.name === name);
    if (!m) throw new Error(`${name} not listed; names: ${list.map((e) => e.name).join(", ")}`);
    return m;
  };
  beforeAll(async () => {
    list = await listJson();
  });

  test("every good model is listed with its name, source and header metadata", () => {
    const expected: Array<[string, string]> = [
      ["local", "dir"],
      ["shared", "dir"],
      ["deep", "dir"],
      ["tinyllama:latest", "ollama"],
      ["someone/coder:7b", "ollama"],
      ["styled:latest", "ollama"],
      ["hf.co/someorg/somerepo-gguf:q8_0", "ollama"],
      ["model-q8", "huggingface"],
      ["fresh", "huggingface"],
      ["file", "lmstudio"],
      ["shared@lmstudio", "lmstudio"],
      ["legacy", "lmstudio"],
      ["xdg-model", "dir"],
      ["big", "dir"],
    ];
    for (const [name, source] of expected) {
      const m = byName(name);
      expect({ name, source: m.source, error: m.error }).toEqual({ name, source, error: undefined });
      expect(m).toMatchObject({ architecture: "llama", parameters: TINY_PARAMS, quantization: "F32", context_length: 512, chat_template: true });
      expect(m.parameters).toBeGreaterThan(0);
      expect(m.size_bytes).toBeGreaterThan(500_000);
    }
    // Sizes are the files' sizes (a split set: all its parts).
    expect(byName("local").size_bytes).toBe(readFileSync(P.local!).length);
    const shards = JSON.parse(P.bigShards!) as string[];
    expect(byName("big").size_bytes).toBe(shards.reduce((n, s) => n + readFileSync(s).length, 0));
  });

  test("Hugging Face: the refs/main snapshot's symlink, never the older snapshot; newest snapshot without refs/main; datasets ignored", () => {
    const m = byName("model-q8");
    expect(m.path).toBe(path.join(home, ".cache", "huggingface", "hub", "models--org--repo", "snapshots", P.revNew!, "model-q8.gguf"));
    expect(list.some((e) => e.path.includes(P.revOld!))).toBe(false);
    expect(list.some((e) => e.name.startsWith("old-only") || e.name.startsWith("stale") || e.name.startsWith("dataset"))).toBe(false);
    // Repos in name order (models--org--norefs, models--org--repo).
    expect(list.filter((e) => e.source === "huggingface").map((e) => e.name)).toEqual(["fresh", "model-q8"]);
  });

  test("Ollama: names as `ollama list` shows them, the blob as path, the adapter layer as LoRA; missing blob and bad manifest skipped", () => {
    expect(byName("tinyllama:latest").path).toBe(P.tinyllamaBlob!);
    expect(byName("styled:latest").loras).toEqual([{ path: P.ollamaAdapter!, scale: 1 }]);
    expect(byName("tinyllama:latest").loras).toBeUndefined();
    // Manifests in path order: hf.co/..., registry.ollama.ai/library/..., registry.ollama.ai/someone/...
    expect(list.filter((e) => e.source === "ollama").map((e) => e.name)).toEqual(["hf.co/someorg/somerepo-gguf:q8_0", "styled:latest", "tinyllama:latest", "someone/coder:7b"]);
    expect(list.some((e) => e.name.startsWith("ghost") || e.name.startsWith("corrupt"))).toBe(false);
  });

  test("LM Studio: an adapter beside a model is attached to it; a name already taken gets @lmstudio", () => {
    expect(byName("file").loras).toEqual([{ path: P.lmsLora!, scale: 1 }]);
    expect(byName("shared").path).toBe(P.sharedDir!);
    expect(byName("shared@lmstudio").path).toBe(P.sharedLms!);
  });

  test("adapters are never listed as models; hidden folders, dangling links and non-.gguf files are skipped", () => {
    expect(list.some((e) => /lora/.test(e.name) || e.path === P.ollamaAdapter)).toBe(false);
    expect(list.some((e) => e.name === "hidden" || e.name.startsWith("dangling") || e.name === "readme" || e.name === "weights")).toBe(false);
    // No name is listed twice.
    expect(new Set(list.map((e) => e.name)).size).toBe(list.length);
    expect(new Set(list.map((e) => realpathSync(e.path))).size).toBe(list.length);
  });

  test("the symlink loop ends and its file is listed once", () => {
    expect(list.filter((e) => e.name === "deep" || e.name.startsWith("deep@"))).toHaveLength(1);
    expect(byName("deep").path).toBe(path.join(cwd, "models", "nested", "deeper", "deep.gguf"));
  });

  test(`the unreadable folder is skipped without failing the scan (${IS_ROOT ? "root reads it anyway" : "not root: its file is not listed"})`, () => {
    // Root ignores the permission bits: there the file is simply readable.
    expect(list.some((e) => e.name === "secret")).toBe(IS_ROOT);
  });

  test("split sets: a complete set is one entry with its parts; an incomplete one carries its problem", () => {
    expect(byName("big").shards).toEqual(JSON.parse(P.bigShards!));
    expect(byName("big").path).toBe(path.join(cwd, "models", "big-00001-of-00002.gguf"));
    expect(list.some((e) => e.name.startsWith("big-0000"))).toBe(false);
    const half = byName("half");
    expect(half.error).toContain("incomplete split model");
    expect(half.error).toContain("parts 2, 3 of 3 missing");
    expect(half.architecture).toBeUndefined();
    expect(byName("cut").error).toMatch(/is truncated: tensor .* ends at byte \d+ but the file has 100000 bytes/);
  });

  test("broken files are listed with a clear error", () => {
    expect(byName("garbage").error).toContain("is not a readable GGUF file");
    expect(byName("empty").error).toContain("is not a readable GGUF file");
    expect(byName("truncated").error).toMatch(/truncated\.gguf is truncated: tensor \S+ ends at byte \d+/);
    expect(byName("noheads").error).toContain("lacks llama.attention.head_count");
    expect(byName("nobytes").error).toContain("SentencePiece vocabulary lacks byte token <0x00>");
    for (const name of ["garbage", "empty", "truncated", "noheads", "nobytes"]) expect(byName(name).source).toBe("dir");
  });
});

describe("list --short, list table, discover", () => {
  test("list --short names only the loadable models", async () => {
    const r = await cli(["list", "--short"]);
    expect(r.code).toBe(0);
    const names = r.stdout.trimEnd().split("\n");
    for (const n of ["local", "big", "tinyllama:latest", "someone/coder:7b", "model-q8", "file", "shared@lmstudio", "legacy", "xdg-model", "fresh"]) expect(names).toContain(n);
    for (const n of ["half", "cut", "garbage", "empty", "truncated", "noheads", "nobytes", "file-lora", "orphan-lora"]) expect(names).not.toContain(n);
  });

  test("discover --json: every root with what it gave, adapters with their pairing, problems", async () => {
    const r = await cli(["discover", "--json"]);
    expect(r.code).toBe(0);
    const d = JSON.parse(r.stdout) as DiscoverJson;
    const models = path.join(cwd, "models");
    expect(d.roots).toEqual([
      // local, shared, big x2, half, cut x2, garbage, empty, truncated, noheads, nobytes, deep, orphan-lora (+ secret as root)
      { path: models, kind: "dir", exists: true, files: IS_ROOT ? 15 : 14 },
      { path: path.join(home, ".ollama", "models"), kind: "ollama", exists: true, files: 4 },
      { path: path.join(home, ".cache", "huggingface", "hub"), kind: "huggingface", exists: true, files: 2 },
      { path: path.join(home, ".lmstudio", "models"), kind: "lmstudio", exists: true, files: 3 },
      { path: path.join(home, ".cache", "lm-studio", "models"), kind: "lmstudio", exists: true, files: 1 },
      { path: path.join(home, ".local", "share", "shimmy", "models"), kind: "dir", exists: true, files: 1 },
    ]);
    const adapters = Object.fromEntries(d.adapters.map((a) => [a.name, a]));
    expect(Object.keys(adapters).sort()).toEqual(["file-lora", "orphan-lora"]);
    expect(adapters["file-lora"]).toMatchObject({ path: P.lmsLora, source: "lmstudio", architecture: "llama", paired_with: ["file"] });
    expect(adapters["orphan-lora"]).toMatchObject({ path: P.orphanLora, source: "dir", architecture: "llama", paired_with: [] });
    expect(adapters["file-lora"]!.size_bytes).toBe(readFileSync(P.lmsLora!).length);
    const problems = Object.fromEntries(d.problems.map((p) => [p.name, p.problem]));
    expect(Object.keys(problems).sort()).toEqual(["cut", "empty", "garbage", "half", "nobytes", "noheads", "truncated"]);
    expect(problems.half).toContain("incomplete split model");
    expect(problems.noheads).toContain("lacks llama.attention.head_count");
    expect(problems.nobytes).toContain("lacks byte token");
    expect(problems.garbage).toContain("not a readable GGUF file");
    expect(problems.truncated).toContain("is truncated");
    // models: the loadable ones only, in the list --json shape.
    expect(d.models.some((m) => m.error)).toBe(false);
    expect(d.models.find((m) => m.name === "model-q8")).toMatchObject({ source: "huggingface", architecture: "llama", quantization: "F32", context_length: 512, chat_template: true });
  });

  test("discover --llm-only leaves adapters out (and keeps the models and problems)", async () => {
    const r = await cli(["discover", "--json", "--llm-only"]);
    expect(r.code).toBe(0);
    const d = JSON.parse(r.stdout) as DiscoverJson;
    expect(d.adapters).toEqual([]);
    expect(d.models.map((m) => m.name)).toContain("tinyllama:latest");
    expect(d.problems.length).toBe(7);
    const text = await cli(["discover", "--llm-only"]);
    expect(text.code).toBe(0);
    expect(text.stdout).not.toContain("ADAPTERS (");
    expect(text.stdout).not.toContain("orphan-lora");
    expect(text.stdout).toContain("PROBLEMS (7)");
  });

  test("the list table shows problems as 'cannot load' and LoRA pairings", async () => {
    const r = await cli(["list"]);
    expect(r.code).toBe(0);
    const line = (name: string) => r.stdout.split("\n").find((l) => l.startsWith(`${name} `)) ?? "";
    expect(line("noheads")).toContain("cannot load: ");
    expect(line("file")).toContain(`+ LoRA ${P.lmsLora}`);
    expect(line("tinyllama:latest")).toMatch(/ollama\s+[\d.]+ KB\s+148K\s+F32\s+512\s+yes\s/);
  });
});

describe("probe and generate", () => {
  test("probe of each broken model exits exactly 2 with its problem (no crash, no abort)", async () => {
    const cases: Array<[string, string]> = [
      ["garbage", "is not a readable GGUF file"],
      ["truncated", "is truncated"],
      ["noheads", "lacks llama.attention.head_count"],
      ["nobytes", "SentencePiece vocabulary lacks byte token <0x00>"],
      ["half", "incomplete split model"],
    ];
    for (const [name, message] of cases) {
      const r = await cli(["probe", name]);
      expect({ name, code: r.code }).toEqual({ name, code: 2 });
      expect(r.stderr).toContain(message);
      expect(r.stderr).not.toMatch(/GGML_ASSERT|Aborted|core dumped|Segmentation/);
      expect(r.stdout).toBe("");
    }
  });

  test("generate with an Ollama name, end to end", async () => {
    const r = await cli(["generate", "tinyllama:latest", "--prompt", "hi", "--max-tokens", "4", "--json"]);
    expect(r.code).toBe(0);
    const g = JSON.parse(r.stdout) as GenJson;
    expect(g.model).toBe("tinyllama:latest");
    expect(g.timings.predicted_n).toBe(4);
    expect(g.finish_reason).toBe("length");
  });

  test("generate with the Hugging Face model (through the snapshot symlink), end to end", async () => {
    const r = await cli(["generate", "model-q8", "--prompt", "hi", "--max-tokens", "4", "--json"]);
    expect(r.code).toBe(0);
    const g = JSON.parse(r.stdout) as GenJson;
    expect(g.model).toBe("model-q8");
    expect(g.timings.predicted_n).toBe(4);
  });

  test("a real 2-part split model loads and generates what the same model in one file does", async () => {
    const one = path.join(scratch, "one-file");
    await writeTinyModel(path.join(one, "whole7.gguf"), { seed: 7, name: "split-7" });
    const args = ["--prompt", "hello there", "--max-tokens", "8", "--temperature", "0", "--json"];
    const split = await cli(["generate", "big", ...args]);
    expect(split.code).toBe(0);
    const ref = await cli(["generate", "whole7", "--model-dirs", one, ...args]);
    expect(ref.code).toBe(0);
    const [a, b] = [JSON.parse(split.stdout) as GenJson, JSON.parse(ref.stdout) as GenJson];
    expect(a.timings.predicted_n).toBe(8);
    expect(a.text).toBe(b.text);
  });

  test("the Ollama model with an adapter layer loads with it", async () => {
    const r = await cli(["probe", "styled:latest"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("ok: loaded styled:latest");
  });
});

describe("env overrides and shared files", () => {
  let alt: string;
  beforeAll(async () => {
    alt = path.join(scratch, "alt");
    await hfRepo(path.join(alt, "hub-cache"), "models--a--hubcache", [{ rev: revision("hc"), files: { "hubcache.gguf": tiny(30) } }], revision("hc"));
    await hfRepo(path.join(alt, "hf-home", "hub"), "models--a--hfhome", [{ rev: revision("hh"), files: { "hfhome.gguf": tiny(31) } }], revision("hh"));
    await hfRepo(path.join(alt, "xdg-cache", "huggingface", "hub"), "models--a--xdgcache", [{ rev: revision("xc"), files: { "xdgcache.gguf": tiny(32) } }], revision("xc"));
    const ollama = path.join(alt, "ollama");
    ollamaManifest(ollama, "registry.ollama.ai/library/other/1b", [{ mediaType: MODEL_LAYER, hex: await blob(path.join(ollama, "blobs"), "sha256-", tiny(33)) }]);
    await tiny(34)(path.join(alt, "xdg-data", "shimmy", "models", "xdgdata.gguf"));
  });

  test("HF_HUB_CACHE (over HF_HOME), OLLAMA_MODELS and XDG_DATA_HOME replace the default roots", async () => {
    const list = await listJson({
      env: { HF_HUB_CACHE: path.join(alt, "hub-cache"), HF_HOME: path.join(alt, "hf-home"), OLLAMA_MODELS: path.join(alt, "ollama"), XDG_DATA_HOME: path.join(alt, "xdg-data") },
    });
    const names = list.map((e) => `${e.name} ${e.source}`);
    expect(names).toContain("hubcache huggingface");
    expect(names).toContain("other:1b ollama");
    expect(names).toContain("xdgdata dir");
    for (const gone of ["hfhome", "model-q8", "tinyllama:latest", "xdg-model"]) expect(list.some((e) => e.name === gone)).toBe(false);
    // Roots not overridden stay.
    expect(names).toContain("local dir");
    expect(names).toContain("file lmstudio");
  });

  test("HF_HOME -> $HF_HOME/hub; XDG_CACHE_HOME -> $XDG_CACHE_HOME/huggingface/hub; an absent root", async () => {
    const hfHome = await listJson({ env: { HF_HOME: path.join(alt, "hf-home"), XDG_CACHE_HOME: path.join(alt, "xdg-cache") } });
    expect(hfHome.find((e) => e.name === "hfhome")?.source).toBe("huggingface");
    expect(hfHome.some((e) => e.name === "xdgcache" || e.name === "model-q8")).toBe(false);
    // discover reports the overridden roots, and a root that does not exist as such.
    const absent = path.join(alt, "no-ollama-here");
    const r = await cli(["discover", "--json"], { env: { XDG_CACHE_HOME: path.join(alt, "xdg-cache"), OLLAMA_MODELS: absent } });
    expect(r.code).toBe(0);
    const d = JSON.parse(r.stdout) as DiscoverJson;
    expect(d.roots).toContainEqual({ path: path.join(alt, "xdg-cache", "huggingface", "hub"), kind: "huggingface", exists: true, files: 1 });
    expect(d.roots).toContainEqual({ path: absent, kind: "ollama", exists: false, files: 0 });
    expect(d.models.find((e) => e.name === "xdgcache")?.source).toBe("huggingface");
    expect(d.models.some((e) => e.name === "model-q8" || e.source === "ollama")).toBe(false);
  });

  test("one real file reachable from two roots is listed once, from the first root", async () => {
    const cwd2 = path.join(scratch, "cwd2");
    mkdirSync(path.join(cwd2, "models"), { recursive: true });
    const target = realpathSync(path.join(home, ".cache", "huggingface", "hub", "models--org--repo", "snapshots", P.revNew!, "model-q8.gguf"));
    symlinkSync(target, path.join(cwd2, "models", "x.gguf"));
    // And an Ollama blob under another name.
    symlinkSync(P.tinyllamaBlob!, path.join(cwd2, "models", "alias.gguf"));
    const list = await listJson({ cwd: cwd2 });
    const sameHf = list.filter((e) => realpathSync(e.path) === target);
    expect(sameHf.map((e) => [e.name, e.source])).toEqual([["x", "dir"]]);
    const sameOllama = list.filter((e) => realpathSync(e.path) === P.tinyllamaBlob);
    expect(sameOllama.map((e) => [e.name, e.source])).toEqual([["alias", "dir"]]);
    expect(list.some((e) => e.name === "model-q8" || e.name === "tinyllama:latest")).toBe(false);
  });
});

describe("serving", () => {
  test("a model copied into a root after the server started is listed and served without a restart", async () => {
    const home2 = path.join(scratch, "home2");
    const cwd3 = path.join(scratch, "cwd3");
    await tiny(40)(path.join(cwd3, "models", "first.gguf"));
    await tiny(43)(path.join(cwd3, "models", "part-00001-of-00002.gguf"));
    const ollama2 = path.join(home2, ".ollama", "models");
    ollamaManifest(ollama2, "registry.ollama.ai/someone/coder/7b", [{ mediaType: MODEL_LAYER, hex: await blob(path.join(ollama2, "blobs"), "sha256-", tiny(42)) }]);
    const src = path.join(scratch, "late-src.gguf");
    await tiny(41)(src);
    const registry = new ModelRegistry({ modelDirs: [] }, cwd3, { env: { HOME: home2 } });
    const engine = new Engine(registry, { gpu: "cpu", threads: 1, threadsExplicit: true, ctxSize: 512, chatTemplate: "auto" });
    let server: Listening | undefined;
    try {
      server = listen(createApp({ engine }), "127.0.0.1:0");
      const get = async (p: string) => (await fetch(`${server!.url}${p}`)).json() as Promise<any>;
      const apiNames = async () => ((await get("/api/models")).models as Array<{ name: string }>).map((m) => m.name);
      const v1Names = async () => ((await get("/v1/models")).data as Array<{ id: string }>).map((m) => m.id);
      // /api/models lists the incomplete split set with its problem; /v1/models only what can load.
      expect((await apiNames()).sort()).toEqual(["first", "part", "someone/coder:7b"]);
      expect(((await get("/api/models")).models as Array<{ name: string; error?: string }>).find((m) => m.name === "part")?.error).toContain("incomplete split model");
      expect((await v1Names()).sort()).toEqual(["first", "someone/coder:7b"]);
      // A name with a slash works in per-model routes once percent-encoded (as HTTP clients send it).
      expect(await get(`/api/models/${encodeURIComponent("someone/coder:7b")}/status`)).toMatchObject({ name: "someone/coder:7b", state: "unloaded" });
      expect(await get(`/v1/models/${encodeURIComponent("someone/coder:7b")}`)).toMatchObject({ id: "someone/coder:7b", object: "model" });

      // Into a root that did not even exist when the server started (LM Studio's folder).
      const late = path.join(home2, ".lmstudio", "models", "pub", "repo", "late-model.gguf");
      mkdirSync(path.dirname(late), { recursive: true });
      copyFileSync(src, late);
      const res = await fetch(`${server.url}/api/generate`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "late-model", prompt: "hi", max_tokens: 4, stream: false }),
      });
      const body = (await res.json()) as any;
      expect({ status: res.status, model: body.model, n: body.timings?.predicted_n }).toEqual({ status: 200, model: "late-model", n: 4 });
      const models = (await get("/api/models")).models as Array<{ name: string; source: string; architecture?: string }>;
      expect(models.find((m) => m.name === "late-model")).toMatchObject({ source: "lmstudio", architecture: "llama" });
      expect(await v1Names()).toContain("late-model");

      // Into an existing root, found by the next scan once the cached one is older than a second.
      copyFileSync(src, path.join(cwd3, "models", "later.gguf"));
      const until = async (cond: () => Promise<boolean>) => {
        for (let i = 0; i < 50 && !(await cond()); i++) await Bun.sleep(100);
        return cond();
      };
      expect(await until(async () => (await apiNames()).includes("later"))).toBe(true);
      expect(await v1Names()).toContain("later");

      // A broken file dropped in shows its problem in /api/models and is left out of /v1/models.
      writeFileSync(path.join(cwd3, "models", "broken.gguf"), "nope");
      expect(await until(async () => (await apiNames()).includes("broken"))).toBe(true);
      const broken = ((await get("/api/models")).models as Array<{ name: string; error?: string }>).find((m) => m.name === "broken");
      expect(broken?.error).toContain("is not a readable GGUF file");
      expect(await v1Names()).not.toContain("broken");

      // And a file removed is no longer listed.
      unlinkSync(path.join(cwd3, "models", "later.gguf"));
      expect(await until(async () => !(await apiNames()).includes("later"))).toBe(true);
    } finally {
      await server?.stop();
      await engine.close();
    }
  });
});

describe("robustness (regressions)", () => {
  // Names follow root order: a split set in an earlier root keeps its name.
  test("a split set in an earlier root keeps its name over a same-stem file in a later root", async () => {
    const d = path.join(scratch, "bug-split");
    await writeSplitModel(path.join(d, "cwd", "models"), "dup", 50);
    await tiny(51)(path.join(d, "home", ".lmstudio", "models", "p", "r", "dup.gguf"));
    const list = await listJson({ cwd: path.join(d, "cwd"), env: { HOME: path.join(d, "home") } });
    expect(list.map((e) => [e.name, e.source])).toEqual([
      ["dup", "dir"],
      ["dup@lmstudio", "lmstudio"],
    ]);
  });

  // One malformed Ollama manifest must not hide the others.
  test("one malformed Ollama manifest does not hide the other Ollama models", () => {
    for (const [i, bad] of ["null", '{"layers":{}}', '{"layers":[null]}', `{"layers":[{"mediaType":"${MODEL_LAYER}","digest":5}]}`].entries()) {
      const root = path.join(scratch, `bug-ollama-${i}`);
      mkdirSync(path.join(root, "blobs"), { recursive: true });
      writeFileSync(path.join(root, "blobs", `sha256-${"a".repeat(64)}`), "x");
      ollamaManifest(root, "registry.ollama.ai/library/good/latest", [{ mediaType: MODEL_LAYER, hex: "a".repeat(64) }]);
      mkdirSync(path.join(root, "manifests", "registry.ollama.ai", "library", "zbad"), { recursive: true });
      writeFileSync(path.join(root, "manifests", "registry.ollama.ai", "library", "zbad", "latest"), bad);
      const r = scanRoot({ kind: "ollama", path: root });
      expect({ bad, error: r.report.error, names: r.candidates.map((c) => c.name) }).toEqual({ bad, error: undefined, names: ["good:latest"] });
    }
  });
});

describe("walk speed", () => {
  test("scanRoot over 10,000 files in nested folders finds exactly the 20 .gguf (time printed, not asserted)", () => {
    const root = path.join(scratch, "walk");
    let gguf = 0;
    for (let a = 0; a < 20; a++) {
      for (let b = 0; b < 10; b++) {
        const dir = path.join(root, `d${a}`, `s${b}`, "leaf");
        mkdirSync(dir, { recursive: true });
        for (let f = 0; f < 50; f++) writeFileSync(path.join(dir, `file-${f}.${f % 2 ? "json" : "bin"}`), "x");
        if (b === a % 10) {
          writeFileSync(path.join(dir, `model-${a}.gguf`), "");
          gguf++;
        }
      }
    }
    expect(gguf).toBe(20);
    const t0 = performance.now();
    const { candidates, report } = scanRoot({ kind: "dir", path: root });
    const cold = performance.now() - t0;
    const t1 = performance.now();
    scanRoot({ kind: "dir", path: root });
    const warm = performance.now() - t1;
    console.log(`walk: 10,000 files + 20 .gguf in 200 folders: ${cold.toFixed(1)} ms (again: ${warm.toFixed(1)} ms)`);
    expect(candidates).toHaveLength(20);
    expect(report).toEqual({ root: { kind: "dir", path: root }, exists: true, files: 20 });
    expect(new Set(candidates.map((c) => path.basename(c.file))).size).toBe(20);
  });
});
