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
let toArrayBuffer: ((ptr: never, offset: number, length: number) => ArrayBuffer) | undefined;

/** Counters for tests and the debug log: tokens sampled synchronously, contexts that verified. */
export function greedyStats(): { installed: boolean; sampled: number } {
  return { installed: !!native, sampled };
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
  constructor(
    private readonly ctx: number,
    private readonly nVocab: number,
    private readonly onMismatch: () => void,
  ) {}

  /** Decodes a batch on the calling thread (llama_decode + llama_synchronize); returns llama_decode's result. */
  decode(n: number, tokens: Int32Array, pos: Int32Array, seq: Int32Array, flags: Uint8Array): number {
    return native!.shimmy_gr_decode(lib!.llama_decode.ptr, lib!.llama_synchronize.ptr, this.ctx, n, tokens, pos, seq, flags);
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
