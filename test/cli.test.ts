/**
 * End-to-end tests of the real CLI: every test spawns `bun src/main.ts ...` (through `runCli` or
 * Bun.spawn) against a tiny generated GGUF model. Runs sequentially; each model-loading spawn costs ~1 s.
 */
import { afterAll, beforeAll, describe, expect, test, setDefaultTimeout } from "bun:test";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { nativeBuildInfo } from "../src/engine/runtime.ts";
import { MAIN, REPO, makeFixtures, runCli } from "./helpers.ts";

// Loads models or spawns the CLI on 2 shared cores: allow 60 s per test (bun's default is 5 s).
setDefaultTimeout(60_000);

const PRELOAD = path.join(import.meta.dir, "fixtures", "maps-preload.ts");
const PKG_VERSION: string = JSON.parse(readFileSync(path.join(REPO, "package.json"), "utf8")).version;

/** Env that keeps the host's SHIMMY_* settings out of the tests (runCli adds threads, gpu, demo). */
const CLEAN_ENV: Record<string, string> = {
  SHIMMY_MODEL_PATHS: "",
  SHIMMY_BASE_GGUF: "",
  SHIMMY_LORA_GGUF: "",
  SHIMMY_CTX_SIZE: "",
  SHIMMY_CHAT_TEMPLATE: "",
  SHIMMY_LOG: "",
  NO_COLOR: "",
};

let fx: Awaited<ReturnType<typeof makeFixtures>>;
/** Scratch dir: an empty cwd (so ./models is empty), broken models, an empty model dir, a cache dir. */
let scratch: string;
let emptyCwd: string;
const spawned: Array<{ kill(sig?: number | NodeJS.Signals): void; exitCode: number | null }> = [];

beforeAll(async () => {
  fx = await makeFixtures();
  scratch = mkdtempSync(path.join(os.tmpdir(), "shimmy-cli-test-"));
  emptyCwd = path.join(scratch, "cwd");
  mkdirSync(emptyCwd);
});

afterAll(() => {
  for (const p of spawned) if (p.exitCode === null) p.kill("SIGKILL");
  fx?.cleanup();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

/** runCli from an empty cwd with a clean env. */
function cli(args: string[], opts: { stdin?: string; env?: Record<string, string>; cwd?: string } = {}) {
  return runCli(args, { cwd: opts.cwd ?? emptyCwd, stdin: opts.stdin, env: { ...CLEAN_ENV, ...opts.env } });
}

const stripAnsi = (s: string) => s.replace(/\x1b\[[0-9;]*m/g, "");

/** Greedy, short, deterministic generation flags for the tiny model. */
const tinyGen = () => ["generate", "tiny", "--model-dirs", fx.dir, "--temperature", "0", "--max-tokens", "16"];

interface GenJson {
  model: string;
  text: string;
  finish_reason: string;
  timings: { prompt_n: number; predicted_n: number; predicted_per_second: number; [k: string]: number };
}

/** Parses stdout that must be exactly one JSON line. */
function oneJsonLine<T>(stdout: string): T {
  expect(stdout.endsWith("\n")).toBe(true);
  const lines = stdout.slice(0, -1).split("\n");
  expect(lines).toHaveLength(1);
  return JSON.parse(lines[0]!) as T;
}

/** Runs `bun --preload maps-preload.ts src/main.ts ...`; returns the llama-ish paths mapped at exit. */
async function mappedLlama(args: string[]): Promise<{ code: number; stdout: string; stderr: string; llama: string[] }> {
  const proc = Bun.spawn(["bun", "--preload", PRELOAD, MAIN, ...args], {
    cwd: emptyCwd,
    env: { ...process.env, ...CLEAN_ENV, SHIMMY_THREADS: "1", SHIMMY_GPU: "cpu", SHIMMY_DEMO_MODEL: "0" },
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  const line = stderr.split("\n").find((l) => l.startsWith("MAPS-LLAMA: "));
  if (!line) throw new Error(`preload did not report (exit ${code}); stderr: ${stderr}`);
  return { code, stdout, stderr, llama: JSON.parse(line.slice("MAPS-LLAMA: ".length)) };
}

describe("help and version", () => {
  test("--help prints the root usage with every subcommand", async () => {
    const r = await cli(["--help"]);
    expect(r.code).toBe(0);
    const out = stripAnsi(r.stdout);
    expect(out).toContain("USAGE");
    expect(out).toContain("shimmy");
    for (const sub of ["serve", "list", "probe", "generate", "bench"]) expect(out).toContain(sub);
  });

  test("serve --help and generate --help print their own options", async () => {
    const serve = await cli(["serve", "--help"]);
    expect(serve.code).toBe(0);
    expect(stripAnsi(serve.stdout)).toContain("shimmy serve");
    expect(stripAnsi(serve.stdout)).toContain("--bind");
    const gen = await cli(["generate", "--help"]);
    expect(gen.code).toBe(0);
    const out = stripAnsi(gen.stdout);
    expect(out).toContain("shimmy generate");
    for (const flag of ["--prompt", "--max-tokens", "--temperature", "--stop", "--json", "--raw"]) expect(out).toContain(flag);
    expect(out).not.toContain("--bind");
  });

  test("--version prints shimmy's version, the llama.cpp release and the backends compiled in", async () => {
    const r = await cli(["--version"]);
    expect(r.code).toBe(0);
    const release = JSON.parse(readFileSync(path.join(REPO, "node_modules/node-llama-cpp/llama/binariesGithubRelease.json"), "utf8")).release;
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines[0]).toBe(`shimmy ${PKG_VERSION}`);
    expect(lines[1]).toBe(`llama.cpp ${release} (node-llama-cpp 3.21.1)`);
    expect(lines[2]).toMatch(/^backends: cpu(, \w+)*$/);
  });

  test("--help, serve --help, generate --help and --version never map the native addon", async () => {
    for (const args of [["--help"], ["serve", "--help"], ["generate", "--help"], ["--version"]]) {
      const r = await mappedLlama(args);
      expect(r.code).toBe(0);
      expect(r.stdout.length).toBeGreaterThan(0);
      expect({ args, llama: r.llama }).toEqual({ args, llama: [] });
    }
  });

  test("control: probe under the same preload does map llama.cpp", async () => {
    const r = await mappedLlama(["probe", "tiny", "--model-dirs", fx.dir]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("ok: loaded tiny");
    expect(r.llama.some((p) => /libllama|llama-addon\.node/.test(path.basename(p)))).toBe(true);
  });
});

describe("generate", () => {
  /** The greedy chat output for "hello" on stdin, from `--json` (run once, shared by the tests below). */
  let referenceRun: Promise<{ code: number; stdout: string; stderr: string }> | undefined;
  let reference: GenJson;
  const getReference = async (): Promise<GenJson> => {
    referenceRun ??= cli([...tinyGen(), "--json"], { stdin: "hello\n" });
    const r = await referenceRun;
    expect(r.code).toBe(0);
    return (reference = oneJsonLine<GenJson>(r.stdout));
  };

  test("--json prints one JSON line with text, finish_reason length and timings", async () => {
    await getReference();
    expect(reference.model).toBe("tiny");
    expect(typeof reference.text).toBe("string");
    expect(reference.text.length).toBeGreaterThan(0);
    expect(reference.finish_reason).toBe("length");
    expect(reference.timings.prompt_n).toBeGreaterThan(0);
    expect(reference.timings.predicted_n).toBe(16);
    expect(reference.timings.predicted_per_second).toBeGreaterThan(0);
  });

  test("prompt on stdin: stdout is exactly the generated text, no log lines", async () => {
    await getReference();
    const r = await cli(tinyGen(), { stdin: "hello\n" });
    expect(r.code).toBe(0);
    expect(r.stdout.length).toBeGreaterThan(0);
    expect(r.stdout).toBe(reference.text);
    expect(r.stderr).toBe("");
  });

  test("--prompt gives the same greedy text as stdin; --raw differs from the chat template", async () => {
    await getReference();
    const chat = await cli([...tinyGen(), "--prompt", "hello"]);
    expect(chat.code).toBe(0);
    expect(chat.stdout).toBe(reference.text);
    const raw = await cli([...tinyGen(), "--prompt", "hello", "--raw"]);
    expect(raw.code).toBe(0);
    expect(raw.stdout.length).toBeGreaterThan(0);
    expect(raw.stdout).not.toBe(chat.stdout);
  });

  test("--stop ends the generation before the stop text, which is never printed", async () => {
    await getReference();
    const words = reference.text.split(/\s+/).filter((w) => /^[A-Za-z]{2,}$/.test(w));
    expect(words.length).toBeGreaterThan(1);
    // A word from the middle, whose first occurrence is not at the very start.
    const stop = words.slice(Math.floor(words.length / 2)).concat(words).find((w) => reference.text.indexOf(w) > 0)!;
    expect(stop).toBeDefined();
    const expected = reference.text.slice(0, reference.text.indexOf(stop));

    const json = await cli([...tinyGen(), "--prompt", "hello", "--stop", stop, "--json"]);
    expect(json.code).toBe(0);
    const res = oneJsonLine<GenJson>(json.stdout);
    expect(res.finish_reason).toBe("stop");
    expect(res.text).not.toContain(stop);
    expect(res.text).toBe(expected);
    expect(res.timings.predicted_n).toBeLessThan(16);

    const streamed = await cli([...tinyGen(), "--prompt", "hello", `--stop=${stop}`]);
    expect(streamed.code).toBe(0);
    expect(streamed.stdout).not.toContain(stop);
    expect(streamed.stdout).toBe(expected);
  });

  test("a closed stdout (| head -c 10) stops generation quietly and with exit 0", async () => {
    // Reference: the same request run to the end, to show that the piped run really stops early.
    const t0 = performance.now();
    const full = await cli(["generate", "tiny", "--model-dirs", fx.dir, "--prompt", "hi", "--max-tokens", "3000", "--temperature", "0", "--json"]);
    const fullMs = performance.now() - t0;
    expect(full.code).toBe(0);
    expect(oneJsonLine<GenJson>(full.stdout).timings.predicted_n).toBe(3000);

    const t1 = performance.now();
    const proc = Bun.spawn(
      ["bash", "-c", 'set -o pipefail; bun "$T_MAIN" generate tiny --model-dirs "$T_DIR" --prompt hi --max-tokens 3000 --temperature 0 | head -c 10'],
      {
        cwd: emptyCwd,
        env: { ...process.env, ...CLEAN_ENV, SHIMMY_THREADS: "1", SHIMMY_GPU: "cpu", SHIMMY_DEMO_MODEL: "0", T_MAIN: MAIN, T_DIR: fx.dir },
        stdin: "ignore",
        stdout: "pipe",
        stderr: "pipe",
      },
    );
    spawned.push(proc);
    const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).bytes(), new Response(proc.stderr).text(), proc.exited]);
    const pipedMs = performance.now() - t1;
    expect(stdout.length).toBe(10);
    // pipefail: shimmy's own exit status (head's is 0).
    expect(code).toBe(0);
    expect(stderr).not.toMatch(/^\s+at /m);
    expect(stderr).not.toContain("EPIPE");
    expect(stderr.toLowerCase()).not.toContain("error");
    expect(pipedMs).toBeLessThan(20_000);
    // Generating all 3000 tokens takes several seconds; the piped run must stop long before that.
    expect(pipedMs).toBeLessThan(fullMs * 0.75);
  });
});

describe("exit codes", () => {
  test("unknown model: exit 2, stderr names the available models", async () => {
    const r = await cli(["generate", "nope", "--model-dirs", fx.dir, "--prompt", "hi"]);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe("");
    expect(r.stderr).toContain("'nope'");
    expect(r.stderr).toMatch(/available: .*\btiny\b/);
  });

  test("no prompt (empty stdin, no --prompt): exit 1", async () => {
    const r = await cli(["generate", "tiny", "--model-dirs", fx.dir], { stdin: "" });
    expect(r.code).toBe(1);
    expect(r.stdout).toBe("");
    expect(r.stderr).toContain("no prompt");
  });

  test.each([
    ["--max-tokens", "abc"],
    ["--temperature", "9"],
    ["--threads", "0"],
  ])("bad value %s %s: exit 1 naming the flag", async (flag, value) => {
    const r = await cli(["generate", "tiny", "--model-dirs", fx.dir, "--prompt", "hi", flag, value]);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe("");
    expect(r.stderr).toContain(flag);
    expect(r.stderr).toContain(`'${value}'`);
  });

  test("missing model name: exit 1", async () => {
    for (const cmd of ["generate", "probe", "bench"]) {
      const r = await cli([cmd, "--model-dirs", fx.dir]);
      expect({ cmd, code: r.code }).toEqual({ cmd, code: 1 });
      expect(r.stderr).toMatch(/NAME/);
    }
  });

  test("broken model files: probe exits 2 with a clear message, no crash", async () => {
    const dir = path.join(scratch, "broken");
    mkdirSync(dir, { recursive: true });
    // Garbage bytes (deterministic), and the real model cut in half (header fine, tensor data missing).
    const garbage = new Uint8Array(4096).map((_, i) => (i * 7919 + 13) & 0xff);
    writeFileSync(path.join(dir, "broken.gguf"), garbage);
    const tiny = readFileSync(fx.tiny);
    writeFileSync(path.join(dir, "truncated.gguf"), tiny.subarray(0, tiny.length >> 1));
    for (const [name, message] of [
      ["broken", /broken\.gguf is not a readable GGUF file/],
      ["truncated", /truncated\.gguf is truncated: tensor \S+ ends at byte \d+ but the file has \d+ bytes/],
    ] as const) {
      const r = await cli(["probe", name, "--model-dirs", dir]);
      expect({ name, code: r.code }).toEqual({ name, code: 2 });
      expect(r.stdout).toBe("");
      expect(r.stderr).toMatch(/^error: /);
      expect(r.stderr).toMatch(message);
      expect(r.stderr).not.toMatch(/panic|Segmentation|Aborted|core dumped|^\s+at /im);
    }
  });

  test("serve --bind garbage: exit 1", async () => {
    const r = await cli(["serve", "--bind", "garbage", "--model-dirs", fx.dir]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("garbage");
    expect(r.stdout).not.toContain("listening");
  });
});

describe("list, probe, bench", () => {
  test("list prints a table with a NAME header", async () => {
    const r = await cli(["list", "--model-dirs", fx.dir]);
    expect(r.code).toBe(0);
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^NAME\s+SOURCE\s+SIZE\s+PARAMS\s+QUANT\s+CONTEXT\s+TEMPLATE\s+PATH$/);
    expect(lines).toHaveLength(2);
    expect(lines[1]).toMatch(/^tiny\s/);
    expect(lines[1]).toContain(fx.tiny);
  });

  test("list --short prints one name per line (the LoRA file is not a model)", async () => {
    const r = await cli(["list", "--short", "--model-dirs", fx.dir]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe("tiny\n");
  });

  test("list --json prints an array with name, path, size_bytes", async () => {
    const r = await cli(["list", "--json", "--model-dirs", fx.dir]);
    expect(r.code).toBe(0);
    const models = JSON.parse(r.stdout) as Array<{ name: string; path: string; size_bytes: number; source: string }>;
    expect(Array.isArray(models)).toBe(true);
    expect(models).toHaveLength(1);
    expect(models[0]).toMatchObject({ name: "tiny", path: fx.tiny, source: "dir", size_bytes: readFileSync(fx.tiny).length });
  });

  test("a model dir without gguf files lists nothing", async () => {
    const dir = path.join(scratch, "no-models");
    mkdirSync(dir, { recursive: true });
    writeFileSync(path.join(dir, "readme.txt"), "not a model");
    const short = await cli(["list", "--short", "--model-dirs", dir]);
    expect(short.code).toBe(0);
    expect(short.stdout).toBe("");
    const json = await cli(["list", "--json", "--model-dirs", dir]);
    expect(JSON.parse(json.stdout)).toEqual([]);
    const table = await cli(["list", "--model-dirs", dir]);
    expect(table.code).toBe(0);
    expect(table.stdout).toBe("");
    expect(table.stderr).toContain("no models found");
  });

  test("probe tiny loads the model", async () => {
    const r = await cli(["probe", "tiny", "--model-dirs", fx.dir]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^ok: loaded tiny in \d+ ms \(context \d+ tokens\)\n$/);
  });

  test("bench --json reports positive timings", async () => {
    const r = await cli(["bench", "tiny", "--runs", "2", "--max-tokens", "8", "--json", "--model-dirs", fx.dir]);
    expect(r.code).toBe(0);
    const b = oneJsonLine<Record<string, any>>(r.stdout);
    expect(b.model).toBe("tiny");
    expect(b.runs).toBe(2);
    expect(b.load_ms).toBeGreaterThan(0);
    for (const k of ["ttft_ms", "prompt_tokens_per_second", "decode_tokens_per_second", "aggregate_tokens_per_second"]) {
      expect({ k, p50: b[k].p50 > 0, p95: b[k].p95 >= b[k].p50 }).toEqual({ k, p50: true, p95: true });
    }
    expect(b.generated_tokens).toBe(8);
    expect(b.per_run).toHaveLength(2);
  });

  test("bench --concurrency runs streams at once on parallel slots", async () => {
    const r = await cli(["bench", "tiny", "--runs", "2", "--max-tokens", "8", "--concurrency", "3", "--json", "--model-dirs", fx.dir]);
    expect(r.code).toBe(0);
    const b = oneJsonLine<Record<string, any>>(r.stdout);
    expect(b.concurrency).toBe(3);
    expect(b.per_run.map((x: any) => x.streams.length)).toEqual([3, 3]);
    expect(b.aggregate_tokens_per_second.p50).toBeGreaterThan(0);
    const text = await cli(["bench", "tiny", "--runs", "1", "--max-tokens", "4", "--concurrency", "2", "--model-dirs", fx.dir]);
    expect(text.stdout).toMatch(/aggregate\s+p50 [\d.]+ tok\/s, p95 [\d.]+ tok\/s over 2 streams/);
  });

  test("SHIMMY_BASE_GGUF registers the file under its stem name", async () => {
    const dir = path.join(scratch, "base");
    mkdirSync(dir, { recursive: true });
    const file = path.join(dir, "My_Model.gguf");
    copyFileSync(fx.tiny, file);
    const env = { SHIMMY_BASE_GGUF: file };
    const list = await cli(["list", "--json"], { env });
    expect(list.code).toBe(0);
    expect(JSON.parse(list.stdout)).toEqual([
      { name: "my-model", path: file, source: "env", size_bytes: readFileSync(fx.tiny).length, architecture: "llama", parameters: 147776, quantization: "F32", context_length: 4096, chat_template: true },
    ]);
    const probe = await cli(["probe", "my-model"], { env });
    expect(probe.code).toBe(0);
    expect(probe.stdout).toStartWith("ok: loaded my-model");
  });
});

describe("LoRA flags", () => {
  test("--lora repeats and takes FILE:SCALE; the adapters apply to --model-path", async () => {
    const r = await cli(["list", "--json", "--model-path", fx.tiny, "--lora", fx.lora, `--lora=${fx.lora}:0.5`]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)[0].loras).toEqual([
      { path: fx.lora, scale: 1 },
      { path: fx.lora, scale: 0.5 },
    ]);
    const g = await cli(["generate", "tiny", "--model-path", fx.tiny, "--lora", `${fx.lora}:0.5`, "--prompt", "hi", "--max-tokens", "4", "--temperature", "0", "--json"]);
    expect(g.code).toBe(0);
    expect(JSON.parse(g.stdout).timings.predicted_n).toBe(4);
  });
});

describe("gpu-info", () => {
  // What this checkout carries: cpu, plus any GPU prebuilt package that happens to be installed.
  const compiled = () => nativeBuildInfo().backends;

  test("reports the backends compiled in, the one in use and why a GPU is not used", async () => {
    const r = await cli(["gpu-info", "--json"], { env: { SHIMMY_GPU: "auto" } });
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.compiled).toEqual(compiled());
    expect(Array.isArray(j.detected)).toBe(true);
    expect(j.compiled).toContain(j.in_use);
    if (j.in_use === "cpu") {
      // Every GPU backend carried but unused is explained, or the build has none.
      const gpus = compiled().filter((b) => b !== "cpu");
      if (gpus.length === 0) expect(j.notes.join(" ")).toContain("no GPU backend");
      for (const g of gpus) expect(j.notes.some((n: string) => n.startsWith(`${g}:`))).toBe(true);
    }
    const text = await cli(["gpu-info"], { env: { SHIMMY_GPU: "auto" } });
    expect(stripAnsi(text.stdout)).toMatch(new RegExp(`^compiled in: +${compiled().join(", ")}\\ndetected: .*\\nin use: +${j.in_use} \\(--gpu auto\\)\\n`));
  });

  test("a backend the build does not carry is exit 2 with what it has", async () => {
    const missing = ["metal", "cuda", "vulkan"].find((b) => !compiled().includes(b))!;
    const r = await cli(["gpu-info", "--gpu", missing]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`this build does not include the ${missing} backend (it has: ${compiled().join(", ")})`);
  });
});

describe("demo model", () => {
  test("with no model anywhere, generate uses the random-weights demo model and warns", async () => {
    const cwd = path.join(scratch, "demo-gen-cwd");
    const cache = path.join(scratch, "demo-gen-cache");
    mkdirSync(cwd, { recursive: true });
    const r = await cli(["generate", "shimmy-demo-random-weights", "--prompt", "hi", "--max-tokens", "5", "--json"], { cwd, env: { SHIMMY_DEMO_MODEL: "1", SHIMMY_CACHE_DIR: cache } });
    expect(r.code).toBe(0);
    expect(oneJsonLine<GenJson>(r.stdout).timings.predicted_n).toBe(5);
    expect(r.stderr).toContain("RANDOM WEIGHTS");
    expect(existsSync(path.join(cache, "shimmy-demo-random-weights.gguf"))).toBe(true);
  });
});

describe("serve", () => {
  /** Spawns `serve`, waits for the `shimmy listening on URL` line, returns the URL and the process. */
  async function startServe(args: string[], opts: { env?: Record<string, string>; cwd?: string } = {}) {
    const proc = Bun.spawn(["bun", MAIN, "serve", ...args], {
      cwd: opts.cwd ?? emptyCwd,
      env: { ...process.env, ...CLEAN_ENV, SHIMMY_THREADS: "1", SHIMMY_GPU: "cpu", SHIMMY_DEMO_MODEL: "0", ...opts.env },
      stdin: "ignore",
      stdout: "pipe",
      stderr: "pipe",
    });
    spawned.push(proc);
    const stderr = new Response(proc.stderr).text();
    const reader = proc.stdout.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    const timer = setTimeout(() => proc.kill("SIGKILL"), 20_000);
    try {
      while (true) {
        const m = buf.match(/^shimmy listening on (http:\/\/\S+)$/m);
        if (m) return { proc, url: m[1]!, stderr };
        const { value, done } = await reader.read();
        if (done) throw new Error(`serve exited before listening (code ${await proc.exited}); stdout: ${buf}; stderr: ${await stderr}`);
        buf += decoder.decode(value, { stream: true });
      }
    } finally {
      clearTimeout(timer);
      reader.releaseLock();
    }
  }

  /** SIGTERM, then the exit code (SIGKILL and fail after 10 s). */
  async function stop(proc: ReturnType<typeof Bun.spawn>): Promise<number> {
    proc.kill("SIGTERM");
    const timer = setTimeout(() => proc.kill("SIGKILL"), 10_000);
    const code = await proc.exited;
    clearTimeout(timer);
    expect(proc.signalCode).toBeNull();
    return code;
  }

  test("serves /health on an ephemeral port and exits 0 on SIGTERM", async () => {
    const { proc, url, stderr } = await startServe(["--bind", "127.0.0.1:0", "--model-dirs", fx.dir]);
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(url).not.toEndWith(":0");
    const res = await fetch(`${url}/health`);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toContain("application/json");
    const body = (await res.json()) as { status: string; version: string; models: number };
    expect(body).toMatchObject({ status: "ready", version: PKG_VERSION, models: 1 });
    // Use llama.cpp before stopping: a shutdown after a model has run must still be clean.
    const gen = (await (await fetch(`${url}/api/generate`, { method: "POST", body: JSON.stringify({ model: "tiny", prompt: "hi", max_tokens: 3, stream: false }) })).json()) as { finish_reason: string };
    expect(gen.finish_reason).toBe("length");
    expect(await stop(proc)).toBe(0);
    expect(await stderr).not.toMatch(/^\s+at /m);
  });

  test("SIGTERM drains: a short generation finishes, a long one ends with abort after the grace period; /health says draining; exit 0", async () => {
    const { proc, url } = await startServe(["--bind", "127.0.0.1:0", "--model-dirs", fx.dir, "--shutdown-grace", "400ms"]);
    // Start the long generation and wait for its first token (the model is loaded and streaming).
    const res = await fetch(`${url}/api/generate`, { method: "POST", body: JSON.stringify({ model: "tiny", prompt: "x", max_tokens: 3500 }) });
    const reader = res.body!.getReader();
    const decoder = new TextDecoder();
    const first = decoder.decode((await reader.read()).value);
    const long = (async () => {
      let text = first;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return text;
        text += decoder.decode(value, { stream: true });
      }
    })();
    // A short generation, also streaming before the signal: it finishes within the grace period.
    const shortRes = await fetch(`${url}/api/generate`, { method: "POST", body: JSON.stringify({ model: "tiny", prompt: "y", max_tokens: 40 }) });
    const shortReader = shortRes.body!.getReader();
    let shortText = decoder.decode((await shortReader.read()).value);
    proc.kill("SIGTERM");
    for (;;) {
      const { value, done } = await shortReader.read();
      if (done) break;
      shortText += decoder.decode(value, { stream: true });
    }
    const shortDone = shortText.split("\n\n").find((e) => e.startsWith("event: done"))!;
    expect(JSON.parse(shortDone.split("data: ")[1]!)).toMatchObject({ finish_reason: "length", timings: { predicted_n: 40 } });
    await Bun.sleep(50);
    const health = await fetch(`${url}/health`);
    expect(health.status).toBe(503);
    expect(((await health.json()) as { status: string }).status).toBe("draining");
    const refused = await fetch(`${url}/api/generate`, { method: "POST", body: JSON.stringify({ model: "tiny", prompt: "x", max_tokens: 2 }) });
    expect(refused.status).toBe(503);
    const events = (await long).split("\n\n").filter(Boolean);
    expect(events.at(-1)).toBe("data: [DONE]");
    expect(events.at(-2)).toStartWith("event: done\ndata: ");
    expect(JSON.parse(events.at(-2)!.split("data: ")[1]!).finish_reason).toBe("abort");
    const timer = setTimeout(() => proc.kill("SIGKILL"), 10_000);
    expect(await proc.exited).toBe(0);
    clearTimeout(timer);
  });

  test("with no model anywhere it serves the random-weights demo model and warns", async () => {
    const cwd = path.join(scratch, "demo-cwd");
    const cache = path.join(scratch, "demo-cache");
    mkdirSync(cwd, { recursive: true });
    const { proc, url, stderr } = await startServe(["--bind", "127.0.0.1:0"], { cwd, env: { SHIMMY_DEMO_MODEL: "1", SHIMMY_CACHE_DIR: cache } });
    try {
      const models = (await (await fetch(`${url}/api/models`)).json()) as { models: Array<{ name: string; source: string; path: string }> };
      expect(models.models).toHaveLength(1);
      expect(models.models[0]!.name).toContain("demo-random-weights");
      expect(models.models[0]!.source).toBe("demo");
      expect(models.models[0]!.path.startsWith(cache)).toBe(true);
      expect(existsSync(models.models[0]!.path)).toBe(true);
      const health = (await (await fetch(`${url}/health`)).json()) as { models: number };
      expect(health.models).toBe(1);
    } finally {
      expect(await stop(proc)).toBe(0);
    }
    expect(await stderr).toMatch(/random weights/i);
  });
});
