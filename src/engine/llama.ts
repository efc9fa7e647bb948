/**
 * The one door to native code: the only module that imports node-llama-cpp. Loaded lazily by the
 * engine so that `--help`, `--version` and the server layer never load the addon.
 */
import {
  ChatMLChatWrapper,
  getLlama,
  getLlamaGpuTypes,
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
import type { ChatTemplateName } from "../config.ts";
import { BackendError, GenerationError, ModelLoadError, PromptTooLongError } from "../errors.ts";
import { log } from "../log.ts";
import { nativeBuildInfo } from "./runtime.ts";
import { StopMatcher } from "./stop.ts";
import type { BackendInfo, BackendOptions, ChatMessage, FinishReason, GenerateOptions, GenerateResult, ModelEntry } from "./types.ts";

const LOG_TAIL = 20;
/** Below this size a model runs on 1 thread unless threads were set explicitly. */
const SMALL_MODEL_BYTES = 64 * 1024 * 1024;

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
    if (compiled.length === 1) notes.push("this build includes no GPU backend (a GPU build carries vulkan, cuda or metal)");
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
      llamaCppRelease: this.llama.llamaCppRelease.release,
    };
  }

  /** Validates the file's header, loads weights, LoRA and one context. Throws ModelLoadError. */
  async loadModel(entry: ModelEntry): Promise<NativeModel> {
    await validateGguf(entry.path);
    if (entry.lora) await validateGguf(entry.lora, true);
    this.recentLog.length = 0;
    let model: LlamaModel | undefined;
    try {
      model = await this.llama.loadModel({ modelPath: entry.path, gpuLayers: this.llama.gpu === false ? 0 : "auto" });
      const contextSize = Math.max(256, Math.min(this.opts.ctxSize, model.trainContextSize || this.opts.ctxSize));
      const threads = !this.opts.threadsExplicit && model.size < SMALL_MODEL_BYTES ? 1 : this.opts.threads;
      const context = await model.createContext({
        contextSize,
        sequences: 1,
        threads,
        ...(entry.lora ? { lora: { adapters: [{ filePath: entry.lora }] } } : {}),
      });
      return new NativeModel(model, context, this.opts.chatTemplate, threads);
    } catch (err) {
      await model?.dispose().catch(() => {});
      const detail = this.recentLog.filter((l) => /error|fail|invalid|unable|cannot/i.test(l)).slice(-3).join("; ");
      throw new ModelLoadError(
        `failed to load ${entry.lora ? `${entry.path} with LoRA ${entry.lora}` : entry.path}: ${(err as Error).message}${detail ? ` (llama.cpp: ${detail})` : ""}`,
        { cause: err },
      );
    }
  }

  async close(): Promise<void> {
    await this.llama.dispose();
  }
}

/**
 * Rejects files that would abort the whole process inside llama.cpp instead of failing cleanly:
 * a non-GGUF file, a missing attention head count, a SentencePiece vocabulary without byte tokens.
 */
async function validateGguf(file: string, adapter = false): Promise<void> {
  let info;
  try {
    info = await readGgufFileInfo(file, { readTensorInfo: false, logWarnings: false, sourceType: "filesystem" });
  } catch (err) {
    throw new ModelLoadError(`${file} is not a readable GGUF file: ${(err as Error).message}`, { cause: err });
  }
  const md = info.metadata as Record<string, any>;
  const arch: string | undefined = md.general?.architecture;
  if (!arch) throw new ModelLoadError(`${file} has no general.architecture`);
  if (adapter) {
    if (md.general?.type !== "adapter") throw new ModelLoadError(`${file} is not a LoRA adapter (general.type is '${md.general?.type}')`);
    return;
  }
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

/** A FIFO of waiters for the context's sequences (slots). */
class SlotPool {
  private readonly free: LlamaContextSequence[] = [];
  private readonly waiters: Array<(s: LlamaContextSequence) => void> = [];
  constructor(context: LlamaContext) {
    for (let i = 0; i < context.totalSequences; i++) this.free.push(context.getSequence());
  }
  /** Resolves with a free slot; rejects with the signal's reason if aborted while waiting. */
  acquire(signal?: AbortSignal): Promise<LlamaContextSequence> {
    const s = this.free.shift();
    if (s) return Promise.resolve(s);
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
  }
}

export class NativeModel {
  private readonly slots: SlotPool;
  private autoWrapper: ChatWrapper | undefined;

  constructor(
    private readonly model: LlamaModel,
    private readonly context: LlamaContext,
    private readonly defaultTemplate: ChatTemplateName,
    /** llama.cpp threads this model's context uses. */
    readonly threads: number,
  ) {
    this.slots = new SlotPool(context);
  }

  /** Whether LlamaCompletion puts a BOS token before the prompt. */
  private get prependsBos(): boolean {
    return this.model.tokens.bos != null && this.model.tokens.shouldPrependBosToken;
  }

  get contextSize(): number {
    return this.context.contextSize;
  }

  get trainContextSize(): number {
    return this.model.trainContextSize;
  }

  private chatWrapper(name: ChatTemplateName): ChatWrapper {
    switch (name) {
      case "chatml":
        return new ChatMLChatWrapper();
      case "llama3":
        return new Llama3ChatWrapper();
      case "openchat":
        return OPENCHAT();
      default:
        return (this.autoWrapper ??= resolveChatWrapper(this.model));
    }
  }

  /** The prompt as tokens (BOS excluded: the completion prepends it) and the template's stop triggers. */
  private renderPrompt(opts: GenerateOptions): { tokens: Token[]; triggers: LlamaText[] } {
    const tokenizer = this.model.tokenizer;
    if (!opts.messages?.length && opts.system === undefined) {
      return { tokens: tokenizer(opts.prompt ?? "", false, "trimLeadingSpace"), triggers: [] };
    }
    const messages: ChatMessage[] = opts.messages?.length ? [...opts.messages] : [{ role: "user", content: opts.prompt ?? "" }];
    if (opts.system !== undefined && messages[0]?.role !== "system") messages.unshift({ role: "system", content: opts.system });
    const history: ChatHistoryItem[] = messages.map((m) =>
      m.role === "system" ? { type: "system", text: m.content } : m.role === "user" ? { type: "user", text: m.content } : { type: "model", response: [m.content] },
    );
    if (history.at(-1)?.type !== "model") history.push({ type: "model", response: [] });
    const state = this.chatWrapper(opts.chatTemplate ?? this.defaultTemplate).generateContextState({ chatHistory: history });
    let tokens = state.contextText.tokenize(tokenizer);
    // The completion prepends BOS itself when the model wants one: drop the template's copy.
    const bos = this.prependsBos ? this.model.tokens.bos : null;
    while (bos != null && tokens[0] === bos) tokens = tokens.slice(1);
    return { tokens, triggers: state.stopGenerationTriggers };
  }

  /**
   * Generates on a free slot (waits FIFO for one), calling `onText` with each safe piece of text:
   * stop sequences are held back until ruled out and never emitted. Resolves when generation ends,
   * including by abort (finish reason `abort`). Throws PromptTooLongError before any text.
   * `tCall` is when the caller received the request (TTFT counts from it, model load included);
   * `tReady` is when the model was ready (queue time counts from it).
   */
  async generate(opts: GenerateOptions, onText: (text: string) => void, tCall = performance.now(), tReady = tCall): Promise<GenerateResult> {
    const { tokens, triggers } = this.renderPrompt(opts);
    const promptTokens = tokens.length + (this.prependsBos ? 1 : 0);
    if (promptTokens >= this.contextSize) throw new PromptTooLongError(promptTokens, this.contextSize);
    const room = this.contextSize - promptTokens;
    const maxTokens = opts.maxTokens === undefined ? room : Math.min(opts.maxTokens, room);
    let text = "";
    let finishReason: FinishReason = "abort";
    let tStart = performance.now();
    let tFirst: number | undefined;
    let generatedTokens = 0;
    const finish = (): GenerateResult => {
      const tEnd = performance.now();
      const promptMs = (tFirst ?? tEnd) - tStart;
      const generateMs = tFirst === undefined ? 0 : tEnd - tFirst;
      return {
        text,
        finishReason,
        timings: {
          promptTokens,
          promptMs,
          promptTokensPerSecond: promptMs > 0 ? (promptTokens * 1000) / promptMs : 0,
          generatedTokens,
          generateMs,
          tokensPerSecond: generateMs > 0 ? ((generatedTokens - 1) * 1000) / generateMs : 0,
          ttftMs: (tFirst ?? tEnd) - tCall,
          queueMs: tStart - tReady,
          totalMs: tEnd - tCall,
        },
      };
    };
    let seq: LlamaContextSequence;
    try {
      seq = await this.slots.acquire(opts.signal);
    } catch (err) {
      if (opts.signal?.aborted) return finish();
      throw err;
    }
    tStart = performance.now();
    const completion = new LlamaCompletion({ contextSequence: seq, autoDisposeSequence: false });
    // Our own controller: a stop sequence ends generation the same way an abort does.
    const controller = new AbortController();
    const onAbort = () => controller.abort(opts.signal?.reason);
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    const matcher = new StopMatcher(opts.stop ?? []);
    let stopHit = false;
    const emit = (piece: string) => {
      if (!piece) return;
      text += piece;
      onText(piece);
    };
    try {
      if (opts.signal?.aborted) return finish();
      const res = await completion.generateCompletionWithMeta(tokens, {
        signal: controller.signal,
        stopOnAbortSignal: true,
        maxTokens,
        temperature: opts.temperature ?? 0.8,
        topK: opts.topK ?? 40,
        topP: opts.topP ?? 0.95,
        minP: opts.minP ?? 0.05,
        seed: opts.seed,
        repeatPenalty: opts.repeatPenalty === undefined || opts.repeatPenalty === 1 ? false : { penalty: opts.repeatPenalty, lastTokens: 64 },
        customStopTriggers: triggers.length ? triggers : undefined,
        disableContextShift: true,
        onToken: (t) => {
          tFirst ??= performance.now();
          generatedTokens += t.length;
        },
        onTextChunk: (chunk) => {
          if (stopHit) return;
          const { emit: safe, stopped } = matcher.push(chunk);
          emit(safe);
          if (stopped) {
            stopHit = true;
            controller.abort(new Error("stop sequence"));
          }
        },
      });
      const reason = res.metadata.stopReason;
      if (stopHit) finishReason = "stop";
      else if (opts.signal?.aborted || reason === "abort") finishReason = "abort";
      else {
        emit(matcher.flush());
        finishReason = reason === "maxTokens" ? "length" : "stop";
      }
      return finish();
    } catch (err) {
      if (stopHit || opts.signal?.aborted) {
        finishReason = stopHit ? "stop" : "abort";
        return finish();
      }
      throw new GenerationError(`generation failed: ${(err as Error).message}`, { cause: err });
    } finally {
      opts.signal?.removeEventListener("abort", onAbort);
      completion.dispose({ disposeSequence: false });
      this.slots.release(seq);
    }
  }

  /** Number of tokens `text` encodes to (no BOS). */
  countTokens(text: string): number {
    return this.model.tokenize(text, false).length;
  }

  async dispose(): Promise<void> {
    await this.context.dispose().catch(() => {});
    await this.model.dispose().catch(() => {});
  }
}
