/**
 * The engine: model lifecycle (load on first use, shared loads, keep-alive unload, least-recently-used
 * eviction, drain on shutdown), generation as an AsyncIterable of token events with timings, and the
 * counters the metrics read. Knows nothing of HTTP. node-llama-cpp is imported lazily, on the first
 * load, through ./llama.ts.
 */
import { realpathSync, statSync } from "node:fs";
import os from "node:os";
import { BadRequestError, ModelLoadError, ModelNotFoundError, OverloadedError, toShimmyError } from "../errors.ts";
import { log } from "../log.ts";
import type { NativeBackend, NativeModel } from "./llama.ts";
import type { ModelRegistry } from "./registry.ts";
import { ensureNativeRuntime } from "./runtime.ts";
import type { BackendInfo, BackendOptions, GenerateOptions, GenerateResult, LoraAdapter, ModelEntry, ModelInfo, Timings, TokenEvent, TokenLogprob } from "./types.ts";

/** Longest a drain waits, after its generations have ended, for llama.cpp to release the models. */
const DRAIN_CLOSE_MS = 10_000;

function realpathOr(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return p;
  }
}

export interface LoadedModel {
  entry: ModelEntry;
  native: NativeModel;
  loadMs: number;
}

/** Lifecycle settings; each has a config flag (see config.ts). */
export interface LifecycleOptions {
  /** Idle time before a model unloads, ms; -1 never, 0 right after each request. Default 5 min. */
  keepAliveMs?: number;
  /** Most models loaded at once. Default 3. */
  maxLoadedModels?: number;
}

/** Hooks the metrics module attaches to; all optional and synchronous. */
export interface EngineObserver {
  onLoad?(model: string, ms: number): void;
  /** Time between two token events of one generation. */
  onTokenGap?(model: string, ms: number): void;
  onDone?(model: string, timings: Timings, finishReason: string): void;
}

export type ModelState = "loading" | "loaded";

/** One entry of `ps()` / `status()`. */
export interface ModelStatus {
  name: string;
  state: ModelState | "unloaded";
  /** Generations running now. */
  active: number;
  /** Requests waiting for a slot. */
  queued: number;
  slots: number;
  /** Bytes the weights take (node-llama-cpp's figure), once loaded. */
  sizeBytes?: number;
  /** Of those, bytes offloaded to the GPU (0 on CPU). */
  vramBytes?: number;
  contextSize?: number;
  loras?: LoraAdapter[];
  /** When it will unload if it stays idle (ISO time); null = never or busy. */
  expiresAt?: string | null;
  loadMs?: number;
}

/** Order of use across models (a counter: Date.now() tied within a millisecond, and LRU eviction then picked at random). */
let useCounter = 0;

class ModelHandle {
  state: ModelState = "loading";
  loaded: LoadedModel | undefined;
  active = 0;
  /** Increases with every use; least recently used = smallest. */
  useOrder = ++useCounter;
  expiresAt: number | null = null;
  timer: ReturnType<typeof setTimeout> | undefined;
  idleWaiters: Array<() => void> = [];
  constructor(
    readonly entry: ModelEntry,
    readonly ready: Promise<LoadedModel>,
  ) {}
}

export class Engine {
  private backendPromise: Promise<NativeBackend> | undefined;
  private readonly models = new Map<string, ModelHandle>();
  private readonly running = new Set<AbortController>();
  private draining = false;
  observer: EngineObserver = {};

  constructor(
    readonly registry: ModelRegistry,
    readonly options: BackendOptions & LifecycleOptions,
  ) {}

  /** Starts llama.cpp once (lazy). */
  backend(): Promise<NativeBackend> {
    this.backendPromise ??= (async () => {
      await ensureNativeRuntime({ runtimeDir: this.options.runtimeDir, cacheDir: this.options.cacheDir ?? os.tmpdir() });
      return (await import("./llama.ts")).openBackend(this.options);
    })();
    this.backendPromise.catch(() => (this.backendPromise = undefined));
    return this.backendPromise;
  }

  /** Backend facts, or undefined while llama.cpp has not been started. */
  async backendInfo(): Promise<BackendInfo | undefined> {
    if (!this.backendPromise) return undefined;
    return (await this.backendPromise.catch(() => undefined))?.info();
  }

  /** Resolves a name to its entry; throws ModelNotFoundError listing what exists. */
  async resolve(name: string): Promise<ModelEntry> {
    const entry = await this.registry.get(name);
    if (!entry) throw new ModelNotFoundError(name, (await this.registry.list()).filter((e) => !e.problem).map((e) => e.name));
    return entry;
  }

  /** `ready` (serving), `loading` (a model is loading) or `draining` (shutting down). */
  get state(): "ready" | "loading" | "draining" {
    if (this.draining) return "draining";
    return [...this.models.values()].some((h) => h.state === "loading") ? "loading" : "ready";
  }

  /**
   * Loads a model (once; concurrent callers share the load; a failed load is not kept). At the
   * loaded-models limit, the least recently used idle model is unloaded first; when every loaded
   * model is busy, OverloadedError (503).
   */
  async load(name: string, keepAliveMs?: number): Promise<LoadedModel> {
    const h = await this.handle(name);
    const m = await h.ready;
    // A keep-alive given with an explicit load replaces the default for the coming idle period.
    if (keepAliveMs !== undefined && h.active === 0 && this.models.get(h.entry.name) === h) this.scheduleUnload(h, keepAliveMs);
    return m;
  }

  private async handle(name: string): Promise<ModelHandle> {
    if (this.draining) throw new OverloadedError("shimmy is shutting down");
    // A loaded model keeps serving under its name even when its file has left the listing (deleted
    // or moved while loaded: the weights are in memory or the mapping keeps the file alive).
    const loaded = this.models.get(name);
    if (loaded && loaded.state === "loaded") return loaded;
    const entry = await this.resolve(name);
    // After the await: another caller may have started this load meanwhile (shared below).
    if (this.draining) throw new OverloadedError("shimmy is shutting down");
    const existing = this.models.get(entry.name);
    if (existing) return existing;
    // A broken file or an incomplete split set never reaches llama.cpp.
    if (entry.problem) throw new ModelLoadError(entry.problem);
    this.makeRoom();
    const ready = (async () => {
      const t0 = performance.now();
      const backend = await this.backend();
      const native = await backend.loadModel(entry);
      const loadMs = performance.now() - t0;
      log.debug(`loaded ${entry.name} in ${loadMs.toFixed(0)} ms (context ${native.contextSize} x ${native.slots} slots, weights ${native.mapped ? "memory-mapped" : `read into memory${native.weightsAligned ? ", 32 bytes past a 64-byte boundary" : ""}`})`);
      this.observer.onLoad?.(entry.name, loadMs);
      return { entry, native, loadMs };
    })().catch((err) => {
      throw toShimmyError(err, ModelLoadError);
    });
    const h = new ModelHandle(entry, ready);
    this.models.set(entry.name, h);
    ready.then(
      (m) => {
        h.loaded = m;
        h.state = "loaded";
        this.scheduleUnload(h, this.options.keepAliveMs ?? 300_000);
      },
      () => this.models.delete(entry.name),
    );
    return h;
  }

  /** Frees a place under the loaded-models limit by unloading least recently used idle models. */
  private makeRoom(): void {
    const max = this.options.maxLoadedModels ?? 3;
    while (this.models.size >= max) {
      const idle = [...this.models.values()].filter((h) => h.state === "loaded" && h.active === 0).sort((a, b) => a.useOrder - b.useOrder)[0];
      if (!idle) throw new OverloadedError(`${this.models.size} models are loaded and busy (max-loaded-models ${max}); retry later`);
      log.info(`unloading ${idle.entry.name} (least recently used; max-loaded-models ${max})`);
      void this.dispose(idle);
    }
  }

  private scheduleUnload(h: ModelHandle, keepAliveMs: number): void {
    // Timers cannot wait longer than 2^31-1 ms (~24.8 days): a longer keep-alive means "never".
    if (keepAliveMs > 2 ** 31 - 1) keepAliveMs = -1;
    clearTimeout(h.timer);
    h.timer = undefined;
    h.expiresAt = null;
    if (h.active > 0 || keepAliveMs < 0) return;
    if (keepAliveMs === 0) {
      void this.dispose(h);
      return;
    }
    h.expiresAt = Date.now() + keepAliveMs;
    h.timer = setTimeout(() => {
      if (h.active === 0 && this.models.get(h.entry.name) === h) {
        log.info(`unloading ${h.entry.name} (idle for ${Math.round(keepAliveMs / 1000)} s)`);
        void this.dispose(h);
      }
    }, keepAliveMs);
    h.timer.unref?.();
  }

  /** Removes a model from the table at once; frees its memory when its generations have ended. */
  private async dispose(h: ModelHandle): Promise<void> {
    clearTimeout(h.timer);
    if (this.models.get(h.entry.name) === h) this.models.delete(h.entry.name);
    if (h.active > 0) await new Promise<void>((r) => h.idleWaiters.push(r));
    await (await h.ready.catch(() => undefined))?.native.dispose();
  }

  /** Unloads a model now (its running generations finish first). False when it was not loaded. */
  async unload(name: string): Promise<boolean> {
    const h = this.models.get((await this.resolve(name)).name);
    if (!h) return false;
    await h.ready.catch(() => undefined);
    await this.dispose(h);
    return true;
  }

  /**
   * Replaces a model's LoRA adapters (loading it if needed); generations in flight keep theirs. Only
   * adapters shimmy already knows (discovered in a root, or configured) are accepted: a request can
   * never make shimmy open an arbitrary path (nor learn whether one exists).
   */
  async setLora(name: string, loras: LoraAdapter[]): Promise<ModelStatus> {
    const scan = await this.registry.scan({ refresh: true });
    const known = new Set([...scan.adapters.map((a) => realpathOr(a.path)), ...scan.models.flatMap((m) => (m.loras ?? []).map((l) => realpathOr(l.path)))]);
    for (const l of loras)
      if (!known.has(realpathOr(l.path))) throw new BadRequestError(`unknown LoRA adapter '${l.path}': use an adapter from a model root (see shimmy discover) or one given with --lora / SHIMMY_LORA_GGUF`, { param: "adapters" });
    const m = await this.load(name);
    await m.native.setLora(loras);
    return await this.status(name);
  }

  private statusOf(h: ModelHandle): ModelStatus {
    const n = h.loaded?.native;
    return {
      name: h.entry.name,
      state: h.state,
      active: h.active,
      queued: n?.queued ?? 0,
      slots: n?.slots ?? this.options.parallel ?? 1,
      ...(n ? { sizeBytes: n.sizeBytes, vramBytes: n.vramBytes, contextSize: n.contextSize, loras: n.loras, loadMs: Math.round(h.loaded!.loadMs) } : {}),
      expiresAt: h.expiresAt === null ? null : new Date(h.expiresAt).toISOString(),
    };
  }

  /** GGUF metadata and chat template of a registered model, read from its header (no load). */
  async metadata(name: string): Promise<{ metadata: Record<string, unknown>; chatTemplate?: string }> {
    const entry = await this.resolve(name);
    if (entry.problem) throw new ModelLoadError(entry.problem);
    await ensureNativeRuntime({ runtimeDir: this.options.runtimeDir, cacheDir: this.options.cacheDir ?? os.tmpdir() });
    return (await import("./llama.ts")).readModelMetadata(entry.path);
  }

  /** One model's lifecycle state. */
  async status(name: string): Promise<ModelStatus> {
    const entry = await this.resolve(name);
    const h = this.models.get(entry.name);
    return h ? this.statusOf(h) : { name: entry.name, state: "unloaded", active: 0, queued: 0, slots: this.options.parallel ?? 1 };
  }

  /** Models loaded or loading, most recently used first. */
  ps(): ModelStatus[] {
    return [...this.models.values()].sort((a, b) => b.useOrder - a.useOrder).map((h) => this.statusOf(h));
  }

  /** Registered models with size and whether each is loaded (a fresh scan when `refresh`). */
  async list(opts: { refresh?: boolean } = {}): Promise<ModelInfo[]> {
    return (await this.registry.list(opts)).map((e) => {
      let sizeBytes = 0;
      try {
        sizeBytes = statSync(e.path).size;
      } catch {}
      return { ...e, sizeBytes: e.meta?.sizeBytes ?? sizeBytes, loaded: this.models.get(e.name)?.state === "loaded" };
    });
  }

  /** Names of models currently loaded. */
  loadedNames(): string[] {
    return [...this.models.values()].filter((h) => h.state === "loaded").map((h) => h.entry.name);
  }

  /**
   * Streams a generation: `token` events with text, then one `done` event with the full text,
   * finish reason and timings. Errors before the first token (unknown model, load failure, prompt
   * too long, overload) are thrown from the first `next()`. Stopping the iteration early (`return()`,
   * e.g. a `break` or a disconnected client), aborting `opts.signal`, or a drain past its grace stops
   * generation within one token and frees the slot.
   */
  async *generate(name: string, opts: GenerateOptions & { keepAliveMs?: number }): AsyncGenerator<TokenEvent, void, undefined> {
    const tCall = performance.now();
    const h = await this.handle(name);
    h.active++;
    clearTimeout(h.timer);
    h.expiresAt = null;
    const controller = new AbortController();
    this.running.add(controller);
    const onOuterAbort = () => controller.abort(opts.signal?.reason);
    if (opts.signal?.aborted) controller.abort(opts.signal.reason);
    opts.signal?.addEventListener("abort", onOuterAbort, { once: true });
    try {
      const model = await h.ready;
      const tLoaded = performance.now();
      const pending: Array<{ text: string; logprobs?: TokenLogprob[] }> = [];
      let wake: (() => void) | undefined;
      let result: GenerateResult | undefined;
      let failure: unknown;
      let ended = false;
      let lastToken = 0;
      const notify = () => {
        wake?.();
        wake = undefined;
      };
      const run = model.native
        .generate({ ...opts, signal: controller.signal }, (text, logprobs) => {
          const now = performance.now();
          if (lastToken) this.observer.onTokenGap?.(model.entry.name, now - lastToken);
          lastToken = now;
          pending.push(logprobs?.length ? { text, logprobs } : { text });
          notify();
        }, tCall, tLoaded)
        .then(
          (r) => (result = r),
          (err) => (failure = err),
        )
        .finally(() => {
          ended = true;
          notify();
        });
      try {
        while (true) {
          while (pending.length) yield { type: "token", ...pending.shift()! };
          if (ended) break;
          await new Promise<void>((r) => (wake = r));
        }
        if (failure) throw toShimmyError(failure);
        const r = result!;
        this.observer.onDone?.(model.entry.name, r.timings, r.finishReason);
        yield { type: "done", model: model.entry.name, text: r.text, finishReason: r.finishReason, timings: r.timings, ...(r.toolCalls ? { toolCalls: r.toolCalls } : {}), ...(r.logprobs ? { logprobs: r.logprobs } : {}), ...(r.stopSequence !== undefined ? { stopSequence: r.stopSequence } : {}) };
      } finally {
        if (!ended) controller.abort(new Error("consumer stopped"));
        await run;
      }
    } finally {
      opts.signal?.removeEventListener("abort", onOuterAbort);
      this.running.delete(controller);
      h.active--;
      h.useOrder = ++useCounter;
      if (h.active === 0) {
        for (const w of h.idleWaiters.splice(0)) w();
        if (this.models.get(h.entry.name) === h && h.state === "loaded") this.scheduleUnload(h, opts.keepAliveMs ?? this.options.keepAliveMs ?? 300_000);
      }
    }
  }

  /** Runs a generation to the end and returns its text and timings. */
  async complete(name: string, opts: GenerateOptions & { keepAliveMs?: number }, onToken?: (text: string) => void): Promise<GenerateResult> {
    for await (const ev of this.generate(name, opts)) {
      if (ev.type === "token") onToken?.(ev.text);
      else return { text: ev.text, finishReason: ev.finishReason, timings: ev.timings, ...(ev.toolCalls ? { toolCalls: ev.toolCalls } : {}), ...(ev.logprobs ? { logprobs: ev.logprobs } : {}) };
    }
    throw new Error("generation ended without a result");
  }

  /** Token ids of `text` for a model (loading it if needed); `special` parses special-token text, `addBos` prepends BOS as a prompt gets it. */
  async tokenize(name: string, text: string, opts: { special?: boolean; addBos?: boolean } = {}): Promise<{ model: string; tokens: number[]; pieces: string[] }> {
    const m = await this.load(name);
    const tokens = m.native.tokenize(text, opts.special ?? false, opts.addBos ?? false);
    return { model: m.entry.name, tokens, pieces: m.native.pieces(tokens) };
  }

  /** How many tokens the prompt of `opts` takes on a model (loading it if needed), as a generation would count them. */
  async countTokens(name: string, opts: GenerateOptions): Promise<{ model: string; tokens: number }> {
    const m = await this.load(name);
    return { model: m.entry.name, tokens: m.native.countPromptTokens(opts) };
  }

  /** Text of token ids for a model; ids outside the vocabulary are a BadRequestError. */
  async detokenize(name: string, tokens: number[]): Promise<{ model: string; text: string }> {
    const m = await this.load(name);
    const vocab = m.native.vocabularySize;
    const bad = tokens.find((t) => !Number.isInteger(t) || t < 0 || (vocab > 0 && t >= vocab));
    if (bad !== undefined) throw new BadRequestError(`token ${bad} is not in this model's vocabulary (0 to ${vocab - 1})`, { param: "tokens" });
    return { model: m.entry.name, text: m.native.detokenize(tokens) };
  }

  /** Embedding vectors for texts or token lists. */
  async embed(name: string, inputs: Array<string | number[]>, signal?: AbortSignal): Promise<{ model: string; vectors: number[][]; promptTokens: number }> {
    const m = await this.load(name);
    if (inputs.some((i) => Array.isArray(i))) {
      const vocab = m.native.vocabularySize;
      for (const i of inputs) if (Array.isArray(i) && i.some((t) => !Number.isInteger(t) || t < 0 || (vocab > 0 && t >= vocab))) throw new BadRequestError(`input holds a token id outside this model's vocabulary (0 to ${vocab - 1})`, { param: "input" });
    }
    return { model: m.entry.name, ...(await m.native.embed(inputs, signal)) };
  }

  /** Generations running now, over all models. */
  get activeGenerations(): number {
    return this.running.size;
  }

  /**
   * Shutdown: refuse new work, give running generations `graceMs` to finish, abort the rest (they end
   * with finish reason `abort`), then unload everything, waiting at most `closeMs` for that.
   */
  async drain(graceMs: number, closeMs = DRAIN_CLOSE_MS): Promise<{ finished: boolean }> {
    this.draining = true;
    const deadline = Date.now() + graceMs;
    while (this.running.size > 0 && Date.now() < deadline) await Bun.sleep(Math.min(50, Math.max(1, deadline - Date.now())));
    const finished = this.running.size === 0;
    for (const c of this.running) c.abort(new Error("server shutting down"));
    while (this.running.size > 0) await Bun.sleep(5);
    // Shutdown must end: if llama.cpp does not release the models in time, the process exit will.
    let closed = false;
    await Promise.race([this.close().then(() => (closed = true)), Bun.sleep(closeMs)]);
    if (!closed) log.warn(`llama.cpp did not release the models within ${closeMs / 1000} s of the drain; exiting without waiting`);
    return { finished };
  }

  /** Unloads every model and stops llama.cpp. */
  async close(): Promise<void> {
    const handles = [...this.models.values()];
    for (const h of handles) await this.dispose(h);
    const backend = await this.backendPromise?.catch(() => undefined);
    this.backendPromise = undefined;
    await backend?.close();
  }
}
