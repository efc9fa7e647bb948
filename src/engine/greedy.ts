/**
 * Synchronous greedy sampling for shimmy's decode loop (stepper.ts).
 *
 * node-llama-cpp samples every token with an async native call: the sampling runs on a worker thread
 * and its result comes back through the event loop. Measured on 2 cores (6-layer bench-shape model,
 * 64-token greedy generations), that call took 170-250 us per token on average, against 13-19 us for a
 * step whose sampling cost nothing: 1.5-2% of a 12 ms decode step. For greedy requests (temperature 0,
 * no penalties, no logit bias, no grammar) sampling is only an argmax over the token's logits, which
 * llama.cpp keeps in host memory after the decode. It is taken here, synchronously, on the JavaScript
 * thread, between the decode and the next one (the logits cannot change then: the decode loop holds
 * the context's lock).
 *
 * Reading the logits needs llama.cpp's llama_context pointer, which node-llama-cpp (3.21.1) does not
 * expose. greedy.c wraps llama_n_threads in the addon's import table (its GOT entry, found from the
 * addon file's ELF relocations and /proc/self/maps), and the addon's synchronous `getThreads()` passes
 * the pointer through the wrapper. A pointer is used only after it checks out: llama.cpp must report
 * the context's size and thread count for it, and each context's first greedy token is sampled both ways and must match
 * (otherwise that context keeps node-llama-cpp's sampler). Linux only; elsewhere, or when anything
 * does not match, shimmy samples with node-llama-cpp and says why in the debug log.
 * `SHIMMY_SYNC_GREEDY=0` turns it off.
 *
 * The same checked pointer serves two more things on the JavaScript thread:
 *   - GreedyContext.decode: a generation step's llama_decode (stepper.ts's syncStep), instead of the
 *     addon's async decodeBatch, which wakes a worker thread and then the event loop per token
 *     (SHIMMY_SYNC_DECODE);
 *   - SyncSampler: sampled requests (a temperature, no penalties or logit bias) through llama.cpp's
 *     sampler chain, built as node-llama-cpp's AddonSampler builds it (llama.ts checks each request's
 *     first token against node-llama-cpp's sampler). Also turned off by SHIMMY_SYNC_GREEDY=0.
 */
import { readFileSync } from "node:fs";
import path from "node:path";
import { log } from "../log.ts";
import { hookSourceFile } from "./native-source.ts";
import source from "./greedy.c" with { type: "text" };
import { mappedFiles, replaceable, slotAddresses } from "./elf.ts";
import { loadedGgml } from "./threadpool.ts";

export interface GreedyState {
  installed: boolean;
  reason?: string;
}

interface Native {
  shimmy_gr_install: (slot: number, real: unknown) => number;
  shimmy_gr_arm: () => void;
  shimmy_gr_take: () => number | null;
  shimmy_gr_previous: () => number | null;
  shimmy_gr_decode: (decode: number, sync: number, ctx: number, n: number, tokens: Int32Array, pos: Int32Array, seq: Int32Array, flags: Uint8Array) => number;
  shimmy_gr_chain: (init: number) => number | null;
  shimmy_gr_sample: (apply: number, logitsIth: number, chain: number, ctx: number, idx: number, nVocab: number, buf: Uint8Array) => number;
}

interface Llama {
  llama_n_ctx: (ctx: number) => number;
  llama_n_threads: (ctx: number) => number;
  llama_get_logits_ith: (ctx: number, i: number) => number | null;
  llama_get_model: (ctx: number) => number | null;
  llama_model_get_vocab: (model: number) => number | null;
  llama_vocab_n_tokens: (vocab: number) => number;
  llama_decode: { ptr: number };
  llama_synchronize: { ptr: number };
  llama_sampler_chain_init: { ptr: number };
  llama_sampler_apply: { ptr: number };
  llama_sampler_chain_add: (chain: number, smpl: number | null) => void;
  llama_sampler_init_top_k: (k: number) => number | null;
  llama_sampler_init_top_p: (p: number, minKeep: number) => number | null;
  llama_sampler_init_min_p: (p: number, minKeep: number) => number | null;
  llama_sampler_init_temp: (t: number) => number | null;
  llama_sampler_init_dist: (seed: number) => number | null;
  llama_sampler_free: (smpl: number) => void;
}

/** The parts of node-llama-cpp's AddonContext used here. */
interface AddonContext {
  getThreads(): number;
  getContextSize(): number;
}

let state: GreedyState | undefined;
let native: Native | undefined;
let lib: Llama | undefined;
/** Kept for the life of the process: the compiled code is called from llama.cpp's import table. */
const keep: unknown[] = [];
/** Per node-llama-cpp context: its sampler, or null when it cannot have one. */
const contexts = new WeakMap<object, GreedyContext | null>();
let sampled = 0;
/** Tokens sampled by a SyncSampler (sampled requests). */
let chained = 0;
let toArrayBuffer: ((ptr: never, offset: number, length: number) => ArrayBuffer) | undefined;

/** Counters for tests and the debug log: tokens sampled synchronously, contexts that verified. */
export function greedyStats(): { installed: boolean; sampled: number; chained: number } {
  return { installed: !!native, sampled, chained };
}

/**
 * Installs the wrapper, once per process, after node-llama-cpp has loaded llama.cpp (getLlama), for
 * synchronous greedy sampling and for synchronous decode steps (stepper.ts), whichever this engine
 * uses (`use`). `gpu` picks the loaded build as threadpool.ts does. Never throws.
 */
export async function installGreedy(use: { sampling: boolean; decode: boolean } = { sampling: true, decode: true }, gpu: string | false = false): Promise<GreedyState> {
  const SAMPLING_OFF = "sampling: node-llama-cpp's sampler for every request";
  const DECODE_OFF = "decode: every step on the addon's worker threads";
  // Turned off for this engine: nothing is installed (another engine of the process may still install it).
  if (!use.sampling && !use.decode) {
    const off = { installed: false, reason: "turned off (SHIMMY_SYNC_GREEDY=0 and SHIMMY_SYNC_DECODE=0, or SHIMMY_DIRECT_DECODE=0)" };
    log.debug(`${SAMPLING_OFF}: ${off.reason}`);
    log.debug(`${DECODE_OFF}: ${off.reason}`);
    return off;
  }
  state ??= await install(gpu);
  if (!state.installed) {
    log.debug(`${SAMPLING_OFF}: ${state.reason}`);
    log.debug(`${DECODE_OFF}: ${state.reason}`);
  } else {
    log.debug(use.sampling ? "sampling: greedy requests sampled synchronously" : `${SAMPLING_OFF}: turned off (SHIMMY_SYNC_GREEDY=0)`);
    log.debug(use.decode ? "decode: short generation steps on the JavaScript thread" : `${DECODE_OFF}: turned off (SHIMMY_SYNC_DECODE=0)`);
  }
  return state;
}

async function install(gpu: string | false): Promise<GreedyState> {
  if (process.platform !== "linux") return { installed: false, reason: `not available on ${process.platform}` };
  try {
    const ffi = await import("bun:ffi");
    const { cc, dlopen, FFIType, read } = ffi;
    const maps = readFileSync("/proc/self/maps", "utf8");
    const { ggml } = loadedGgml(gpu, maps);
    if (!ggml) return { installed: false, reason: "llama.cpp's ggml libraries are not loaded" };
    const dir = path.dirname(ggml);
    const files = [...mappedFiles(maps)].filter((f) => path.dirname(f) === dir);
    const addon = files.find((f) => path.basename(f) === "llama-addon.node");
    const llamaLib = files.find((f) => /^libllama(\.v[\d.]+)?\.so/.test(path.basename(f)));
    if (!addon || !llamaLib) return { installed: false, reason: "node-llama-cpp's addon or libllama is not loaded" };
    const where = slotAddresses(addon, "llama_n_threads", maps);
    if (where?.slots.length !== 1) return { installed: false, reason: `the addon has ${where?.slots.length ?? 0} import slots for llama_n_threads` };
    const slot = where.slots[0]!;
    const l = dlopen(llamaLib, {
      llama_n_ctx: { args: [FFIType.ptr], returns: FFIType.u32 },
      llama_n_threads: { args: [FFIType.ptr], returns: FFIType.i32 },
      llama_get_logits_ith: { args: [FFIType.ptr, FFIType.i32], returns: FFIType.ptr },
      llama_get_model: { args: [FFIType.ptr], returns: FFIType.ptr },
      llama_model_get_vocab: { args: [FFIType.ptr], returns: FFIType.ptr },
      llama_vocab_n_tokens: { args: [FFIType.ptr], returns: FFIType.i32 },
      llama_decode: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
      llama_synchronize: { args: [FFIType.ptr], returns: FFIType.void },
      // Called from greedy.c (struct arguments); declared for their addresses.
      llama_sampler_chain_init: { args: [FFIType.u8], returns: FFIType.ptr },
      llama_sampler_apply: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.void },
      llama_sampler_chain_add: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.void },
      llama_sampler_init_top_k: { args: [FFIType.i32], returns: FFIType.ptr },
      llama_sampler_init_top_p: { args: [FFIType.f32, FFIType.u64], returns: FFIType.ptr },
      llama_sampler_init_min_p: { args: [FFIType.f32, FFIType.u64], returns: FFIType.ptr },
      llama_sampler_init_temp: { args: [FFIType.f32], returns: FFIType.ptr },
      llama_sampler_init_dist: { args: [FFIType.u32], returns: FFIType.ptr },
      llama_sampler_free: { args: [FFIType.ptr], returns: FFIType.void },
    });
    keep.push(l);
    const real = (l.symbols.llama_n_threads as unknown as { ptr: number }).ptr;
    const compiled = cc({
      source: hookSourceFile("greedy", source),
      symbols: {
        shimmy_gr_install: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
        shimmy_gr_arm: { args: [], returns: FFIType.void },
        shimmy_gr_take: { args: [], returns: FFIType.ptr },
        shimmy_gr_previous: { args: [], returns: FFIType.ptr },
        shimmy_gr_decode: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.i32, FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
        shimmy_gr_chain: { args: [FFIType.ptr], returns: FFIType.ptr },
        shimmy_gr_sample: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.i32, FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
      },
    });
    keep.push(compiled);
    const s = compiled.symbols as unknown as Native;
    if (!replaceable(read.ptr(slot as never), real, where, s.shimmy_gr_previous())) return { installed: false, reason: "the addon's llama_n_threads slot holds an unexpected address" };
    const rc = s.shimmy_gr_install(slot, real);
    if (rc !== 0) return { installed: false, reason: rc === 2 ? "the addon's import table could not be made writable" : `install returned ${rc}` };
    native = s;
    lib = l.symbols as unknown as Llama;
    toArrayBuffer = ffi.toArrayBuffer;
    return { installed: true };
  } catch (err) {
    return { installed: false, reason: (err as Error).message };
  }
}

/**
 * The index of the largest value, compared as llama.cpp's greedy sampler compares (the first one wins
 * ties). 25 us for 32000 logits on this machine, against 75 us for the same loop compiled by TinyCC.
 */
export function argmax(values: Float32Array): number {
  let best = values[0]!;
  let at = 0;
  for (let k = 1; k < values.length; k++) {
    const v = values[k]!;
    if (v > best) {
      best = v;
      at = k;
    }
  }
  return at;
}

/** Synchronous greedy sampling on one context, once its pointer has checked out. */
export class GreedyContext {
  /** True once a token sampled both ways matched. */
  private verified = false;
  /** A view of the last logits row read (llama.cpp reallocates its output buffer only to grow it: a new address gets a new view). */
  private at = 0;
  private view: Float32Array | undefined;
  /** llama_token_data per vocabulary entry (id, logit, p: 12 bytes each), refilled by every SyncSampler.sample. */
  private candidates: Uint8Array | undefined;
  constructor(
    private readonly ctx: number,
    private readonly nVocab: number,
    private readonly onMismatch: () => void,
  ) {}

  /** Decodes a batch on the calling thread (llama_decode + llama_synchronize); returns llama_decode's result. */
  decode(n: number, tokens: Int32Array, pos: Int32Array, seq: Int32Array, flags: Uint8Array): number {
    return native!.shimmy_gr_decode(lib!.llama_decode.ptr, lib!.llama_synchronize.ptr, this.ctx, n, tokens, pos, seq, flags);
  }

  /**
   * A sampler for this context that samples on the calling thread: llama.cpp's chain as node-llama-cpp's
   * AddonSampler builds it for `config` (node-llama-cpp's resolved sampler config; temperature above
   * 0, no penalties, logit bias, grammar or XTC). Undefined if llama.cpp refuses a sampler.
   */
  sampler(config: SamplerConfig): SyncSampler | undefined {
    const l = lib!;
    const chain = native!.shimmy_gr_chain(l.llama_sampler_chain_init.ptr);
    if (!chain) return undefined;
    // AddonSampler's order and conditions (applyConfig + rebuildChainIfNeeded), with its float32 compares.
    const parts: Array<number | null> = [];
    const topK = config.topK | 0;
    parts.push(l.llama_sampler_init_top_k(topK <= 0 ? this.nVocab : Math.min(topK, this.nVocab)));
    const topP = Math.fround(config.topP);
    if (topP !== 1 && topP >= 0 && topP <= 1) parts.push(l.llama_sampler_init_top_p(topP, 1));
    if (Math.fround(config.minP) > 0) parts.push(l.llama_sampler_init_min_p(config.minP, 1));
    parts.push(l.llama_sampler_init_temp(config.temperature));
    parts.push(l.llama_sampler_init_dist(config.seed >>> 0));
    // The chain owns what is added to it; a refused part frees the chain and the rest.
    for (const p of parts) if (p) l.llama_sampler_chain_add(chain, p);
    if (parts.some((p) => !p)) {
      l.llama_sampler_free(chain);
      return undefined;
    }
    // One candidates buffer per context: it is used only inside a synchronous sample call.
    this.candidates ??= new Uint8Array(this.nVocab * 12);
    return new SyncSampler(this.ctx, this.nVocab, chain, this.candidates);
  }

  /** The greedy token of output row `i` of the context's last decode; -1 when llama.cpp has no logits for it. */
  private argmax(i: number): number {
    const p = lib!.llama_get_logits_ith(this.ctx, i);
    if (!p) return -1;
    if (p !== this.at || !this.view) {
      this.view = new Float32Array(toArrayBuffer!(p as never, 0, this.nVocab * 4));
      this.at = p;
    }
    return argmax(this.view);
  }

  /**
   * The greedy token of the last decode's output row `i`. Until verified, the native sampler's answer
   * (`fallback`) is awaited too and must agree; if it does not, this context stops being used.
   */
  sample(i: number, fallback: () => Promise<number>): number | Promise<number> {
    const token = this.argmax(i);
    if (this.verified) {
      sampled++;
      return token;
    }
    return fallback().then((expected) => {
      if (expected === token && token >= 0) this.verified = true;
      else {
        log.debug(`sampling: synchronous greedy token ${token} differs from node-llama-cpp's ${expected}; this context keeps node-llama-cpp's sampler`);
        this.onMismatch();
      }
      return expected;
    });
  }
}

/** The fields of node-llama-cpp's resolved sampler config that a SyncSampler uses. */
export interface SamplerConfig {
  temperature: number;
  topK: number;
  topP: number;
  minP: number;
  seed: number;
}

/** llama.cpp's sampler chain applied on the calling thread (GreedyContext.sampler). */
export class SyncSampler {
  private chain: number | undefined;
  constructor(
    private readonly ctx: number,
    private readonly nVocab: number,
    chain: number,
    /** The context's candidates buffer (GreedyContext.candidates). */
    private readonly buf: Uint8Array,
  ) {
    this.chain = chain;
  }

  /** The token the chain picks from output row `i` of the context's last decode; -1 when none. */
  sample(i: number): number {
    if (this.chain === undefined) throw new Error("sampler disposed");
    chained++;
    return native!.shimmy_gr_sample(lib!.llama_sampler_apply.ptr, (lib!.llama_get_logits_ith as unknown as { ptr: number }).ptr, this.chain, this.ctx, i, this.nVocab, this.buf);
  }

  dispose(): void {
    if (this.chain !== undefined) lib!.llama_sampler_free(this.chain);
    this.chain = undefined;
  }
}

/**
 * The synchronous greedy sampler of a node-llama-cpp context (`context._ctx`), or undefined when it
 * cannot have one (not installed, or its llama_context pointer does not check out).
 */
export function greedyFor(addon: AddonContext): GreedyContext | undefined {
  if (!native || !lib) return undefined;
  const known = contexts.get(addon);
  if (known !== undefined) return known ?? undefined;
  let made: GreedyContext | null = null;
  try {
    native.shimmy_gr_arm();
    const threads = addon.getThreads();
    const ctx = native.shimmy_gr_take();
    if (ctx && lib.llama_n_ctx(ctx) === addon.getContextSize() && lib.llama_n_threads(ctx) === threads) {
      const model = lib.llama_get_model(ctx);
      const vocab = model ? lib.llama_model_get_vocab(model) : null;
      const nVocab = vocab ? lib.llama_vocab_n_tokens(vocab) : 0;
      if (nVocab > 0) made = new GreedyContext(ctx, nVocab, () => contexts.set(addon, null));
    }
    if (!made) log.debug("sampling: a context's llama.cpp pointer did not check out; it keeps node-llama-cpp's sampler");
  } catch (err) {
    log.debug(`sampling: ${(err as Error).message}`);
  }
  contexts.set(addon, made);
  return made ?? undefined;
}
