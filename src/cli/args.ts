/** Flags shared by several commands, and the one place they turn into a Config and an Engine. */
import type { ArgsDef } from "citty";
import { GPU_MODES, loadConfig, parseFloatSetting, parseIntSetting, splitDirs, type Config, type GpuMode } from "../config.ts";
import { Engine } from "../engine/engine.ts";
import type { GenerateOptions } from "../engine/types.ts";
import { ModelRegistry } from "../engine/registry.ts";
import { DEMO_MODEL_NAME, ensureDemoModel } from "../engine/demo.ts";
import { UsageError } from "../errors.ts";
import { log, logLevel, setLogLevel } from "../log.ts";
import { parseBind } from "../server/listen.ts";

export const modelArgs = {
  "model-path": { type: "string", description: "Serve this .gguf file (under its file-stem name)", valueHint: "FILE" },
  "model-dirs": { type: "string", description: "Extra directories to scan for *.gguf, separated by , ; or : (repeatable; also SHIMMY_MODEL_PATHS)", valueHint: "DIRS" },
  lora: { type: "string", description: "LoRA adapter FILE[:SCALE] applied to --model-path, else to SHIMMY_BASE_GGUF; repeat or comma-separate for several (also SHIMMY_LORA_GGUF)", valueHint: "FILE" },
} satisfies ArgsDef;

/** Sampling flags shared by `generate` and `chat`; parse them with `samplingFlags`. */
export const samplingArgs = {
  "max-tokens": { type: "string", description: "Tokens to generate at most per answer (default: until the model stops or the context is full)", valueHint: "N" },
  temperature: { type: "string", description: "Sampling temperature, 0 = greedy (default 0.8)", valueHint: "T" },
  "top-p": { type: "string", description: "Nucleus sampling (default 0.95)", valueHint: "P" },
  "top-k": { type: "string", description: "Top-k sampling, 0 = off (default 40)", valueHint: "K" },
  seed: { type: "string", description: "Sampling seed (default random)", valueHint: "N" },
} as const satisfies ArgsDef;

/** The `samplingArgs` values as engine options; a bad value is a UsageError naming the flag. */
export function samplingFlags(args: Record<string, unknown>): Pick<GenerateOptions, "maxTokens" | "temperature" | "topP" | "topK" | "seed"> {
  return {
    maxTokens: intFlag("max-tokens", args["max-tokens"], 1, 1 << 24),
    temperature: numFlag("temperature", args.temperature, 0, 5),
    topP: numFlag("top-p", args["top-p"], 0, 1),
    topK: intFlag("top-k", args["top-k"], 0, 1 << 20),
    seed: intFlag("seed", args.seed, -(2 ** 31), 2 ** 32 - 1),
  };
}

export const runtimeArgs = {
  threads: { type: "string", description: "llama.cpp threads (default: physical cores, 1 for models under 64 MiB; SHIMMY_THREADS)", valueHint: "N" },
  "ctx-size": { type: "string", description: "Context size in tokens, capped by the model's (default 4096; SHIMMY_CTX_SIZE)", valueHint: "N" },
  gpu: { type: "enum", options: [...GPU_MODES], description: "GPU backend: auto | cpu | cuda | vulkan | metal (default auto; SHIMMY_GPU)" },
  "chat-template": { type: "string", description: "Chat template: auto (the GGUF's own) | chatml | llama3 | openchat | FILE.jinja; MODEL=TEMPLATE for one model; comma separated (SHIMMY_CHAT_TEMPLATE)", valueHint: "T" },
  verbose: { type: "boolean", description: "Log llama.cpp and load details to stderr (SHIMMY_LOG=debug)" },
} satisfies ArgsDef;

type Flags = Record<string, unknown>;

/** Every value of a flag that may repeat (`--stop a --stop b`, `--lora=x`); citty keeps only the last. */
export function repeatedFlag(rawArgs: readonly string[], name: string): string[] {
  const out: string[] = [];
  rawArgs.forEach((a, i) => {
    if (a === `--${name}` && rawArgs[i + 1] !== undefined) out.push(rawArgs[i + 1]!);
    else if (a.startsWith(`--${name}=`)) out.push(a.slice(name.length + 3));
  });
  return out;
}

/** Config from env + flags; range errors become UsageError (exit 1). */
export function configFrom(args: Flags, rawArgs: readonly string[] = []): Config {
  const str = (k: string) => (typeof args[k] === "string" ? (args[k] as string) : undefined);
  try {
    const config = loadConfig({
      bind: str("bind"),
      modelPath: str("model-path"),
      loraGguf: repeatedFlag(rawArgs, "lora").join(",") || str("lora"),
      modelDirs: (repeatedFlag(rawArgs, "model-dirs").length ? repeatedFlag(rawArgs, "model-dirs") : [str("model-dirs") ?? ""]).flatMap(splitDirs),
      threads: str("threads"),
      ctxSize: str("ctx-size"),
      gpu: str("gpu") as GpuMode | undefined,
      chatTemplate: str("chat-template"),
      logLevel: args.verbose === true ? "debug" : undefined,
      parallel: str("parallel"),
      maxQueue: str("max-queue"),
      keepAlive: str("keep-alive"),
      maxLoadedModels: str("max-loaded-models"),
      shutdownGrace: str("shutdown-grace"),
      apiKeys: repeatedFlag(rawArgs, "api-key").length ? repeatedFlag(rawArgs, "api-key") : str("api-key") ? [str("api-key")!] : undefined,
      apiKeyFile: str("api-key-file"),
      corsOrigins: str("cors-origins")?.split(",").map((s) => s.trim()).filter(Boolean),
      allowHosts: str("allow-hosts")?.split(",").map((s) => s.trim()).filter(Boolean),
      maxBody: str("max-body"),
      logFormat: str("log-format") as "text" | "json" | undefined,
      logPrompts: args["log-prompts"] === true ? true : undefined,
      mmap: args["no-mmap"] === true || args.mmap === false ? false : args.mmap === true ? true : undefined,
      playground: args["no-playground"] === true || args.playground === false ? false : undefined,
    });
    setLogLevel(config.logLevel);
    if (config.bind !== "auto") parseBind(config.bind);
    if (config.loraGguf && !config.modelPath && !config.baseGguf) {
      if (str("lora")) throw new UsageError("--lora needs a base model: pass --model-path FILE or set SHIMMY_BASE_GGUF");
      log.warn("SHIMMY_LORA_GGUF is set but there is no base model (SHIMMY_BASE_GGUF or --model-path): ignoring it");
    }
    return config;
  } catch (err) {
    throw err instanceof UsageError ? err : new UsageError((err as Error).message);
  }
}

/**
 * The engine for a command. When no model is found anywhere (and SHIMMY_DEMO_MODEL is not 0), the
 * built-in random-weights demo model is generated (once, into the cache dir) and registered.
 */
/**
 * Model load progress on stderr: a redrawn bar on a terminal; otherwise one `loading NAME` line
 * (an info log line; `line: false` drops it, for `shimmy generate`, whose stderr stays empty in scripts).
 */
export function loadProgress(stream: NodeJS.WriteStream = process.stderr, line = true): (model: string, fraction: number) => void {
  const started = new Map<string, number>();
  return (model, fraction) => {
    const first = !started.has(model);
    if (first && fraction >= 1) return; // the closing call after node-llama-cpp already reported 100%
    if (first) started.set(model, performance.now());
    if (!stream.isTTY) {
      if (first && line) log.info(`loading ${model}`);
      if (fraction >= 1) started.delete(model);
      return;
    }
    if (logLevel() === "error") return;
    const width = 30;
    const done = Math.round(Math.min(1, Math.max(0, fraction)) * width);
    stream.write(`\r\x1b[2Kloading ${model} [${"#".repeat(done)}${".".repeat(width - done)}] ${Math.floor(fraction * 100)}%`);
    if (fraction >= 1) {
      stream.write(`\r\x1b[2Kloaded ${model} in ${((performance.now() - started.get(model)!) / 1000).toFixed(1)} s\n`);
      started.delete(model);
    }
  };
}

export async function engineFrom(config: Config, opts: { loadLine?: boolean } = {}): Promise<Engine> {
  const registry = new ModelRegistry(config);
  if ((await registry.list()).length === 0 && config.demoModel) {
    registry.addFile(await ensureDemoModel(config.cacheDir), "demo");
    log.warn(`no model found: using the built-in demo model '${DEMO_MODEL_NAME}' (RANDOM WEIGHTS: its output is gibberish; it is for trying shimmy). Add models with --model-path, SHIMMY_BASE_GGUF or ./models.`);
  }
  return new Engine(registry, { gpu: config.gpu, threads: config.threads, threadsExplicit: config.threadsExplicit, ctxSize: config.ctxSize, chatTemplate: config.chatTemplate, chatTemplates: config.chatTemplates, maxQueue: config.maxQueue, parallel: config.parallel, keepAliveMs: config.keepAliveMs, maxLoadedModels: config.maxLoadedModels, memoryLimit: config.memoryLimit, mmap: config.mmap, fullBatches: config.fullBatches, threadpool: config.threadpool, threadpoolPoll: config.threadpoolPoll, pinThreads: config.pinThreads, directDecode: config.directDecode, syncGreedy: config.syncGreedy, syncDecode: config.syncDecode, gatherMs: config.gatherMs, streamIntervalMs: config.streamIntervalMs, hugepages: config.hugepages, backgroundNice: config.backgroundNice, alignWeights: config.alignWeights, cacheDir: config.cacheDir, runtimeDir: config.runtimeDir, onLoadProgress: loadProgress(process.stderr, opts.loadLine ?? true) });
}

/** Parses an optional integer flag with a range; throws UsageError naming the flag. */
export function intFlag(name: string, raw: unknown, min: number, max: number): number | undefined {
  return asUsage(() => parseIntSetting(`--${name}`, raw as string | undefined, min, max));
}

/** Parses an optional number flag with a range; throws UsageError naming the flag. */
export function numFlag(name: string, raw: unknown, min: number, max: number): number | undefined {
  return asUsage(() => parseFloatSetting(`--${name}`, raw as string | undefined, min, max));
}

function asUsage<T>(parse: () => T): T {
  try {
    return parse();
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}
