/**
 * The engine: loads each model once and keeps it loaded, turns generation into an AsyncIterable of
 * token events, and reports timings. Knows nothing of HTTP. node-llama-cpp is imported lazily, on
 * the first load, through ./llama.ts.
 */
import { statSync } from "node:fs";
import os from "node:os";
import { BadRequestError, ModelLoadError, ModelNotFoundError, toShimmyError } from "../errors.ts";
import { log } from "../log.ts";
import type { NativeBackend, NativeModel } from "./llama.ts";
import type { ModelRegistry } from "./registry.ts";
import { ensureNativeRuntime } from "./runtime.ts";
import type { BackendInfo, BackendOptions, GenerateOptions, GenerateResult, ModelEntry, ModelInfo, TokenEvent, TokenLogprob } from "./types.ts";

export interface LoadedModel {
  entry: ModelEntry;
  native: NativeModel;
  loadMs: number;
}

export class Engine {
  private backendPromise: Promise<NativeBackend> | undefined;
  private readonly models = new Map<string, Promise<LoadedModel>>();

  constructor(
    readonly registry: ModelRegistry,
    readonly options: BackendOptions,
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
  resolve(name: string): ModelEntry {
    const entry = this.registry.get(name);
    if (!entry) throw new ModelNotFoundError(name, this.registry.list().map((e) => e.name));
    return entry;
  }

  /** Loads a model (once; concurrent callers share the load). A failed load is not cached. */
  load(name: string): Promise<LoadedModel> {
    let entry: ModelEntry;
    try {
      entry = this.resolve(name);
    } catch (err) {
      return Promise.reject(err);
    }
    const cached = this.models.get(entry.name);
    if (cached) return cached;
    const loading = (async () => {
      const t0 = performance.now();
      const backend = await this.backend();
      const native = await backend.loadModel(entry);
      const loadMs = performance.now() - t0;
      log.debug(`loaded ${entry.name} in ${loadMs.toFixed(0)} ms (context ${native.contextSize})`);
      return { entry, native, loadMs };
    })();
    this.models.set(entry.name, loading);
    loading.catch(() => this.models.delete(entry.name));
    return loading.catch((err) => {
      throw toShimmyError(err, ModelLoadError);
    });
  }

  /** Registered models with size and whether each is loaded. */
  list(): ModelInfo[] {
    return this.registry.list().map((e) => {
      let sizeBytes = 0;
      try {
        sizeBytes = statSync(e.path).size;
      } catch {}
      return { ...e, sizeBytes, loaded: this.models.has(e.name) };
    });
  }

  /** Names of models currently loaded. */
  loadedNames(): string[] {
    return [...this.models.keys()];
  }

  /**
   * Streams a generation: `token` events with text, then one `done` event with the full text,
   * finish reason and timings. Errors before the first token (unknown model, load failure, prompt
   * too long) are thrown from the first `next()`. Stopping the iteration early (`return()`, e.g. a
   * `break` or a disconnected client) or aborting `opts.signal` stops generation within one token.
   */
  async *generate(name: string, opts: GenerateOptions): AsyncGenerator<TokenEvent, void, undefined> {
    const tCall = performance.now();
    const model = await this.load(name);
    const tLoaded = performance.now();
    const controller = new AbortController();
    const onOuterAbort = () => controller.abort(opts.signal?.reason);
    if (opts.signal?.aborted) controller.abort(opts.signal.reason);
    opts.signal?.addEventListener("abort", onOuterAbort, { once: true });

    const pending: Array<{ text: string; logprobs?: TokenLogprob[] }> = [];
    let wake: (() => void) | undefined;
    let result: GenerateResult | undefined;
    let failure: unknown;
    let ended = false;
    const notify = () => {
      wake?.();
      wake = undefined;
    };
    const run = model.native
      .generate({ ...opts, signal: controller.signal }, (text, logprobs) => {
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
      yield { type: "done", model: model.entry.name, text: result!.text, finishReason: result!.finishReason, timings: result!.timings, ...(result!.toolCalls ? { toolCalls: result!.toolCalls } : {}), ...(result!.logprobs ? { logprobs: result!.logprobs } : {}) };
    } finally {
      opts.signal?.removeEventListener("abort", onOuterAbort);
      if (!ended) controller.abort(new Error("consumer stopped"));
      await run;
    }
  }

  /** Runs a generation to the end and returns its text and timings. */
  async complete(name: string, opts: GenerateOptions, onToken?: (text: string) => void): Promise<GenerateResult> {
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

  /** Unloads every model and stops llama.cpp. */
  async close(): Promise<void> {
    const models = [...this.models.values()];
    this.models.clear();
    for (const m of models) await (await m.catch(() => undefined))?.native.dispose();
    const backend = await this.backendPromise?.catch(() => undefined);
    this.backendPromise = undefined;
    await backend?.close();
  }
}
