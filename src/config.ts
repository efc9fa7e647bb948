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
  /** A LoRA adapter applied to the base model. Env `SHIMMY_LORA_GGUF`. */
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
  /** Most requests that may wait for one model; more get 503. Default 64. Env `SHIMMY_MAX_QUEUE`. */
  maxQueue: number;
  /** Serve a generated random-weights demo model when no model is found. Default true. Env `SHIMMY_DEMO_MODEL=0` disables. */
  demoModel: boolean;
  /** Where shimmy keeps generated files (the demo model). Env `SHIMMY_CACHE_DIR`, else `$XDG_CACHE_HOME/shimmy`, else `~/.cache/shimmy`. */
  cacheDir: string;
  /** Where a single-file executable extracts its native libraries. Env `SHIMMY_RUNTIME_DIR`, else `<cacheDir>/runtime` (the temp dir when that is not writable). */
  runtimeDir?: string;
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
export type ConfigOverrides = Partial<Omit<Config, "threads" | "ctxSize" | "threadsExplicit" | "chatTemplates" | "maxQueue">> & { threads?: string | number; ctxSize?: string | number };

/** Builds the effective config from env and CLI overrides. Throws RangeError on invalid values. */
export function loadConfig(overrides: ConfigOverrides = {}, env: Record<string, string | undefined> = process.env): Config {
  const threads = parseIntSetting("--threads", overrides.threads, 1, 1024) ?? parseIntSetting("SHIMMY_THREADS", env.SHIMMY_THREADS, 1, 1024);
  const envDirs = (env.SHIMMY_MODEL_PATHS ?? "").split(path.delimiter).map((s) => s.trim()).filter(Boolean);
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
    maxQueue: parseIntSetting("SHIMMY_MAX_QUEUE", env.SHIMMY_MAX_QUEUE, 0, 1_000_000) ?? 64,
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
