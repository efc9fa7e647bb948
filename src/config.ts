/**
 * The one place that reads environment variables. Every setting has an env var (`SHIMMY_*`) and most
 * have a CLI flag; flags win over env, env wins over defaults.
 */
import { readFileSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";

export type GpuMode = "auto" | "cpu" | "cuda" | "vulkan" | "metal";
export const GPU_MODES: readonly GpuMode[] = ["auto", "cpu", "cuda", "vulkan", "metal"];
export type ChatTemplateName = "auto" | "chatml" | "llama3" | "openchat";
export const CHAT_TEMPLATES: readonly ChatTemplateName[] = ["auto", "chatml", "llama3", "openchat"];

export interface Config {
  /** `auto` or `HOST:PORT`. Default `auto` (127.0.0.1:11435, else first free port in 11435-11535, else ephemeral). Env `SHIMMY_BIND_ADDRESS`. */
  bind: string;
  /** A base model file served under its file-stem name. Env `SHIMMY_BASE_GGUF`. */
  baseGguf?: string;
  /** The LoRA setting as given (see `loras`). Env `SHIMMY_LORA_GGUF`. */
  loraGguf?: string;
  /** Extra single model file (`serve --model-path`). */
  modelPath?: string;
  /** Directories scanned for `*.gguf`, besides `./models`. Env `SHIMMY_MODEL_PATHS` (path-delimiter separated) and `--model-dirs` (comma separated). */
  modelDirs: string[];
  /** llama.cpp threads. Default: physical cores (1 for models under 64 MiB). Env `SHIMMY_THREADS`. */
  threads: number;
  /** True when `threads` was set by flag or env; false when it is the default. */
  threadsExplicit: boolean;
  /** Context size in tokens, capped by the model's training context. Default 4096. Env `SHIMMY_CTX_SIZE`. */
  ctxSize: number;
  /** GPU backend: auto (use one if present, else CPU), cpu, cuda, vulkan, metal. Default auto. Env `SHIMMY_GPU`. */
  gpu: GpuMode;
  /** Chat template for every model: `auto` (the GGUF's own), chatml, llama3, openchat or a Jinja file path. Default auto. Env `SHIMMY_CHAT_TEMPLATE`. */
  chatTemplate: string;
  /** Per-model chat templates, from `MODEL=TEMPLATE` items of the same setting (comma separated). */
  chatTemplates: Record<string, string>;
  /** Most requests that may wait for one model; more get 503. Default 64. Env `SHIMMY_MAX_QUEUE`, flag `--max-queue`. */
  maxQueue: number;
  /** Concurrent generations per loaded model (sequences of one context). Default 4. Env `SHIMMY_PARALLEL`, flag `--parallel`. */
  parallel: number;
  /** How long an idle model stays loaded, ms; -1 = forever, 0 = unload after each request. Default 5m. Env `SHIMMY_KEEP_ALIVE`, flag `--keep-alive`. */
  keepAliveMs: number;
  /** Most models loaded at once; the least recently used idle one is unloaded first. Default 3. Env `SHIMMY_MAX_LOADED_MODELS`. */
  maxLoadedModels: number;
  /** On SIGINT/SIGTERM, how long running generations may finish before they are aborted, ms. Default 10s. Env `SHIMMY_SHUTDOWN_GRACE`. */
  shutdownGraceMs: number;
  /** Most bytes one model load may need (weights + context, node-llama-cpp's estimate); beyond it the load is refused with 503. Default: memory available at load time. Env `SHIMMY_MEMORY_LIMIT` (bytes, or with K/M/G suffix). */
  memoryLimit?: number;
  /** LoRA adapters (path and scale) for the base model; from `SHIMMY_LORA_GGUF` / `--lora`, `path[:scale]`, comma separated or repeated. */
  loras: Array<{ path: string; scale: number }>;
  /** Serve a generated random-weights demo model when no model is found. Default true. Env `SHIMMY_DEMO_MODEL=0` disables. */
  demoModel: boolean;
  /** Where shimmy keeps generated files (the demo model). Env `SHIMMY_CACHE_DIR`, else `$XDG_CACHE_HOME/shimmy`, else `~/.cache/shimmy`. */
  cacheDir: string;
  /** Where a single-file executable extracts its native libraries. Env `SHIMMY_RUNTIME_DIR`, else `<cacheDir>/runtime` (the temp dir when that is not writable). */
  runtimeDir?: string;
  /** API keys; when any is set, every route but /health needs one (Bearer or x-api-key). Env `SHIMMY_API_KEY` (comma separated), flags `--api-key` (repeatable), `--api-key-file` (one per line). */
  apiKeys: string[];
  /** Origins allowed to call from a browser: localhost origins by default; `*` for any. Env `SHIMMY_CORS_ORIGINS`, flag `--cors-origins`. */
  corsOrigins: string[];
  /** Extra Host header names accepted while bound to loopback (DNS-rebinding protection). Env `SHIMMY_ALLOW_HOSTS`, flag `--allow-hosts`. */
  allowHosts: string[];
  /** Largest request body, bytes; larger is 413. Default 10 MB. Env `SHIMMY_MAX_BODY`, flag `--max-body`. */
  maxBodyBytes: number;
  /** Request log lines: `text` or `json`. Default text. Env `SHIMMY_LOG_FORMAT`, flag `--log-format`. */
  logFormat: "text" | "json";
  /** Put prompt text in the request log. Default false. Env `SHIMMY_LOG_PROMPTS=1`, flag `--log-prompts`. */
  logPrompts: boolean;
  /** Memory-map model files (`true`; fast loads, but a file truncated on disk while loaded can crash the process), read them into memory (`false`), or `auto` (default: read on the CPU backend on Linux when the file takes at most half the available memory, else map). Env `SHIMMY_MMAP=0|1|auto`, flags `--no-mmap` / `--mmap`. */
  mmap: boolean | "auto";
  /** Each decode step carries a token of every generating sequence (waits a few microtasks for a late one). Default true. Env `SHIMMY_FULL_BATCHES=0` turns it off (node-llama-cpp's own scheduling), for comparison. */
  fullBatches: boolean;
  /** Each multi-threaded CPU context gets a persistent llama.cpp threadpool, as llama.cpp's own tools do (Linux). Default true. Env `SHIMMY_THREADPOOL=0` turns it off (a fresh set of threads per decode, node-llama-cpp's default). */
  threadpool: boolean;
  /** How long the pools' idle workers spin for the next graph, 0..100 (llama.cpp's tools: 50). Default 0 (sleep at once). Env `SHIMMY_THREADPOOL_POLL`. */
  threadpoolPoll: number;
  /** Pin each pool's threads one per CPU (ggml's strict placement; the thread that calls into llama.cpp goes to the last of them): `true`, `false`, or `auto` (default: when a context's threads are as many as the CPUs the process may use). Env `SHIMMY_PIN_THREADS=0|1|auto`. */
  pinThreads: boolean | "auto";
  /** Plain generations (no grammar, tools or logprobs) run on shimmy's own decode loop over llama.cpp's native context: about 1 ms less JavaScript per token than node-llama-cpp's LlamaCompletion. Default true. Env `SHIMMY_DIRECT_DECODE=0` turns it off (LlamaCompletion), for comparison. */
  directDecode: boolean;
  /** Greedy requests (temperature 0, no penalties or logit bias) on shimmy's decode loop take the argmax of llama.cpp's logits synchronously instead of an async native sampling call per token (Linux). Default true. Env `SHIMMY_SYNC_GREEDY=0` turns it off (node-llama-cpp's sampler), for comparison. */
  syncGreedy: boolean;
  /** Generation steps on shimmy's decode loop call llama_decode on the JavaScript thread instead of an addon worker thread (Linux): `true`, `false`, or `auto` (default: while the last step took under 50 ms; a step blocks the event loop that long). Env `SHIMMY_SYNC_DECODE=0|1|auto`. */
  syncDecode: boolean | "auto";
  /** Longest a prompt arriving at an idle model waits for other requests sent with it, in ms (it waits 0.5% of its expected evaluation time, up to this; under 0.5 ms it does not wait). 0..100, default 2. Env `SHIMMY_GATHER_MS`. */
  gatherMs: number;
  /** While generations decode, streamed text is written (and requests accepted) at most this often, in ms; the first and last tokens go out at once. 0..1000, default 30; 0 writes after every token. Env `SHIMMY_STREAM_INTERVAL_MS`. */
  streamIntervalMs: number;
  /** On the CPU backend (Linux), a loaded model's buffers (weights read into memory, KV cache) move onto transparent huge pages. Default true. Env `SHIMMY_HUGEPAGES=0` turns it off. */
  hugepages: boolean;
  /** The nice value (0..19) for the JavaScript runtime's compiler and scavenger threads (Linux), so that they run in the gaps between llama.cpp's work instead of taking a core from it. Default 19; 0 leaves them alone. Env `SHIMMY_BACKGROUND_NICE`. */
  backgroundNice: number;
  /** Weights read into memory start 32 bytes past a 64-byte boundary: `true`, `false`, or `auto` (default: on x86-64; 4-stream decode steps on Q8_0 took 10-15% less there). Needs the huge-page wrapper (Linux, CPU, `SHIMMY_HUGEPAGES` on). Env `SHIMMY_ALIGN_WEIGHTS=0|1|auto`. */
  alignWeights: boolean | "auto";
  /** Serve the browser playground at `/`. Default true. Env `SHIMMY_PLAYGROUND=0`, flag `--no-playground`. */
  playground: boolean;
  /** Log level for stderr: error | warn | info | debug. Default info. Env `SHIMMY_LOG`. */
  logLevel: "error" | "warn" | "info" | "debug";
}

/** Counts physical cores (unique core ids per package); falls back to logical CPUs. */
export function physicalCores(): number {
  try {
    const info = readFileSync("/proc/cpuinfo", "utf8");
    const cores = new Set<string>();
    let phys = "0";
    for (const line of info.split("\n")) {
      const [k, v] = line.split(":").map((s) => s?.trim());
      if (k === "physical id") phys = v ?? "0";
      else if (k === "core id") cores.add(`${phys}:${v}`);
    }
    if (cores.size > 0) return cores.size;
  } catch {}
  return Math.max(1, os.availableParallelism?.() ?? os.cpus().length);
}

/** Comma-separated items, trimmed, empties dropped. */
function list(raw: string | undefined): string[] {
  return (raw ?? "").split(",").map((s) => s.trim()).filter(Boolean);
}

/** A 0/1 (and false/true, no/yes, off/on) or auto setting; unset is auto. */
function parseAuto(name: string, raw: string | undefined): boolean | "auto" {
  const v = (raw ?? "").trim().toLowerCase();
  if (v === "" || v === "auto") return "auto";
  if (["0", "false", "no", "off"].includes(v)) return false;
  if (["1", "true", "yes", "on"].includes(v)) return true;
  throw new RangeError(`${name} must be 0, 1 or auto, got '${raw}'`);
}

function truthy(raw: string | undefined): boolean {
  return ["1", "true", "yes", "on"].includes((raw ?? "").toLowerCase());
}

/** API keys from a file, one per line (`#` comments and blank lines ignored); RangeError if unreadable. */
function readKeyFile(file: string | undefined): string[] {
  if (!file) return [];
  try {
    return readFileSync(file, "utf8").split(/\r?\n/).map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
  } catch (err) {
    throw new RangeError(`cannot read the API key file ${file}: ${(err as Error).message}`);
  }
}

/** A list of folders: separated by `;` or the platform's path delimiter (`:` on POSIX), and commas. */
export function splitDirs(raw: string | undefined): string[] {
  const seps = new Set([";", ",", path.delimiter]);
  return (raw ?? "")
    .split(new RegExp(`[${[...seps].map((c) => `\\${c}`).join("")}]`))
    .map((s) => s.trim())
    .filter(Boolean);
}

/**
 * Chat template setting: comma-separated items, each `TEMPLATE` (the default for every model) or
 * `MODEL=TEMPLATE`; TEMPLATE is auto, chatml, llama3, openchat or the path of a Jinja file.
 */
export function parseChatTemplates(name: string, raw: string | undefined): { chatTemplate: string; chatTemplates: Record<string, string> } {
  const out = { chatTemplate: "auto", chatTemplates: {} as Record<string, string> };
  for (const item of (raw ?? "").split(",").map((s) => s.trim()).filter(Boolean)) {
    const eq = item.indexOf("=");
    const [model, value] = eq > 0 ? [item.slice(0, eq).trim().toLowerCase(), item.slice(eq + 1).trim()] : [undefined, item];
    if (!(CHAT_TEMPLATES as readonly string[]).includes(value)) {
      let isFile = false;
      try {
        isFile = statSync(value).isFile();
      } catch {}
      if (!isFile) throw new RangeError(`${name}: '${value}' is neither one of ${CHAT_TEMPLATES.join(", ")} nor a readable Jinja template file`);
    }
    const resolved = (CHAT_TEMPLATES as readonly string[]).includes(value) ? value : path.resolve(value);
    if (model) out.chatTemplates[model] = resolved;
    else out.chatTemplate = resolved;
  }
  return out;
}

/** Parses an integer setting and range-checks it; throws RangeError naming the setting. */
export function parseIntSetting(name: string, raw: string | number | undefined, min: number, max: number): number | undefined {
  if (raw === undefined || raw === "") return undefined;
  const n = typeof raw === "number" ? raw : Number(String(raw).trim());
  if (!Number.isInteger(n) || n < min || n > max) throw new RangeError(`${name} must be an integer from ${min} to ${max}, got '${raw}'`);
  return n;
}

/** Parses a float setting and range-checks it; throws RangeError naming the setting. */
export function parseFloatSetting(name: string, raw: string | undefined, min: number, max: number): number | undefined {
  if (raw === undefined || raw === "") return undefined;
  const n = Number(String(raw).trim());
  if (!Number.isFinite(n) || n < min || n > max) throw new RangeError(`${name} must be a number from ${min} to ${max}, got '${raw}'`);
  return n;
}

function oneOf<T extends string>(name: string, raw: string | undefined, allowed: readonly T[]): T | undefined {
  if (raw === undefined || raw === "") return undefined;
  if (!(allowed as readonly string[]).includes(raw)) throw new RangeError(`${name} must be one of ${allowed.join(", ")}, got '${raw}'`);
  return raw as T;
}

/** Settings given on the command line; undefined means "not given". */
export type ConfigOverrides = Partial<Omit<Config, "threads" | "ctxSize" | "threadsExplicit" | "chatTemplates" | "maxQueue" | "parallel" | "keepAliveMs" | "maxLoadedModels" | "shutdownGraceMs" | "loras" | "memoryLimit" | "maxBodyBytes">> & {
  apiKeyFile?: string;
  maxBody?: string;
  threads?: string | number;
  ctxSize?: string | number;
  maxQueue?: string;
  parallel?: string;
  keepAlive?: string;
  maxLoadedModels?: string;
  shutdownGrace?: string;
};

/**
 * A duration as Ollama writes `keep_alive`: `5m`, `30s`, `1h`, `250ms`, a plain number of seconds,
 * `-1` (or any negative) = forever, `0` = none. Returns ms (-1 for forever); RangeError when invalid.
 */
export function parseDuration(name: string, raw: string | number | undefined): number | undefined {
  if (raw === undefined || raw === "") return undefined;
  if (typeof raw === "number") {
    if (!Number.isFinite(raw)) throw new RangeError(`${name} must be a duration such as 30s, 5m, 1h, 0 or -1, got '${raw}'`);
    if (raw < 0) return -1;
    if (!Number.isSafeInteger(Math.round(raw * 1000))) throw new RangeError(`${name} is too long: ${raw} s (use -1 for forever)`);
    return Math.round(raw * 1000);
  }
  const m = String(raw).trim().match(/^(-?\d+(?:\.\d+)?)(ms|s|m|h)?$/);
  if (!m) throw new RangeError(`${name} must be a duration such as 30s, 5m, 1h, 0 or -1, got '${raw}'`);
  const n = Number(m[1]);
  if (n < 0) return -1;
  const ms = Math.round(n * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? "s") as "ms" | "s" | "m" | "h"]);
  if (!Number.isSafeInteger(ms)) throw new RangeError(`${name} is too long: '${raw}' (use -1 for forever)`);
  return ms;
}

/** `1073741824`, `512M`, `8G`: bytes. */
export function parseBytes(name: string, raw: string | undefined): number | undefined {
  if (raw === undefined || raw === "") return undefined;
  const m = raw.trim().match(/^(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?$/i);
  if (!m) throw new RangeError(`${name} must be a size such as 512M or 8G, got '${raw}'`);
  const unit = m[2]!.toUpperCase();
  return Math.round(Number(m[1]) * (unit ? 1024 ** ("KMGT".indexOf(unit) + 1) : 1));
}

/** `a.gguf`, `a.gguf:0.5`, comma separated: LoRA adapters with scales (default 1). */
export function parseLoras(name: string, raw: string | undefined): Array<{ path: string; scale: number }> {
  return (raw ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean)
    .map((item) => {
      const m = item.match(/^(.*?):(-?\d+(?:\.\d+)?)$/);
      const scale = m ? Number(m[2]) : 1;
      if (!Number.isFinite(scale)) throw new RangeError(`${name}: bad scale in '${item}'`);
      return { path: m ? m[1]! : item, scale };
    });
}

/** Builds the effective config from env and CLI overrides. Throws RangeError on invalid values. */
export function loadConfig(overrides: ConfigOverrides = {}, env: Record<string, string | undefined> = process.env): Config {
  const threads = parseIntSetting("--threads", overrides.threads, 1, 1024) ?? parseIntSetting("SHIMMY_THREADS", env.SHIMMY_THREADS, 1, 1024);
  const envDirs = splitDirs(env.SHIMMY_MODEL_PATHS);
  return {
    bind: overrides.bind ?? (env.SHIMMY_BIND_ADDRESS || undefined) ?? "auto",
    baseGguf: overrides.baseGguf ?? (env.SHIMMY_BASE_GGUF || undefined),
    loraGguf: overrides.loraGguf ?? (env.SHIMMY_LORA_GGUF || undefined),
    modelPath: overrides.modelPath,
    modelDirs: [...(overrides.modelDirs ?? []), ...envDirs],
    threads: threads ?? physicalCores(),
    threadsExplicit: threads !== undefined,
    ctxSize:
      parseIntSetting("--ctx-size", overrides.ctxSize, 256, 1 << 20) ??
      parseIntSetting("SHIMMY_CTX_SIZE", env.SHIMMY_CTX_SIZE, 256, 1 << 20) ??
      4096,
    gpu: overrides.gpu ?? oneOf("SHIMMY_GPU", env.SHIMMY_GPU, GPU_MODES) ?? "auto",
    ...parseChatTemplates(overrides.chatTemplate !== undefined ? "--chat-template" : "SHIMMY_CHAT_TEMPLATE", overrides.chatTemplate ?? env.SHIMMY_CHAT_TEMPLATE),
    maxQueue: parseIntSetting("--max-queue", overrides.maxQueue, 0, 1_000_000) ?? parseIntSetting("SHIMMY_MAX_QUEUE", env.SHIMMY_MAX_QUEUE, 0, 1_000_000) ?? 64,
    parallel: parseIntSetting("--parallel", overrides.parallel, 1, 256) ?? parseIntSetting("SHIMMY_PARALLEL", env.SHIMMY_PARALLEL, 1, 256) ?? 4,
    keepAliveMs: parseDuration("--keep-alive", overrides.keepAlive) ?? parseDuration("SHIMMY_KEEP_ALIVE", env.SHIMMY_KEEP_ALIVE) ?? 5 * 60_000,
    maxLoadedModels: parseIntSetting("--max-loaded-models", overrides.maxLoadedModels, 1, 1024) ?? parseIntSetting("SHIMMY_MAX_LOADED_MODELS", env.SHIMMY_MAX_LOADED_MODELS, 1, 1024) ?? 3,
    shutdownGraceMs: parseDuration("--shutdown-grace", overrides.shutdownGrace) ?? parseDuration("SHIMMY_SHUTDOWN_GRACE", env.SHIMMY_SHUTDOWN_GRACE) ?? 10_000,
    apiKeys: [...new Set([...(overrides.apiKeys ?? []), ...list(env.SHIMMY_API_KEY), ...readKeyFile(overrides.apiKeyFile ?? env.SHIMMY_API_KEY_FILE)])],
    corsOrigins: overrides.corsOrigins ?? list(env.SHIMMY_CORS_ORIGINS),
    allowHosts: overrides.allowHosts ?? list(env.SHIMMY_ALLOW_HOSTS),
    maxBodyBytes: parseBytes("--max-body", overrides.maxBody) ?? parseBytes("SHIMMY_MAX_BODY", env.SHIMMY_MAX_BODY) ?? 10 * 1024 * 1024,
    logFormat: overrides.logFormat ?? oneOf("SHIMMY_LOG_FORMAT", env.SHIMMY_LOG_FORMAT, ["text", "json"] as const) ?? "text",
    logPrompts: overrides.logPrompts ?? truthy(env.SHIMMY_LOG_PROMPTS),
    mmap: overrides.mmap ?? parseAuto("SHIMMY_MMAP", env.SHIMMY_MMAP),
    fullBatches: !["0", "false", "no", "off"].includes((env.SHIMMY_FULL_BATCHES ?? "").toLowerCase()),
    threadpool: !["0", "false", "no", "off"].includes((env.SHIMMY_THREADPOOL ?? "").toLowerCase()),
    threadpoolPoll: parseIntSetting("SHIMMY_THREADPOOL_POLL", env.SHIMMY_THREADPOOL_POLL, 0, 100) ?? 0,
    pinThreads: parseAuto("SHIMMY_PIN_THREADS", env.SHIMMY_PIN_THREADS),
    hugepages: !["0", "false", "no", "off"].includes((env.SHIMMY_HUGEPAGES ?? "").toLowerCase()),
    backgroundNice: parseIntSetting("SHIMMY_BACKGROUND_NICE", env.SHIMMY_BACKGROUND_NICE, 0, 19) ?? 19,
    alignWeights: parseAuto("SHIMMY_ALIGN_WEIGHTS", env.SHIMMY_ALIGN_WEIGHTS),
    syncGreedy: !["0", "false", "no", "off"].includes((env.SHIMMY_SYNC_GREEDY ?? "").toLowerCase()),
    syncDecode: parseAuto("SHIMMY_SYNC_DECODE", env.SHIMMY_SYNC_DECODE),
    gatherMs: parseFloatSetting("SHIMMY_GATHER_MS", env.SHIMMY_GATHER_MS, 0, 100) ?? 2,
    streamIntervalMs: parseFloatSetting("SHIMMY_STREAM_INTERVAL_MS", env.SHIMMY_STREAM_INTERVAL_MS, 0, 1000) ?? 30,
    directDecode: !["0", "false", "no", "off"].includes((env.SHIMMY_DIRECT_DECODE ?? "").toLowerCase()),
    playground: overrides.playground ?? !["0", "false", "no", "off"].includes((env.SHIMMY_PLAYGROUND ?? "").toLowerCase()),
    memoryLimit: parseBytes("SHIMMY_MEMORY_LIMIT", env.SHIMMY_MEMORY_LIMIT),
    loras: parseLoras(overrides.loraGguf !== undefined ? "--lora" : "SHIMMY_LORA_GGUF", overrides.loraGguf ?? env.SHIMMY_LORA_GGUF),
    demoModel: overrides.demoModel ?? !["0", "false", "no", "off"].includes((env.SHIMMY_DEMO_MODEL ?? "").toLowerCase()),
    cacheDir: overrides.cacheDir ?? (env.SHIMMY_CACHE_DIR || undefined) ?? path.join(env.XDG_CACHE_HOME || path.join(os.homedir(), ".cache"), "shimmy"),
    runtimeDir: overrides.runtimeDir ?? (env.SHIMMY_RUNTIME_DIR || undefined),
    logLevel: overrides.logLevel ?? oneOf("SHIMMY_LOG", env.SHIMMY_LOG, ["error", "warn", "info", "debug"] as const) ?? "info",
  };
}

/** True in the child process node-llama-cpp forks to test a native binary before loading it. */
export function isBindingTestChild(env: Record<string, string | undefined> = process.env): boolean {
  return env.TEST_BINDING_CP === "true";
}

/** The variables discovery reads to find other tools' model folders (HOME, OLLAMA_MODELS, HF_*, XDG_*). */
export function discoveryEnv(env: Record<string, string | undefined> = process.env): Record<string, string | undefined> {
  const keys = ["HOME", "USERPROFILE", "OLLAMA_MODELS", "HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"];
  return Object.fromEntries(keys.map((k) => [k, env[k] || undefined]));
}

/** Where `shimmy pull` downloads from, with which credentials, and where files go. */
export interface HubSettings {
  /** Hugging Face endpoint (or a mirror), no trailing slash. Env `SHIMMY_HF_ENDPOINT`, else `HF_ENDPOINT`, else `https://huggingface.co`. */
  endpoint: string;
  /** Hugging Face token, sent as `Authorization: Bearer` to the endpoint's origin only. Env `HF_TOKEN`, else the file `HF_TOKEN_PATH`, else `$HF_HOME/token` (default `~/.cache/huggingface/token`, where `hf auth login` writes it). */
  token?: string;
  /** Where pulled models go; a discovery root. `$XDG_DATA_HOME/shimmy/models`, default `~/.local/share/shimmy/models`. */
  modelsDir: string;
  /** Where partial downloads wait (outside the models folder, so no half file is ever listed). `$XDG_DATA_HOME/shimmy/downloads`. */
  downloadsDir: string;
}

/** The `shimmy pull` settings from the environment; RangeError for an endpoint that is not an http(s) URL. */
export function hubSettings(env: Record<string, string | undefined> = process.env): HubSettings {
  const home = env.HOME || os.homedir();
  const data = path.join(env.XDG_DATA_HOME || path.join(home, ".local", "share"), "shimmy");
  const endpointVar = env.SHIMMY_HF_ENDPOINT ? "SHIMMY_HF_ENDPOINT" : "HF_ENDPOINT";
  const endpoint = (env[endpointVar] || "https://huggingface.co").trim().replace(/\/+$/, "");
  let url: URL | undefined;
  try {
    url = new URL(endpoint);
  } catch {}
  if (!url || (url.protocol !== "https:" && url.protocol !== "http:")) throw new RangeError(`${endpointVar} must be an http(s) URL, got '${env[endpointVar]}'`);
  const tokenFile = env.HF_TOKEN_PATH || path.join(env.HF_HOME || path.join(env.XDG_CACHE_HOME || path.join(home, ".cache"), "huggingface"), "token");
  let token = env.HF_TOKEN?.trim() || undefined;
  if (!token) {
    try {
      token = readFileSync(tokenFile, "utf8").trim() || undefined;
    } catch {}
  }
  return { endpoint, token, modelsDir: path.join(data, "models"), downloadsDir: path.join(data, "downloads") };
}
