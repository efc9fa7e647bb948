/**
 * The one door to native code: the only module that imports node-llama-cpp. Loaded lazily by the
 * engine so that `--help`, `--version` and the server layer never load the addon.
 */
import { readFileSync, statSync } from "node:fs";
import os from "node:os";
import {
  ChatMLChatWrapper,
  getLlama,
  getLlamaGpuTypes,
  GgufFileType,
  GgufInsights,
  InsufficientMemoryError,
  JinjaTemplateChatWrapper,
  LlamaChat,
  TokenBias,
  type ChatModelFunctionCall,
  type ChatModelFunctions,
  type BatchItem,
  type LlamaEmbeddingContext,
  type LlamaGrammar,
  Llama3ChatWrapper,
  LlamaCompletion,
  LlamaLogLevel,
  LlamaText,
  readGgufFileInfo,
  resolveChatWrapper,
  TemplateChatWrapper,
  type ChatHistoryItem,
  type ChatWrapper,
  type Llama,
  type LlamaContext,
  type LlamaContextSequence,
  type LlamaModel,
  type Token,
} from "node-llama-cpp";
import { BackendError, BadRequestError, GenerationError, ModelLoadError, OverloadedError, PromptTooLongError, UnsupportedError } from "../errors.ts";
import { log } from "../log.ts";
// node-llama-cpp's JSON grammar lets integers carry an exponent with up to 16 digits
// ("36504E60715" parses to Infinity and fails `"type": "integer"`). Narrow it here, once, for every
// grammar: integers get no exponent and at most 15 digits, fractional numbers an exponent of at most
// 2 digits.
import { GbnfNumber } from "../../node_modules/node-llama-cpp/dist/utils/gbnfJson/terminals/GbnfNumber.js";
import { withLock } from "lifecycle-utils";
import { maximumParallelismStrategy } from "../../node_modules/node-llama-cpp/dist/evaluator/LlamaContext/utils/batchItemsPrioritizationStrategies/maximumParallelismStrategy.js";
import { nativeBuildInfo } from "./runtime.ts";
import { StopMatcher } from "./stop.ts";
import { installThreadpools, threadpoolStats } from "./threadpool.ts";
import { greedyFor, installGreedy, type SamplerConfig } from "./greedy.ts";
import { alignWeightsFor, hugepagesStats, installHugepages, withHugepages, withWeightsAligned } from "./hugepages.ts";
import { BACKGROUND_NICE, configureBackgroundThreads, lowerBackgroundThreads } from "./background.ts";
import { existingStepper, GATHER_MAX_MS, type NativeContext as NativeContextLike, STREAM_INTERVAL_MS, stepperFor } from "./stepper.ts";
import type { BackendInfo, BackendOptions, ChatMessage, FinishReason, GenerateOptions, GenerateResult, LoraAdapter, ModelEntry, ModelMeta, TokenLogprob, ToolCall, ToolDefinition } from "./types.ts";

GbnfNumber.prototype.getGrammar = function (this: { allowFractional: boolean }) {
  // At most 15 digits: every integer stays within Number.MAX_SAFE_INTEGER.
  const num = '"-"? ("0" | [1-9] [0-9]{0,14})';
  return this.allowFractional ? `${num} ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,2})?` : num;
};

const LOG_TAIL = 20;

const gib = (n: number) => `${(n / 1024 ** 3).toFixed(2)} GiB`;

/** Memory the OS can give now: MemAvailable on Linux (page cache counts), else free memory. */
function availableMemory(): number {
  try {
    const m = readFileSync("/proc/meminfo", "utf8").match(/^MemAvailable:\s+(\d+) kB/m);
    if (m) return Number(m[1]) * 1024;
  } catch {}
  return os.freemem();
}
/**
 * Whether a model file is memory-mapped (llama.cpp's default) or read into memory. `auto` reads it
 * when it runs on the CPU backend on Linux and takes at most half the memory available: decoding from
 * mapped file pages measured 15-25% slower on this project's 2-core Linux VM (llama.cpp alone, in C:
 * 65-89 against 82-101 tok/s on the 6-layer bench model, the difference being periodic stalls of 50-200 ms
 * per 64 tokens that read weights never have), and weights in memory are safe against a file
 * truncated on disk (SIGBUS with a mapping). Bigger files, GPU backends (weights live in VRAM) and
 * other systems keep the mapping: no copy of the file in RAM, and faster loads.
 */
export function chooseMmap(setting: boolean | "auto" | undefined, o: { platform: string; cpu: boolean; fileBytes: number; availableBytes: number }): boolean {
  if (setting === true || setting === false) return setting;
  return !(o.platform === "linux" && o.cpu && o.fileBytes <= o.availableBytes / 2);
}

/** Below this size a model runs on 1 thread unless threads were set explicitly. */
const SMALL_MODEL_BYTES = 64 * 1024 * 1024;

/** The slot pool serving each context (its `busy` count is how many sequences are generating). */
const POOLS = new WeakMap<LlamaContext, SlotPool>();

/**
 * Slot truncations waiting for a safe point of their context. node-llama-cpp's dispatch loop holds the
 * context's lock for as long as any sequence keeps queuing tokens, and trimming a slot's cached tokens
 * (`eraseContextTokenRanges`, which LlamaCompletion calls when a new prompt differs from what the slot
 * holds) needs that lock. So a request that reused a slot waited, before evaluating its prompt, until
 * every other generation on the model had finished: with 8 streams, one of them started only when the
 * other 7 were done, and the 8-stream aggregate fell to 0.6-0.7x (traced: 63 steps of 7 tokens, then
 * 63 steps of 1). The trim is done instead at the next point where the loop is between two decode
 * steps (the batch strategy runs there, inside the lock, with no decode in flight); when the loop is
 * idle, under the lock at once.
 */
const TRUNCATIONS = new WeakMap<LlamaContext, Array<() => void>>();

/** Runs (and clears) the truncations waiting for this context. Called only where no decode is in flight. */
function runTruncations(context: LlamaContext): void {
  const list = TRUNCATIONS.get(context);
  if (!list?.length) return;
  for (const run of list.splice(0)) run();
}

/** node-llama-cpp 3.21.1's sequence state that a trim changes (what `_eraseContextTokenRanges` does for one range at the end). */
interface SequenceInternals {
  _sequenceId: number;
  _nextTokenIndex: number;
  _contextTokens: Token[];
  _loadedTokenPredictions: unknown[];
  _checkpoints?: { pruneFromEndToIndex(index: number): void };
  _context: { _ctx: { removeTokenCellsFromSequence(seq: number, start: number, end: number): boolean; getSequenceKvCacheMinPosition(seq: number): number; disposeSequence(seq: number): void } };
}

/**
 * Drops the slot's cached tokens from `keep` on (0: all of them), so that LlamaCompletion finds
 * nothing to erase and never waits for the context lock (see TRUNCATIONS). Leaves anything unusual
 * (checkpointed or SWA caches, token predictions, a failed native removal) to node-llama-cpp's own erase.
 */
async function trimSlot(context: LlamaContext, seq: LlamaContextSequence, keep: number): Promise<void> {
  if (seq.nextTokenIndex <= keep || seq.needsCheckpoints) return;
  let done = false;
  const trim = () => {
    if (done) return;
    done = true;
    const s = seq as unknown as SequenceInternals;
    const end = s._nextTokenIndex;
    if (end <= keep || s._loadedTokenPredictions.length > 0) return;
    if (keep === 0) {
      // What node-llama-cpp does when a whole sequence goes: drop it natively, forget its tokens.
      s._context._ctx.disposeSequence(s._sequenceId);
      s._contextTokens.length = 0;
      s._nextTokenIndex = 0;
      s._checkpoints?.pruneFromEndToIndex(-1);
      return;
    }
    if (keep <= Math.max(0, s._context._ctx.getSequenceKvCacheMinPosition(s._sequenceId))) return;
    if (!s._context._ctx.removeTokenCellsFromSequence(s._sequenceId, keep, end)) return;
    s._contextTokens.splice(keep);
    s._nextTokenIndex = keep;
    s._checkpoints?.pruneFromEndToIndex(keep - 1);
  };
  const list = TRUNCATIONS.get(context) ?? [];
  TRUNCATIONS.set(context, list);
  await new Promise<void>((resolve) => {
    list.push(() => {
      trim();
      resolve();
    });
    // If the dispatch loop ends before its next step, the lock frees and this runs it.
    void withLock([context, "context"], () => runTruncations(context)).catch(() => resolve());
  });
}

/** Empties a slot without waiting for a busy context's lock (`clearHistory` takes the lock even when there is nothing to clear). */
async function clearSlot(context: LlamaContext, seq: LlamaContextSequence): Promise<void> {
  await trimSlot(context, seq, 0);
  if (seq.nextTokenIndex > 0) await seq.clearHistory();
}

/** Most decode steps in a row that may be put off waiting for a generating sequence's token. */
const MAX_DEFERRALS = 8;

/**
 * node-llama-cpp's batch prioritization ("maximumParallelism"), made to wait for every generating
 * sequence. After each decode its dispatch loop looks at the queue at once, when the continuation of
 * one sequence (the last one sampled) has usually not queued its next token yet: with 4 streams every
 * batch held 3 tokens and a 16-token answer took 20 decode steps instead of 15 (traced on 2 cores).
 * While fewer sequences are queued than the slot pool has busy, this returns no items (an empty step:
 * no decode, a few microtasks, in which the late sequence queues), at most MAX_DEFERRALS times in a row.
 */
function fullBatchStrategy(holder: { context?: LlamaContext }) {
  let deferred = 0;
  return ({ items, size }: { items: readonly BatchItem[]; size: number }) => {
    if (holder.context) runTruncations(holder.context);
    // Sequences on shimmy's own decode loop (stepper.ts) never queue here.
    const generating = holder.context ? (POOLS.get(holder.context)?.busy ?? 0) - (existingStepper(holder.context)?.active ?? 0) : 0;
    if (items.length < generating && deferred < MAX_DEFERRALS) {
      deferred++;
      return [];
    }
    deferred = 0;
    return maximumParallelismStrategy({ items: bySequence(holder.context, items), size });
  };
}

/**
 * The batch items in ascending sequence id. With a KV cache per sequence (not unified, the default),
 * llama.cpp puts tokens of several sequences in one ubatch only while their ids ascend by one
 * (`split_equal`, sequential); the queue's order (whoever sampled first) split a step of 8 streams
 * into several ubatches, each a full pass over the weights. Items are built from node-llama-cpp
 * 3.21.1's private `_queuedDecodes` in its order; when that does not line up, the order is kept.
 */
function bySequence(context: LlamaContext | undefined, items: readonly BatchItem[]): readonly BatchItem[] {
  const queue = (context as unknown as { _queuedDecodes?: Array<{ sequenceId: number; tokens: unknown }> } | undefined)?._queuedDecodes;
  if (!queue || queue.length !== items.length || queue.some((q, i) => q.tokens !== items[i]!.tokens)) return items;
  return items
    .map((item, i) => ({ item, seq: queue[i]!.sequenceId }))
    .sort((a, b) => a.seq - b.seq)
    .map((x) => x.item);
}

/** Starts llama.cpp offline (never builds, never downloads). GPU `auto` falls back to CPU. */
export async function openBackend(opts: BackendOptions): Promise<NativeBackend> {
  const recent: string[] = [];
  // llama.cpp's messages go to the debug log; the recent ones explain a failed load.
  const logger = (level: LlamaLogLevel, message: string) => {
    const line = message.trimEnd();
    if (!line) return;
    recent.push(line);
    if (recent.length > LOG_TAIL) recent.shift();
    log.debug(`llama.cpp ${level}: ${line}`);
  };
  const base = { build: "never", skipDownload: true, progressLogs: false, logger, logLevel: LlamaLogLevel.warn, vramPadding: 0 } as const;
  let llama: Llama;
  try {
    if (opts.gpu === "cpu") llama = await getLlama({ ...base, gpu: false });
    else if (opts.gpu === "auto") {
      try {
        llama = await getLlama({ ...base, gpu: "auto" });
      } catch (err) {
        log.warn(`no GPU backend usable (${(err as Error).message}); using CPU`);
        llama = await getLlama({ ...base, gpu: false });
      }
    } else {
      const compiled = nativeBuildInfo().backends;
      if (!compiled.includes(opts.gpu)) throw new BackendError(`this build does not include the ${opts.gpu} backend (it has: ${compiled.join(", ")})`);
      llama = await getLlama({ ...base, gpu: opts.gpu });
    }
  } catch (err) {
    if (err instanceof BackendError) throw err;
    const why = opts.gpu === "cuda" || opts.gpu === "vulkan" || opts.gpu === "metal" ? (await whyNoGpu()).find((w) => w.startsWith(opts.gpu)) : undefined;
    throw new BackendError(`cannot start llama.cpp with --gpu ${opts.gpu}: ${why ?? (err as Error).message}`, { cause: err });
  }
  await installThreadpools(opts.threadpool !== false, opts.threadpoolPoll, llama.gpu, opts.pinThreads ?? "auto");
  const direct = opts.directDecode !== false;
  await installGreedy({ sampling: direct && opts.syncGreedy !== false, decode: direct && opts.syncDecode !== false }, llama.gpu);
  await installHugepages(opts.hugepages !== false, llama.gpu);
  configureBackgroundThreads(opts.backgroundNice ?? BACKGROUND_NICE);
  if (opts.gpu === "auto" && llama.gpu === false) {
    const why = await whyNoGpu();
    if (why.length) log.warn(`GPU: not used (${why.join("; ")}); running on CPU`);
  }
  return new NativeBackend(llama, opts, recent);
}

/** GPU backends this build carries (cuda, vulkan, metal). */
function compiledGpuBackends(): string[] {
  return nativeBuildInfo().backends.filter((b) => b !== "cpu");
}

/** For each GPU backend compiled in but not usable, one reason. Empty when the build has none. */
async function whyNoGpu(): Promise<string[]> {
  const compiled = compiledGpuBackends();
  if (!compiled.length) return [];
  const detected = (await getLlamaGpuTypes("supported").catch(() => [])).filter((g): g is Exclude<typeof g, false> => g !== false);
  return compiled.map((b) =>
    (detected as string[]).includes(b) ? `${b}: driver found but the backend did not start` : `${b}: no ${b === "cuda" ? "CUDA" : b === "vulkan" ? "Vulkan" : "Metal"} driver or device found`,
  );
}

export interface GpuReport {
  /** Backends this build carries. */
  compiled: string[];
  /** GPU backends whose drivers/devices node-llama-cpp detects on this machine. */
  detected: string[];
  /** The backend `--gpu` (default auto) selects: cpu, cuda, vulkan or metal. */
  inUse: string;
  devices: string[];
  vram?: { totalBytes: number; usedBytes: number; freeBytes: number };
  /** Why each GPU backend that is not in use is not used. */
  notes: string[];
}

/** Starts llama.cpp as `opts.gpu` asks and reports what was found and chosen, and why. */
export async function gpuReport(opts: BackendOptions): Promise<GpuReport> {
  const compiled = nativeBuildInfo().backends;
  const detected = ((await getLlamaGpuTypes("supported").catch(() => [])) as Array<string | false>).filter((g): g is string => g !== false);
  const backend = await openBackend(opts);
  try {
    const llama = backend.llama;
    const inUse = llama.gpu === false ? "cpu" : llama.gpu;
    const devices = llama.gpu === false ? [] : await llama.getGpuDeviceNames().catch(() => []);
    const vram = llama.gpu === false ? undefined : await llama.getVramState().then((v) => ({ totalBytes: v.total, usedBytes: v.used, freeBytes: v.free })).catch(() => undefined);
    const notes: string[] = [];
    for (const b of compiled.filter((b) => b !== "cpu" && b !== inUse)) {
      if (!detected.includes(b)) notes.push(`${b}: compiled in, but no ${b} driver or device was found`);
      else if (opts.gpu !== "auto" && opts.gpu !== b) notes.push(`${b}: available, but --gpu ${opts.gpu} was asked for`);
      else notes.push(`${b}: driver found, but llama.cpp did not start with it`);
    }
    if (!compiled.some((b) => b !== "cpu")) notes.push("this build includes no GPU backend (a GPU build carries vulkan, cuda or metal)");
    for (const b of detected.filter((d) => !compiled.includes(d))) notes.push(`${b}: a driver is present, but this build does not include ${b}${b === "cuda" ? " (use a -cuda artifact)" : ""}`);
    if (inUse === "cpu" && opts.gpu === "cpu") notes.push("cpu: chosen by --gpu cpu / SHIMMY_GPU=cpu");
    return { compiled, detected, inUse, devices, vram, notes };
  } finally {
    await backend.close();
  }
}

export class NativeBackend {
  constructor(
    readonly llama: Llama,
    readonly opts: BackendOptions,
    private readonly recentLog: string[],
  ) {}

  info(): BackendInfo {
    return {
      backend: this.llama.gpu === false ? "cpu" : this.llama.gpu,
      threads: this.opts.threads,
      gpuOffloading: this.llama.supportsGpuOffloading,
      threadpool: threadpoolStats().installed ? "persistent" : "per-decode",
      llamaCppRelease: this.llama.llamaCppRelease.release,
    };
  }

  /**
   * Refuses (503) a model whose weights and context, by node-llama-cpp's estimate, need more RAM
   * than is available now (or than `memoryLimit`), instead of letting the machine swap or the
   * process be killed. GPU memory is node-llama-cpp's own check (its InsufficientMemoryError).
   */
  private async checkMemory(entry: ModelEntry, contextSize: number, sequences: number): Promise<void> {
    if (this.llama.gpu !== false && this.opts.memoryLimit === undefined) return;
    const info = await readGgufFileInfo(entry.path, { logWarnings: false, sourceType: "filesystem" });
    const insights = await GgufInsights.from(info, this.llama);
    let model: Awaited<ReturnType<GgufInsights["estimateModelResourceRequirementsV2"]>>;
    let ctx: Awaited<ReturnType<GgufInsights["estimateContextResourceRequirementsV2"]>>;
    try {
      model = await insights.estimateModelResourceRequirementsV2({ gpuLayers: 0 });
      ctx = await insights.estimateContextResourceRequirementsV2({ contextSize, modelGpuLayers: 0, sequences });
    } finally {
      // The estimates load a simulated model, which keeps llama.cpp from being disposed until the
      // garbage collector finalizes it: Llama.dispose() (shutdown, an engine closed) then waited
      // seconds, or indefinitely (seen as 8 s, and as 60 s test timeouts). Released here at once
      // (node-llama-cpp 3.21.1's internal simulator session).
      await (insights as unknown as { _simulationSession?: { dispose(): Promise<void> } })._simulationSession?.dispose().catch(() => {});
    }
    const need = model.cpuRam + ctx.cpuRam;
    const available = this.opts.memoryLimit ?? availableMemory();
    if (need > available)
      throw new OverloadedError(`not enough memory to load ${entry.name}: it needs about ${gib(need)} (weights ${gib(model.cpuRam)}, context ${gib(ctx.cpuRam)} for ${sequences} slots of ${contextSize} tokens) and ${gib(available)} is ${this.opts.memoryLimit === undefined ? "available" : "allowed (SHIMMY_MEMORY_LIMIT)"}; unload a model, lower --parallel or --ctx-size`);
  }

  /** Validates the file's header, checks memory, loads weights, LoRA and one context of `parallel` slots. Throws ModelLoadError or OverloadedError. */
  async loadModel(entry: ModelEntry): Promise<NativeModel> {
    await validateGguf(entry.path);
    for (const l of entry.loras ?? []) await validateGguf(l.path, true);
    this.recentLog.length = 0;
    const sequences = this.opts.parallel ?? 4;
    const trainContext = ((await readGgufFileInfo(entry.path, { readTensorInfo: false, logWarnings: false, sourceType: "filesystem" })).architectureMetadata as { context_length?: number }).context_length;
    const contextSize = Math.max(256, Math.min(this.opts.ctxSize, trainContext || this.opts.ctxSize));
    await this.checkMemory(entry, contextSize, sequences);
    let model: LlamaModel | undefined;
    try {
      const progress = this.opts.onLoadProgress;
      const useMmap = chooseMmap(this.opts.mmap, { platform: process.platform, cpu: this.llama.gpu === false, fileBytes: (entry.shards ?? [entry.path]).reduce((n, f) => n + statSync(f).size, 0), availableBytes: availableMemory() });
      // Huge pages only for a model read into memory (see withHugepages), and its weights placed 32
      // bytes past a 64-byte boundary (see alignWeightsFor).
      const shiftedBefore = hugepagesStats().shifted;
      model = await withHugepages(!useMmap, () =>
        withWeightsAligned(!useMmap && alignWeightsFor(this.opts.alignWeights), () => this.llama.loadModel({ modelPath: entry.path, gpuLayers: this.llama.gpu === false ? 0 : "auto", useMmap, ...(progress ? { onLoadProgress: (p: number) => progress(entry.name, p) } : {}) })),
      );
      // The count is process-wide: a model loading at the same time may be credited too (debug log and tests only).
      const weightsAligned = hugepagesStats().shifted > shiftedBefore;
      progress?.(entry.name, 1);
      const threads = !this.opts.threadsExplicit && model.size < SMALL_MODEL_BYTES ? 1 : this.opts.threads;
      const loaded = model;
      const makeContext = async (loras: LoraAdapter[]) => {
        const holder: { context?: LlamaContext } = {};
        holder.context = await withHugepages(!useMmap, () => loaded.createContext({
          contextSize,
          sequences,
          threads,
          // llama.cpp's own default (llama-server, llama-cli): flash attention wherever the backend
          // supports it. node-llama-cpp defaults to off; on 2 CPU cores, on the 6-layer bench model,
          // llama-batched-bench measured it 7% faster on prompts and 1-4% on 4-stream decoding.
          flashAttention: "auto",
          batching: { itemPrioritizationStrategy: this.opts.fullBatches === false ? "maximumParallelism" : fullBatchStrategy(holder) },
          ...(loras.length ? { lora: { adapters: loras.map((l) => ({ filePath: l.path, scale: l.scale })) } } : {}),
        }));
        return holder.context;
      };
      const context = await makeContext(entry.loras ?? []);
      // Vulkan decodes through node-llama-cpp's dispatcher, which serialises decodes across contexts (a Vulkan crash workaround).
      const direct = this.opts.directDecode !== false && this.llama.gpu !== "vulkan";
      const native = new NativeModel(model, context, entry.loras ?? [], makeContext, this.opts.chatTemplates?.[entry.name] ?? this.opts.chatTemplate, threads, this.opts.maxQueue, direct, useMmap, this.opts.syncGreedy !== false, this.opts.syncDecode ?? "auto", this.opts.gatherMs ?? GATHER_MAX_MS, this.opts.streamIntervalMs ?? STREAM_INTERVAL_MS);
      native.weightsAligned = weightsAligned;
      return native;
    } catch (err) {
      await model?.dispose().catch(() => {});
      if (err instanceof InsufficientMemoryError) throw new OverloadedError(`not enough memory to load ${entry.name}: ${err.message}; unload a model, lower --parallel or --ctx-size`, { cause: err });
      const detail = this.recentLog.filter((l) => /error|fail|invalid|unable|cannot/i.test(l)).slice(-3).join("; ");
      throw new ModelLoadError(
        `failed to load ${entry.loras?.length ? `${entry.path} with LoRA ${entry.loras.map((l) => l.path).join(", ")}` : entry.path}: ${(err as Error).message}${detail ? ` (llama.cpp: ${detail})` : ""}`,
        { cause: err },
      );
    }
  }

  async close(): Promise<void> {
    await this.llama.dispose();
  }
}

/** Bytes per block and elements per block of ggml tensor types (for the truncation check). */
const GGML_BLOCKS: Record<number, [bytes: number, elements: number]> = {
  0: [4, 1], 1: [2, 1], 2: [18, 32], 3: [20, 32], 6: [22, 32], 7: [24, 32], 8: [34, 32], 9: [36, 32],
  10: [84, 256], 11: [110, 256], 12: [144, 256], 13: [176, 256], 14: [210, 256], 15: [292, 256],
  16: [66, 256], 17: [74, 256], 18: [98, 256], 19: [50, 256], 20: [18, 32], 21: [110, 256], 22: [82, 256],
  23: [136, 256], 24: [1, 1], 25: [2, 1], 26: [4, 1], 27: [8, 1], 28: [8, 1], 29: [56, 256], 30: [2, 1],
  34: [54, 256], 35: [66, 256], 39: [17, 32],
};

/** Reads a GGUF header (all parts of a split model) and says why it is unusable, if it is. */
async function readHeader(file: string) {
  let info;
  try {
    info = await readGgufFileInfo(file, { logWarnings: false, sourceType: "filesystem" });
  } catch (err) {
    throw new ModelLoadError(`${file} is not a readable GGUF file: ${(err as Error).message}`, { cause: err });
  }
  // Every tensor must end inside its file: a cut download fails here, not inside llama.cpp.
  const parts = new Map<number, number>();
  const sizeOfPart = (part: number) => {
    if (!parts.has(part)) {
      const name = part <= 1 ? file : file.replace(/-\d{5}(-of-\d{5}\.gguf)$/i, `-${String(part).padStart(5, "0")}$1`);
      parts.set(part, statSync(name).size);
    }
    return parts.get(part)!;
  };
  for (const t of info.fullTensorInfo ?? info.tensorInfo ?? []) {
    const block = GGML_BLOCKS[t.ggmlType];
    if (!block) continue;
    const elements = t.dimensions.reduce<number>((n, d) => n * Number(d), 1);
    const end = Number(t.fileOffset) + Math.ceil(elements / block[1]) * block[0];
    const size = sizeOfPart(t.filePart);
    if (end > size) throw new ModelLoadError(`${file} is truncated: tensor ${t.name} ends at byte ${end} but the file has ${size} bytes (an incomplete download?)`);
  }
  return info;
}

/** Header facts of a model file, without loading weights. Throws ModelLoadError naming the problem. */
export async function readModelMeta(file: string): Promise<ModelMeta> {
  const info = await readHeader(file);
  checkHeader(file, info);
  const md = info.metadata as Record<string, any>;
  const arch: string = md.general?.architecture;
  const fileTypeId = md.general?.file_type;
  const fileType = typeof fileTypeId === "number" ? (GgufFileType[fileTypeId]?.replace(/^(MOSTLY|ALL)_/, "") ?? String(fileTypeId)) : "unknown";
  const tensors = info.fullTensorInfo ?? info.tensorInfo ?? [];
  return {
    architecture: arch,
    parameters: tensors.reduce((n, t) => n + t.dimensions.reduce<number>((m, d) => m * Number(d), 1), 0),
    fileType,
    ...(md[arch]?.context_length ? { contextLength: Number(md[arch].context_length) } : {}),
    chatTemplate: typeof md.tokenizer?.chat_template === "string",
    adapter: md.general?.type === "adapter",
    sizeBytes: statSync(file).size,
  };
}

/**
 * A model's GGUF metadata, flattened to dotted keys (`llama.context_length`) as Ollama's
 * `model_info` shows it; the tokenizer's vocabulary arrays are left out (they are megabytes).
 */
export async function readModelMetadata(file: string): Promise<{ metadata: Record<string, unknown>; chatTemplate?: string }> {
  const info = await readHeader(file);
  const out: Record<string, unknown> = {};
  const walk = (o: Record<string, unknown>, prefix: string) => {
    for (const [k, v] of Object.entries(o)) {
      const key = prefix ? `${prefix}.${k}` : k;
      if (key === "tokenizer.chat_template") continue;
      if (Array.isArray(v)) out[key] = v.length > 64 ? null : v.map((x) => (typeof x === "bigint" ? Number(x) : x));
      else if (v && typeof v === "object") walk(v as Record<string, unknown>, key);
      else out[key] = typeof v === "bigint" ? Number(v) : v;
    }
  };
  walk(info.metadata as unknown as Record<string, unknown>, "");
  const template = (info.metadata as { tokenizer?: { chat_template?: unknown } }).tokenizer?.chat_template;
  return { metadata: out, ...(typeof template === "string" ? { chatTemplate: template } : {}) };
}

/**
 * Rejects files that would abort the whole process inside llama.cpp instead of failing cleanly:
 * a non-GGUF or truncated file, a missing attention head count, a SentencePiece vocabulary without
 * its byte tokens.
 */
async function validateGguf(file: string, adapter = false): Promise<void> {
  const info = await readHeader(file);
  checkHeader(file, info, adapter ? "adapter" : "model");
}

/** `expect`: what the caller is about to load; undefined accepts either (discovery). */
function checkHeader(file: string, info: Awaited<ReturnType<typeof readHeader>>, expect?: "model" | "adapter"): void {
  const md = info.metadata as Record<string, any>;
  const arch: string | undefined = md.general?.architecture;
  if (!arch) throw new ModelLoadError(`${file} has no general.architecture`);
  const isAdapter = md.general?.type === "adapter";
  if (expect === "adapter" && !isAdapter) throw new ModelLoadError(`${file} is not a LoRA adapter (general.type is '${md.general?.type}')`);
  if (expect === "model" && isAdapter) throw new ModelLoadError(`${file} is a LoRA adapter, not a model: apply it with --lora`);
  if (isAdapter) return;
  const archMd = md[arch] ?? {};
  if (archMd.attention && archMd.attention.head_count == null) throw new ModelLoadError(`${file} lacks ${arch}.attention.head_count`);
  if (arch === "llama" && archMd.attention == null) throw new ModelLoadError(`${file} lacks llama.attention.head_count`);
  const tok = md.tokenizer?.ggml;
  if (tok?.model === "llama") {
    const tokens: string[] = tok.tokens ?? [];
    const have = new Set(tokens);
    for (let b = 0; b < 256; b++) {
      const name = `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`;
      if (!have.has(name)) throw new ModelLoadError(`${file}: SentencePiece vocabulary lacks byte token ${name}`);
    }
  }
}

const OPENCHAT = () =>
  new TemplateChatWrapper({
    template: "{{systemPrompt}}{{history}}GPT4 Correct Assistant: {{completion}}<|end_of_turn|>",
    historyTemplate: {
      system: "{{message}}<|end_of_turn|>",
      user: "GPT4 Correct User: {{message}}<|end_of_turn|>",
      model: "GPT4 Correct Assistant: {{message}}<|end_of_turn|>",
    },
  });

/** Length of the common prefix of two token lists. */
function commonPrefix(a: readonly Token[], b: readonly Token[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

/**
 * The context's sequences (slots) and a FIFO of requests waiting for one, bounded by `maxQueue`.
 * A free slot is chosen by the longest cached prefix of the request's tokens (prompt cache).
 */
class SlotPool {
  private readonly free: LlamaContextSequence[] = [];
  /** Creation order of each slot (node-llama-cpp hands out sequence ids in that order). */
  private readonly order = new Map<LlamaContextSequence, number>();
  private readonly waiters: Array<(s: LlamaContextSequence) => void> = [];
  private retired: (() => void) | undefined;
  readonly size: number;
  constructor(
    readonly context: LlamaContext,
    readonly loras: LoraAdapter[],
    private readonly maxQueue: number,
  ) {
    for (let i = 0; i < context.totalSequences; i++) {
      const seq = context.getSequence();
      this.order.set(seq, i);
      this.free.push(seq);
    }
    this.size = this.free.length;
    POOLS.set(context, this);
  }
  get busy(): number {
    return this.size - this.free.length;
  }
  get queued(): number {
    return this.waiters.length;
  }
  /** Resolves with a free slot (preferring the one that caches most of `prefer`); rejects with the signal's reason if aborted while waiting, or OverloadedError when the queue is full. */
  acquire(signal?: AbortSignal, prefer?: readonly Token[]): Promise<LlamaContextSequence> {
    if (this.free.length) {
      // Longest cached prefix first; on a tie the lowest sequence id, so busy sequences stay
      // consecutive and llama.cpp decodes their tokens in one ubatch (see fullBatchStrategy).
      let best = 0;
      let bestLen = -1;
      this.free.forEach((seq, i) => {
        const len = prefer ? commonPrefix(seq.contextTokens, prefer) : 0;
        if (len > bestLen || (len === bestLen && this.order.get(seq)! < this.order.get(this.free[best]!)!)) [best, bestLen] = [i, len];
      });
      return Promise.resolve(this.free.splice(best, 1)[0]!);
    }
    if (this.waiters.length >= this.maxQueue) return Promise.reject(new OverloadedError(`server overloaded: all ${this.size} slots are busy and ${this.waiters.length} requests are waiting for this model; retry later`));
    return new Promise((resolve, reject) => {
      const waiter = (seq: LlamaContextSequence) => {
        signal?.removeEventListener("abort", onAbort);
        resolve(seq);
      };
      const onAbort = () => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(signal!.reason);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.waiters.push(waiter);
    });
  }
  release(s: LlamaContextSequence): void {
    const w = this.waiters.shift();
    if (w) w(s);
    else this.free.push(s);
    if (this.retired && this.busy === 0 && this.waiters.length === 0) this.retired();
  }
  /** Resolves once every slot is free and nobody waits (then the context can be disposed). */
  retire(): Promise<void> {
    return new Promise((resolve) => {
      this.retired = resolve;
      if (this.busy === 0 && this.waiters.length === 0) resolve();
    });
  }
}

let callCounter = 0;
/** An OpenAI-style tool call id. */
function newCallId(): string {
  return `call_${Date.now().toString(36)}${(callCounter++).toString(36)}${Math.random().toString(36).slice(2, 8)}`;
}

/** JSON schemas from clients may carry keywords the grammar compiler does not know: keep what it understands. */
function toGbnfSchema(schema: unknown): any {
  if (schema === null || typeof schema !== "object") return schema;
  if (Array.isArray(schema)) return schema.map(toGbnfSchema);
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(schema as Record<string, unknown>)) {
    if (k === "$schema" || k === "title" || k === "examples" || k === "default" || k === "strict") continue;
    out[k] = k === "properties" || k === "$defs" ? Object.fromEntries(Object.entries(v as object).map(([pk, pv]) => [pk, toGbnfSchema(pv)])) : toGbnfSchema(v);
  }
  if (out.type === "object" && out.properties === undefined && out.additionalProperties === undefined) out.additionalProperties = true;
  return out;
}

type Emit = (text: string, logprobs?: TokenLogprob[]) => void;

/** Timing bookkeeping of one generation. */
class Clock {
  tStart = performance.now();
  tFirst: number | undefined;
  generated = 0;
  cached = 0;
  constructor(
    readonly tCall: number,
    readonly tReady: number,
    readonly promptTokens: number,
  ) {}
  onTokens(n: number) {
    this.tFirst ??= performance.now();
    this.generated += n;
  }
  result(text: string, finishReason: FinishReason, toolCalls?: ToolCall[], logprobs?: TokenLogprob[]): GenerateResult {
    const tEnd = performance.now();
    const promptMs = (this.tFirst ?? tEnd) - this.tStart;
    const generateMs = this.tFirst === undefined ? 0 : tEnd - this.tFirst;
    return {
      text,
      finishReason,
      ...(toolCalls?.length ? { toolCalls } : {}),
      ...(logprobs ? { logprobs } : {}),
      timings: {
        promptTokens: this.promptTokens,
        cachedTokens: this.cached,
        promptMs,
        promptTokensPerSecond: promptMs > 0 ? (this.promptTokens * 1000) / promptMs : 0,
        generatedTokens: this.generated,
        generateMs,
        tokensPerSecond: generateMs > 0 ? ((this.generated - 1) * 1000) / generateMs : 0,
        ttftMs: (this.tFirst ?? tEnd) - this.tCall,
        queueMs: this.tStart - this.tReady,
        totalMs: tEnd - this.tCall,
      },
    };
  }
}

/**
 * The plumbing of one generation: an abort controller fed by the caller's signal and by stop
 * sequences, the stop matcher, and the text emitted so far.
 */
class Run {
  readonly controller = new AbortController();
  readonly matcher: StopMatcher;
  private readonly onAbort: () => void;
  stopHit = false;
  text = "";
  constructor(
    private readonly signal: AbortSignal | undefined,
    stops: string[] | undefined,
    private readonly onText: Emit,
  ) {
    this.matcher = new StopMatcher(stops ?? []);
    this.onAbort = () => this.controller.abort(signal?.reason);
    signal?.addEventListener("abort", this.onAbort, { once: true });
  }
  get aborted(): boolean {
    return this.signal?.aborted ?? false;
  }
  private emit(piece: string): void {
    if (!piece) return;
    this.text += piece;
    this.onText(piece);
  }
  /** Feeds generated text through the stop matcher; a stop sequence ends the generation. */
  readonly chunk = (chunk: string): void => {
    if (this.stopHit) return;
    const { emit, stopped } = this.matcher.push(chunk);
    this.emit(emit);
    if (stopped) {
      this.stopHit = true;
      this.controller.abort(new Error("stop sequence"));
    }
  };
  /** Emits text held back for a possible stop sequence (generation ended another way). */
  flush(): void {
    this.emit(this.matcher.flush());
  }
  dispose(): void {
    this.signal?.removeEventListener("abort", this.onAbort);
  }
}

export class NativeModel {
  /** The weights were read into memory 32 bytes past a 64-byte boundary (see alignWeightsFor in hugepages.ts). */
  weightsAligned = false;
  /** The slots new requests go to; a LoRA swap replaces it (the old one serves what it started). */
  private pool: SlotPool;
  private readonly retiring = new Set<SlotPool>();
  private autoWrapper: ChatWrapper | undefined;
  private readonly jinjaWrappers = new Map<string, ChatWrapper>();
  private embedding: Promise<LlamaEmbeddingContext> | undefined;

  constructor(
    private readonly model: LlamaModel,
    context: LlamaContext,
    loras: LoraAdapter[],
    /** Creates another context of the same shape with other adapters (LoRA hot swap). */
    private readonly makeContext: (loras: LoraAdapter[]) => Promise<LlamaContext>,
    /** Built-in template name or Jinja file path used when a request names none. */
    private readonly defaultTemplate: string,
    /** llama.cpp threads this model's context uses. */
    readonly threads: number,
    private readonly maxQueue = 64,
    /** Plain generations run on shimmy's decode loop (src/engine/stepper.ts) instead of LlamaCompletion. */
    private readonly directDecode = true,
    /** The weights are memory-mapped from the file (else read into memory; see chooseMmap). */
    readonly mapped = true,
    /** Greedy requests on the decode loop are sampled synchronously where greedy.ts is installed. */
    private readonly syncGreedy = true,
    /** Generation steps on the JavaScript thread (stepper.ts's syncStep): true, false or "auto". */
    private readonly syncDecode: boolean | "auto" = "auto",
    private readonly gatherMs: number = GATHER_MAX_MS,
    /** Longest synchronous generation steps keep the event loop waiting (ms; stepper.ts's STREAM_INTERVAL_MS). */
    private readonly streamIntervalMs: number = STREAM_INTERVAL_MS,
  ) {
    this.pool = new SlotPool(context, loras, maxQueue);
  }

  /** Concurrent generations this model serves. */
  get slots(): number {
    return this.pool.size;
  }

  /** Slots generating now (all contexts). */
  get busy(): number {
    return this.pool.busy + [...this.retiring].reduce((n, p) => n + p.busy, 0);
  }

  /** Requests waiting for a slot. */
  get queued(): number {
    return this.pool.queued + [...this.retiring].reduce((n, p) => n + p.queued, 0);
  }

  /** Bytes of the weights in memory (node-llama-cpp's figure). */
  get sizeBytes(): number {
    return this.model.size;
  }

  /** Bytes of the weights offloaded to the GPU: the offloaded layers' share of the size (0 on CPU). */
  get vramBytes(): number {
    const total = this.model.fileInsights.totalLayers;
    return total > 0 ? Math.round((this.model.size * Math.min(this.model.gpuLayers, total)) / total) : 0;
  }

  /** Adapters new requests get. */
  get loras(): LoraAdapter[] {
    return this.pool.loras;
  }

  /**
   * Applies other LoRA adapters (none = the bare model) without a restart: a new context takes new
   * requests while the old one finishes the generations it started, then is disposed.
   */
  async setLora(loras: LoraAdapter[]): Promise<void> {
    for (const l of loras) await validateGguf(l.path, true);
    let context: LlamaContext;
    try {
      context = await this.makeContext(loras);
    } catch (err) {
      throw new ModelLoadError(`cannot apply LoRA ${loras.map((l) => l.path).join(", ")}: ${(err as Error).message}`, { cause: err });
    }
    const old = this.pool;
    this.pool = new SlotPool(context, loras, this.maxQueue);
    this.retiring.add(old);
    void old.retire().then(async () => {
      this.retiring.delete(old);
      await old.context.dispose().catch(() => {});
    });
  }


  /** Whether LlamaCompletion puts a BOS token before the prompt. */
  private get prependsBos(): boolean {
    return this.model.tokens.bos != null && this.model.tokens.shouldPrependBosToken;
  }

  get contextSize(): number {
    return this.pool.context.contextSize;
  }

  get trainContextSize(): number {
    return this.model.trainContextSize;
  }

  private chatWrapper(name: string): ChatWrapper {
    switch (name) {
      case "chatml":
        return new ChatMLChatWrapper();
      case "llama3":
        return new Llama3ChatWrapper();
      case "openchat":
        return OPENCHAT();
      case "auto":
        return (this.autoWrapper ??= resolveChatWrapper(this.model));
      default: {
        // A Jinja template file (validated when the setting was read).
        let w = this.jinjaWrappers.get(name);
        if (!w) {
          w = new JinjaTemplateChatWrapper({ template: readFileSync(name, "utf8"), tokenizer: this.model.tokenizer });
          this.jinjaWrappers.set(name, w);
        }
        return w;
      }
    }
  }

  /** Chat messages as node-llama-cpp history: a tool call and its result become one functionCall item. */
  private history(opts: GenerateOptions, extraSystem?: string): ChatHistoryItem[] {
    const messages: ChatMessage[] = opts.messages?.length ? [...opts.messages] : [{ role: "user", content: opts.prompt ?? "" }];
    if (opts.system !== undefined && messages[0]?.role !== "system") messages.unshift({ role: "system", content: opts.system });
    if (extraSystem) {
      if (messages[0]?.role === "system") messages[0] = { ...messages[0], content: `${messages[0].content}\n\n${extraSystem}` };
      else messages.unshift({ role: "system", content: extraSystem });
    }
    const results = new Map(messages.filter((m) => m.role === "tool" && m.toolCallId).map((m) => [m.toolCallId!, m.content]));
    const history: ChatHistoryItem[] = [];
    for (const m of messages) {
      if (m.role === "system") history.push({ type: "system", text: m.content });
      else if (m.role === "user") history.push({ type: "user", text: m.content });
      else if (m.role === "assistant") {
        const response: Array<string | ChatModelFunctionCall> = m.content ? [m.content] : [];
        for (const c of m.toolCalls ?? []) {
          let params: unknown = c.arguments;
          try {
            params = JSON.parse(c.arguments);
          } catch {}
          response.push({ type: "functionCall", name: c.name, params, result: results.get(c.id) ?? "" });
        }
        history.push({ type: "model", response });
      } else if (!m.toolCallId || !results.has(m.toolCallId) || !messages.some((a) => a.toolCalls?.some((c) => c.id === m.toolCallId))) {
        // A tool result without its call in the history: show it to the model as user text.
        history.push({ type: "user", text: `Tool result${m.toolCallId ? ` (${m.toolCallId})` : ""}: ${m.content}` });
      }
    }
    if (history.at(-1)?.type !== "model") history.push({ type: "model", response: [] });
    return history;
  }

  /** Prompt tokens without BOS (the completion prepends it), plus the template's stop triggers. */
  private renderPrompt(opts: GenerateOptions, extraSystem?: string): { tokens: Token[]; triggers: LlamaText[] } {
    const tokenizer = this.model.tokenizer;
    if (!opts.messages?.length && opts.system === undefined && !extraSystem) {
      return { tokens: tokenizer(opts.prompt ?? "", false, "trimLeadingSpace"), triggers: [] };
    }
    const state = this.chatWrapper(opts.chatTemplate ?? this.defaultTemplate).generateContextState({ chatHistory: this.history(opts, extraSystem) });
    let tokens = state.contextText.tokenize(tokenizer);
    const bos = this.prependsBos ? this.model.tokens.bos : null;
    while (bos != null && tokens[0] === bos) tokens = tokens.slice(1);
    return { tokens, triggers: state.stopGenerationTriggers };
  }

  /** Tokens the prompt of `opts` takes (BOS and tool definitions included), without generating. */
  countPromptTokens(opts: GenerateOptions): number {
    const tools = opts.tools?.length && opts.toolChoice !== "none" ? opts.tools : undefined;
    if (!tools) return this.renderPrompt(opts).tokens.length + (this.prependsBos ? 1 : 0);
    const functions: ChatModelFunctions = Object.fromEntries(tools.map((t) => [t.name, { description: t.description, params: t.parameters ? toGbnfSchema(t.parameters) : undefined }]));
    const wrapper = this.chatWrapper(opts.chatTemplate ?? this.defaultTemplate);
    const state = wrapper.generateContextState({ chatHistory: wrapper.addAvailableFunctionsSystemMessageToHistory(this.history(opts), functions, { documentParams: true }), availableFunctions: functions, documentFunctionParams: true });
    return state.contextText.tokenize(this.model.tokenizer).length;
  }

  private promptTokensOf(tokens: Token[]): number {
    const n = tokens.length + (this.prependsBos ? 1 : 0);
    if (n >= this.contextSize) throw new PromptTooLongError(n, this.contextSize);
    return n;
  }

  private samplingOptions(opts: GenerateOptions) {
    const penalized = [opts.repeatPenalty, opts.frequencyPenalty, opts.presencePenalty].some((v) => v !== undefined && v !== 0 && v !== 1) || (opts.frequencyPenalty ?? 0) !== 0 || (opts.presencePenalty ?? 0) !== 0;
    let tokenBias: TokenBias | undefined;
    if (opts.logitBias && Object.keys(opts.logitBias).length) {
      tokenBias = new TokenBias(this.model.tokenizer);
      const vocab = this.vocabularySize || Number.MAX_SAFE_INTEGER;
      for (const [id, bias] of Object.entries(opts.logitBias)) {
        const token = Number(id);
        if (!Number.isInteger(token) || token < 0 || token >= vocab) throw new BadRequestError(`logit_bias: ${id} is not a token id of this model (0 to ${vocab - 1})`, { param: "logit_bias" });
        tokenBias.set(token as Token, bias <= -100 ? "never" : { logit: bias });
      }
    }
    return {
      temperature: opts.temperature ?? 0.8,
      topK: opts.topK ?? 40,
      topP: opts.topP ?? 0.95,
      minP: opts.minP ?? 0.05,
      // A negative seed (llama.cpp's -1) means random.
      seed: opts.seed !== undefined && opts.seed >= 0 ? opts.seed : undefined,
      tokenBias,
      repeatPenalty: penalized
        ? { penalty: opts.repeatPenalty ?? 1, frequencyPenalty: opts.frequencyPenalty || undefined, presencePenalty: opts.presencePenalty || undefined, lastTokens: 64 }
        : (false as const),
    };
  }

  private async grammarFor(format: GenerateOptions["responseFormat"], llama: Llama): Promise<LlamaGrammar | undefined> {
    if (!format || format.type === "text") return undefined;
    if (format.type === "json_object") return llama.getGrammarFor("json");
    try {
      return await llama.createGrammarForJsonSchema(toGbnfSchema(format.schema));
    } catch (err) {
      throw new UnsupportedError(`response_format json_schema cannot be enforced: ${(err as Error).message}`, { param: "response_format" });
    }
  }

  /** Runs `work` on a free slot (the one caching most of `prefer`); an abort while waiting resolves with `onAbortWhileQueued()`. */
  private async onSlot<T>(signal: AbortSignal | undefined, onAbortWhileQueued: () => T, work: (seq: LlamaContextSequence) => Promise<T>, prefer?: readonly Token[]): Promise<T> {
    const pool = this.pool;
    let seq: LlamaContextSequence;
    try {
      seq = await pool.acquire(signal, prefer);
    } catch (err) {
      if (signal?.aborted) return onAbortWhileQueued();
      throw err;
    }
    try {
      return await work(seq);
    } finally {
      pool.release(seq);
    }
  }

  /**
   * Generates on a free slot (waits FIFO for one), calling `onText` with each safe piece of text:
   * stop sequences are held back until ruled out and never emitted. Resolves when generation ends,
   * including by abort (finish reason `abort`). Throws PromptTooLongError, UnsupportedError or
   * OverloadedError before any text. With tools, the result may carry `toolCalls`.
   * `tCall` is when the caller received the request (TTFT counts from it, model load included);
   * `tReady` is when the model was ready (queue time counts from it).
   */
  async generate(opts: GenerateOptions, onText: Emit, tCall = performance.now(), tReady = tCall): Promise<GenerateResult> {
    const tools = opts.toolChoice === "none" ? [] : (opts.tools ?? []);
    if (tools.length && opts.responseFormat && opts.responseFormat.type !== "text") throw new UnsupportedError("response_format cannot be combined with tools", { param: "response_format" });
    if (tools.length && (opts.toolChoice === "required" || typeof opts.toolChoice === "object")) return this.generateForcedToolCall(opts, tools, onText, tCall, tReady);
    if (tools.length) return this.generateWithFunctions(opts, tools, onText, tCall, tReady);
    if (opts.logprobs !== undefined) {
      if (opts.responseFormat && opts.responseFormat.type !== "text") throw new UnsupportedError("logprobs cannot be combined with response_format", { param: "logprobs" });
      return this.generateWithLogprobs(opts, onText, tCall, tReady);
    }
    return this.generateCompletion(opts, onText, tCall, tReady);
  }

  /**
   * Generation that reports token probabilities: the sequence is evaluated token by token with
   * node-llama-cpp's `evaluateWithMetadata`, which returns the distribution the token was sampled
   * from (after the sampling options). Text is decoded incrementally (an incomplete UTF-8 character
   * waits for its next token); each text piece carries the log probabilities of the tokens it ends.
   */
  private async generateWithLogprobs(opts: GenerateOptions, onText: Emit, tCall: number, tReady: number): Promise<GenerateResult> {
    const { tokens, triggers } = this.renderPrompt(opts);
    const promptTokens = this.promptTokensOf(tokens);
    const room = this.contextSize - promptTokens;
    const maxTokens = opts.maxTokens === undefined ? room : Math.min(opts.maxTokens, room);
    const sampling = this.samplingOptions(opts);
    const top = Math.max(0, Math.min(20, opts.logprobs ?? 0));
    const { stopTokens, markers } = this.splitTriggers(triggers);
    const textStops = [...(opts.stop ?? []), ...markers];
    const input: Token[] = this.prependsBos ? [this.model.tokens.bos!, ...tokens] : tokens;
    const clock = new Clock(tCall, tReady, promptTokens);
    const enc = new TextEncoder();
    const entry = (t: Token, p: number, prev: Token[]) => {
      const piece = this.model.detokenize([t], false, prev.slice(-8));
      return { token: piece, logprob: p > 0 ? Math.log(p) : -9999, bytes: [...enc.encode(piece)] };
    };
    return this.onSlot(opts.signal, () => clock.result("", "abort", undefined, []), async (seq) => {
      clock.tStart = performance.now();
      const matcher = new StopMatcher(textStops);
      const generated: Token[] = [];
      const logprobs: TokenLogprob[] = [];
      let pendingLogprobs: TokenLogprob[] = [];
      let decoded = "";
      let text = "";
      let finish: FinishReason = "length";
      const emit = (piece: string) => {
        if (!piece && !pendingLogprobs.length) return;
        text += piece;
        onText(piece, pendingLogprobs);
        pendingLogprobs = [];
      };
      try {
        await clearSlot(this.pool.context, seq);
        if (maxTokens <= 0) return clock.result("", "length", undefined, []);
        const it = seq.evaluateWithMetadata(input, { probabilities: true }, {
          temperature: sampling.temperature,
          topK: sampling.topK,
          topP: sampling.topP,
          minP: sampling.minP,
          seed: sampling.seed,
          tokenBias: sampling.tokenBias,
          repeatPenalty: sampling.repeatPenalty ? { ...sampling.repeatPenalty, punishTokens: () => generated.slice(-64) } : undefined,
        });
        for await (const out of it) {
          if (opts.signal?.aborted) {
            finish = "abort";
            break;
          }
          clock.onTokens(1);
          if (this.model.isEogToken(out.token) || stopTokens.has(out.token)) {
            finish = "stop";
            break;
          }
          const probs = out.probabilities;
          const lp: TokenLogprob = {
            ...entry(out.token, probs.get(out.token) ?? 0, generated),
            top: [...probs.entries()].slice(0, top).map(([t, p]) => entry(t, p, generated)),
          };
          generated.push(out.token);
          logprobs.push(lp);
          pendingLogprobs.push(lp);
          const full = this.model.detokenize(generated, false);
          if (!full.endsWith("\uFFFD")) {
            const { emit: safe, stopped } = matcher.push(full.slice(decoded.length));
            decoded = full;
            emit(safe);
            if (stopped) {
              finish = "stop";
              break;
            }
          }
          if (generated.length >= maxTokens) break;
        }
        if (finish !== "abort" && finish !== "stop") emit(matcher.flush());
        // Tokens whose text was held back (a stop sequence, an unfinished character) were never sent.
        logprobs.length -= pendingLogprobs.length;
        return clock.result(text, finish, undefined, logprobs);
      } catch (err) {
        if (opts.signal?.aborted) return clock.result(text, "abort", undefined, logprobs);
        throw new GenerationError(`generation failed: ${(err as Error).message}`, { cause: err });
      }
    });
  }

  /** Plain generation (raw or chat-templated prompt), optionally grammar-constrained. */
  private async generateCompletion(opts: GenerateOptions, onText: Emit, tCall: number, tReady: number, extraSystem?: string, grammarOverride?: LlamaGrammar): Promise<GenerateResult> {
    const { tokens, triggers } = this.renderPrompt(opts, extraSystem);
    const promptTokens = this.promptTokensOf(tokens);
    const room = this.contextSize - promptTokens;
    const maxTokens = opts.maxTokens === undefined ? room : Math.min(opts.maxTokens, room);
    const sampling = this.samplingOptions(opts);
    const grammar = grammarOverride ?? (await this.grammarFor(opts.responseFormat, this.model.llama));
    const clock = new Clock(tCall, tReady, promptTokens);
    const input: Token[] = this.prependsBos ? [this.model.tokens.bos!, ...tokens] : tokens;
    return this.onSlot(opts.signal, () => clock.result("", "abort"), async (seq) => {
      clock.tStart = performance.now();
      // LlamaCompletion keeps the part of the slot's KV cache that matches the prompt (at least one
      // prompt token is always evaluated).
      clock.cached = Math.min(commonPrefix(seq.contextTokens, input), input.length - 1);
      await trimSlot(this.pool.context, seq, clock.cached);
      if (this.directDecode && !grammar && !seq.needsCheckpoints) return this.decodeDirect(seq, input, triggers, sampling, maxTokens, clock, opts, onText);
      const completion = new LlamaCompletion({ contextSequence: seq, autoDisposeSequence: false });
      const run = new Run(opts.signal, opts.stop, onText);
      try {
        if (run.aborted) return clock.result("", "abort");
        const res = await completion.generateCompletionWithMeta(tokens, {
          ...sampling,
          grammar,
          signal: run.controller.signal,
          stopOnAbortSignal: true,
          maxTokens,
          customStopTriggers: triggers.length ? triggers : undefined,
          disableContextShift: true,
          onToken: (t) => clock.onTokens(t.length),
          onTextChunk: run.chunk,
        });
        const reason = res.metadata.stopReason;
        if (run.stopHit) return { ...clock.result(run.text, "stop"), stopSequence: run.matcher.matched };
        if (run.aborted || reason === "abort") return clock.result(run.text, "abort");
        run.flush();
        return clock.result(run.text, reason === "maxTokens" ? "length" : "stop");
      } catch (err) {
        if (run.stopHit || run.aborted) return run.stopHit ? { ...clock.result(run.text, "stop"), stopSequence: run.matcher.matched } : clock.result(run.text, "abort");
        throw new GenerationError(`generation failed: ${(err as Error).message}`, { cause: err });
      } finally {
        run.dispose();
        completion.dispose({ disposeSequence: false });
      }
    }, input);
  }

  /** A template's end-of-turn markers: one special token each (`stopTokens`), or plain text for the stop matcher (`markers`). */
  private splitTriggers(triggers: LlamaText[]): { stopTokens: Set<number>; markers: string[] } {
    const stopTokens = new Set<number>();
    const markers: string[] = [];
    for (const trigger of triggers) {
      const ids = trigger.tokenize(this.model.tokenizer);
      if (ids.length === 1 && this.model.detokenize(ids, false) === "") stopTokens.add(ids[0]!);
      else markers.push(trigger.toString());
    }
    return { stopTokens, markers };
  }

  /**
   * Plain generation on shimmy's decode loop (stepper.ts): the prompt's uncached tokens, then one
   * token per step, sampled by llama.cpp's sampler chain (node-llama-cpp's native sampler, configured
   * as LlamaCompletion would: same options, same repeat-penalty window). Stops at an end-of-generation
   * token, a template end marker, a stop sequence, `maxTokens` or the caller's abort. Text is decoded
   * per token with the preceding tokens as context; a token ending in an incomplete UTF-8 character
   * waits for the next one.
   */
  private async decodeDirect(
    seq: LlamaContextSequence,
    input: Token[],
    triggers: LlamaText[],
    sampling: ReturnType<NativeModel["samplingOptions"]>,
    maxTokens: number,
    clock: Clock,
    opts: GenerateOptions,
    onText: Emit,
  ): Promise<GenerateResult> {
    const context = this.pool.context;
    // A trim that could not run (see trimSlot) is done the locked way.
    if (seq.nextTokenIndex > clock.cached) await seq.eraseContextTokenRanges([{ start: clock.cached, end: seq.nextTokenIndex }]);
    clock.cached = Math.min(clock.cached, seq.nextTokenIndex);
    const { stopTokens, markers } = this.splitTriggers(triggers);
    const userStops = opts.stop ?? [];
    const run = new Run(opts.signal, [...userStops, ...markers], onText);
    const generated: Token[] = [];
    const nl = this.model.tokens.nl;
    const penalty = sampling.repeatPenalty;
    const s = seq as unknown as { _resolveSamplerConfig(o: object): object };
    const config = () =>
      s._resolveSamplerConfig({
        temperature: sampling.temperature,
        minP: sampling.minP,
        topK: sampling.topK,
        topP: sampling.topP,
        seed: sampling.seed,
        tokenBias: sampling.tokenBias,
        // LlamaCompletion's window: the last 64 generated tokens, new lines not punished.
        repeatPenalty: penalty ? { penalty: penalty.penalty, frequencyPenalty: penalty.frequencyPenalty, presencePenalty: penalty.presencePenalty, maxPunishTokens: 64, punishTokens: () => all.slice(-64).filter((t) => t !== nl) } : undefined,
      });
    const bindings = (this.model as unknown as { _llama: { _bindings: { AddonSampler: new (m: unknown) => { applyConfig(c: object): void; dispose(): void } } }; _model: unknown });
    // node-llama-cpp's native sampler, made on first use (a greedy request sampled synchronously
    // needs it only for its context's first token, if at all; making one costs about 1 ms).
    let sampler: { applyConfig(c: object): void; dispose(): void } | undefined;
    // Without a penalty the config never changes: resolved once (its default seed is the time in seconds).
    let resolved: object | undefined;
    const configOnce = () => (resolved ??= config());
    const nativeSample = (native: NativeContextLike, idx: number) => {
      if (!sampler) {
        sampler = new bindings._llama._bindings.AddonSampler(bindings._model);
        sampler.applyConfig(penalty ? config() : configOnce());
      }
      return native.sampleToken(idx, sampler) as Promise<number>;
    };
    // Greedy requests: the argmax of llama.cpp's logits, synchronously (greedy.ts).
    const addon = (context as unknown as { _ctx: NativeContextLike & { getThreads(): number; getContextSize(): number } })._ctx;
    const greedy = this.syncGreedy && sampling.temperature <= 0 && !sampling.tokenBias && !penalty ? greedyFor(addon) : undefined;
    // Sampled requests without penalties or logit bias: llama.cpp's sampler chain on this thread
    // (greedy.ts's SyncSampler, built as node-llama-cpp builds it), for a request whose first token
    // is the only one its step samples. Sampling several sequences one after the other on this thread
    // measured slower than node-llama-cpp's async calls, which run in parallel (4 streams, 6-layer
    // model: 37.5 against 36.8 ms per step). One sampler serves a request from start to end, so a
    // seed gives the same text either way. The first token is also sampled by node-llama-cpp's
    // sampler (same seed, same state) and must match, or the request continues on that one.
    const syncSampler = !greedy && this.syncGreedy && sampling.temperature > 0 && !sampling.tokenBias && !penalty ? greedyFor(addon)?.sampler(configOnce() as SamplerConfig) : undefined;
    let mode: "first" | "sync" | "native" = syncSampler ? "first" : "native";
    const sampleSync = (native: NativeContextLike, idx: number, rows: number): number | Promise<number> => {
      if (mode === "sync") return syncSampler!.sample(idx);
      if (mode === "native" || rows !== 1) {
        mode = "native";
        return nativeSample(native, idx);
      }
      const token = syncSampler!.sample(idx);
      return nativeSample(native, idx).then((expected) => {
        mode = expected === token ? "sync" : "native";
        if (mode === "native") log.debug(`sampling: synchronous token ${token} differs from node-llama-cpp's ${expected}; this request keeps node-llama-cpp's sampler`);
        return expected;
      });
    };
    const sample = greedy ? (native: NativeContextLike, idx: number) => greedy.sample(idx, () => nativeSample(native, idx)) : syncSampler ? sampleSync : nativeSample;
    const syncDecode = this.syncDecode;
    const stepper = stepperFor(context, () => runTruncations(context), () => POOLS.get(context)?.busy ?? 0, syncDecode === false ? undefined : () => greedyFor(addon), syncDecode, this.gatherMs, this.streamIntervalMs);
    const finishStop = (): GenerateResult => {
      const matched = run.matcher.matched;
      return matched !== undefined && userStops.includes(matched) ? { ...clock.result(run.text, "stop"), stopSequence: matched } : clock.result(run.text, "stop");
    };
    // Every sampled token (the repeat-penalty window counts tokens whose text is still held back).
    const all: Token[] = [];
    lowerBackgroundThreads();
    try {
      stepper.begin();
    } catch (err) {
      run.dispose();
      throw new GenerationError(`generation failed: ${(err as Error).message}`, { cause: err });
    }
    try {
      if (run.aborted) return clock.result("", "abort");
      if (maxTokens <= 0) return clock.result("", "length");
      // The next decode is queued after this token's text is sent, not before: overlapping the two
      // (the JavaScript thread working while llama.cpp decodes on every core) measured 5-10% slower
      // single-stream on 2 cores, and no faster with 4 streams.
      let next: Token[] = input.slice(seq.nextTokenIndex);
      let partial: Token[] = [];
      for (;;) {
        const token = (await stepper.decode(seq, next, sample, all.length === 0)) as Token;
        if (token === -1) throw new Error("failed to sample the next token");
        if (run.aborted) return clock.result(run.text, "abort");
        if (this.model.isEogToken(token) || stopTokens.has(token)) {
          if (partial.length) run.chunk(this.model.detokenize(partial, false, generated));
          if (run.stopHit) return finishStop();
          run.flush();
          return clock.result(run.text, "stop");
        }
        clock.onTokens(1);
        all.push(token);
        const last = all.length >= maxTokens;
        partial.push(token);
        const text = this.model.detokenize(partial, false, generated);
        // An unfinished UTF-8 character waits for its next token (at most 4 bytes).
        if (last || !(text.endsWith("\uFFFD") && partial.length < 4 && !this.model.isSpecialToken(token))) {
          for (const t of partial) generated.push(t);
          partial = [];
          run.chunk(text);
          if (run.stopHit) return finishStop();
        }
        if (last) {
          run.flush();
          return clock.result(run.text, "length");
        }
        next = [token];
        if (penalty) sampler?.applyConfig(config());
      }
    } catch (err) {
      if (run.stopHit) return finishStop();
      if (run.aborted) return clock.result(run.text, "abort");
      throw new GenerationError(`generation failed: ${(err as Error).message}`, { cause: err });
    } finally {
      stepper.end();
      run.dispose();
      sampler?.dispose();
      syncSampler?.dispose();
    }
  }

  /**
   * `tool_choice` required or a named function: the output is constrained by a JSON-schema grammar
   * to `{"name": <a tool>, "arguments": <its parameters>}`, so the call is valid for any model.
   */
  private async generateForcedToolCall(opts: GenerateOptions, tools: ToolDefinition[], onText: Emit, tCall: number, tReady: number): Promise<GenerateResult> {
    const wanted = typeof opts.toolChoice === "object" ? tools.filter((t) => t.name === (opts.toolChoice as { name: string }).name) : tools;
    if (!wanted.length) throw new BadRequestError(`tool_choice names function '${(opts.toolChoice as { name: string }).name}', which is not in tools`, { param: "tool_choice" });
    const variants = wanted.map((t) => ({ type: "object", properties: { name: { const: t.name }, arguments: toGbnfSchema(t.parameters ?? { type: "object", properties: {} }) } }));
    const schema = variants.length === 1 ? variants[0] : { oneOf: variants };
    let grammar: LlamaGrammar;
    try {
      grammar = await this.model.llama.createGrammarForJsonSchema(schema as any);
    } catch (err) {
      throw new UnsupportedError(`tool parameters cannot be enforced: ${(err as Error).message}`, { param: "tools" });
    }
    const doc = wanted.map((t) => JSON.stringify({ name: t.name, description: t.description, parameters: t.parameters })).join("\n");
    const instruction = `You can call these functions:\n${doc}\nCall ${wanted.length === 1 ? `the function ${wanted[0]!.name}` : "one of them"} now: reply with only a JSON object {"name": ..., "arguments": {...}}.`;
    const r = await this.generateCompletion({ ...opts, stop: undefined, responseFormat: undefined }, () => {}, tCall, tReady, instruction, grammar);
    if (r.finishReason !== "stop") return { ...r, text: "" };
    let call: { name: string; arguments: unknown };
    try {
      call = JSON.parse(r.text);
    } catch (err) {
      throw new GenerationError(`the forced tool call did not parse: ${(err as Error).message}`);
    }
    return { ...r, text: "", finishReason: "tool_calls", toolCalls: [{ id: newCallId(), name: call.name, arguments: JSON.stringify(call.arguments ?? {}) }] };
  }

  /** `tool_choice` auto: node-llama-cpp's function calling through the chat template's own syntax. */
  private async generateWithFunctions(opts: GenerateOptions, tools: ToolDefinition[], onText: Emit, tCall: number, tReady: number): Promise<GenerateResult> {
    const functions: ChatModelFunctions = Object.fromEntries(tools.map((t) => [t.name, { description: t.description, params: t.parameters ? toGbnfSchema(t.parameters) : undefined }]));
    const history = this.history(opts);
    const wrapper = this.chatWrapper(opts.chatTemplate ?? this.defaultTemplate);
    const state = wrapper.generateContextState({ chatHistory: wrapper.addAvailableFunctionsSystemMessageToHistory(history, functions, { documentParams: true }), availableFunctions: functions, documentFunctionParams: true });
    const promptTokens = this.promptTokensOf(state.contextText.tokenize(this.model.tokenizer));
    const room = this.contextSize - promptTokens;
    const maxTokens = opts.maxTokens === undefined ? room : Math.min(opts.maxTokens, room);
    const sampling = this.samplingOptions(opts);
    const clock = new Clock(tCall, tReady, promptTokens);
    return this.onSlot(opts.signal, () => clock.result("", "abort"), async (seq) => {
      clock.tStart = performance.now();
      const chat = new LlamaChat({ contextSequence: seq, chatWrapper: wrapper, autoDisposeSequence: false });
      const run = new Run(opts.signal, opts.stop, onText);
      try {
        await clearSlot(this.pool.context, seq);
        const res = await chat.generateResponse(history, {
          ...sampling,
          functions,
          documentFunctionParams: true,
          maxTokens,
          signal: run.controller.signal,
          stopOnAbortSignal: true,
          onToken: (t) => clock.onTokens(t.length),
          onTextChunk: run.chunk,
        });
        if (res.functionCalls?.length) {
          const calls = res.functionCalls.map((c) => ({ id: newCallId(), name: c.functionName, arguments: JSON.stringify(c.params ?? {}) }));
          return clock.result(run.text, "tool_calls", calls);
        }
        if (run.stopHit) return { ...clock.result(run.text, "stop"), stopSequence: run.matcher.matched };
        if (run.aborted || res.metadata.stopReason === "abort") return clock.result(run.text, "abort");
        run.flush();
        return clock.result(run.text, res.metadata.stopReason === "maxTokens" ? "length" : "stop");
      } catch (err) {
        if (run.stopHit || run.aborted) return run.stopHit ? { ...clock.result(run.text, "stop"), stopSequence: run.matcher.matched } : clock.result(run.text, "abort");
        throw new GenerationError(`generation failed: ${(err as Error).message}`, { cause: err });
      } finally {
        run.dispose();
        chat.dispose({ disposeSequence: false });
      }
    });
  }

  /** Token ids of `text`; `special` parses special-token text (`<|im_start|>`) as special tokens; `addBos` prepends BOS when the model's prompts get one. */
  tokenize(text: string, special = false, addBos = false): number[] {
    const tokens = this.model.tokenize(text, special) as number[];
    return addBos && this.prependsBos ? [this.model.tokens.bos as number, ...tokens] : tokens;
  }

  /** Text of a token list; `special` renders special tokens as text; `before` are the tokens preceding it (for word-start spaces). */
  detokenize(tokens: readonly number[], special = false, before: readonly number[] = []): string {
    return this.model.detokenize(tokens as Token[], special, before as Token[]);
  }

  /** Each token's own text as it reads in place (word-start spaces kept, special tokens shown). */
  pieces(tokens: readonly number[]): string[] {
    const bos = this.model.tokens.bos;
    return tokens.map((t, i) => this.model.detokenize([t as Token], true, (i === 0 && bos != null ? [bos] : tokens.slice(Math.max(0, i - 8), i)) as Token[]));
  }

  /** Number of tokens in the vocabulary (from the GGUF's token list). */
  get vocabularySize(): number {
    const md = this.model.fileInfo.metadata as { tokenizer?: { ggml?: { tokens?: readonly string[] } } };
    return md.tokenizer?.ggml?.tokens?.length ?? 0;
  }

  /** Embedding vectors of texts or token lists, through one lazily created embedding context. */
  async embed(inputs: Array<string | number[]>, signal?: AbortSignal): Promise<{ vectors: number[][]; promptTokens: number }> {
    const embeddingContextSize = Math.min(this.contextSize, this.model.trainContextSize || this.contextSize);
    this.embedding ??= withHugepages(!this.mapped, () => this.model.createEmbeddingContext({ contextSize: embeddingContextSize, threads: this.threads }));
    this.embedding.catch(() => (this.embedding = undefined));
    const ctx = await this.embedding.catch((err) => {
      throw new UnsupportedError(`this model cannot produce embeddings: ${(err as Error).message}`, { param: "model" });
    });
    const vectors: number[][] = [];
    let promptTokens = 0;
    for (const input of inputs) {
      if (signal?.aborted) throw signal.reason;
      const tokens = typeof input === "string" ? this.model.tokenize(input, false) : (input as Token[]);
      const n = ctx.calculateInputLength(tokens);
      if (n > embeddingContextSize) throw new PromptTooLongError(n, embeddingContextSize);
      promptTokens += n;
      vectors.push([...(await ctx.getEmbeddingFor(tokens)).vector]);
    }
    return { vectors, promptTokens };
  }

  async dispose(): Promise<void> {
    await (await this.embedding?.catch(() => undefined))?.dispose().catch(() => {});
    for (const p of [...this.retiring, this.pool]) await p.context.dispose().catch(() => {});
    await this.model.dispose().catch(() => {});
  }
}
