/**
 * Transparent huge pages for llama.cpp's big CPU buffers (Linux).
 *
 * With 4 KiB pages, a model's weights span hundreds of thousands of page-table entries, and every token
 * reads all of them. On this project's 2-core Linux VM that showed as stalls: decode calls that now and
 * then take several times their median. llama.cpp alone (scripts/decode-steps.c, the 1.1 GiB bench
 * model read into memory, 2 threads) decoded at 30-31 tok/s with 43-75 ms of stalls per 64 tokens on
 * 4 KiB pages, and at 33-35 tok/s with 0-16 ms on 2 MiB transparent huge pages.
 *
 * Most Linux systems give huge pages only to memory that asks for them (THP `madvise`), and llama.cpp
 * does not ask. hugepages.c wraps ggml_aligned_malloc, the allocator of llama.cpp's CPU buffers, in
 * the import tables of the loaded ggml libraries: blocks of 16 MiB or more (weights read into memory,
 * KV cache, compute buffers) are marked MADV_HUGEPAGE before anything touches them, so they fill with
 * huge pages from the start (no copy, and fewer page faults while a model is read). A memory-mapped
 * model gets none: its file mapping is not affected, and its own buffers are allocated with the advice
 * paused (withHugepages).
 * Where it cannot apply (not Linux, THP `never`, anything unexpected), nothing changes;
 * `SHIMMY_HUGEPAGES=0` turns it off.
 */
import { readFileSync } from "node:fs";
import path from "node:path";
import { log } from "../log.ts";
import { hookSourceFile } from "./native-source.ts";
import { mappedFiles, replaceable, slotAddresses } from "./elf.ts";
import source from "./hugepages.c" with { type: "text" };
import { loadedGgml } from "./threadpool.ts";

export interface HugepagesState {
  installed: boolean;
  reason?: string;
  /** The system's THP mode (`always`, `madvise` or `never`), when known. */
  thp?: string;
}

interface Native {
  shimmy_hp_install: (slot: number, real: number, malloc: number, free: number) => number;
  shimmy_hp_marked_bytes: () => number | bigint;
  shimmy_hp_marked_blocks: () => number;
  shimmy_hp_previous: () => number | null;
  shimmy_hp_pause: (delta: number) => number;
  shimmy_hp_weights: (delta: number) => number;
  shimmy_hp_shifted_blocks: () => number;
}

let state: HugepagesState | undefined;
let native: Native | undefined;
const keep: unknown[] = [];

/** The THP mode from /sys/kernel/mm/transparent_hugepage/enabled ("always [madvise] never" -> madvise). */
export function thpMode(text?: string): string | undefined {
  try {
    return /\[(\w+)\]/.exec(text ?? readFileSync("/sys/kernel/mm/transparent_hugepage/enabled", "utf8"))?.[1];
  } catch {
    return undefined;
  }
}

/** Blocks and bytes marked for huge pages so far, blocks placed for weights (withWeightsAligned); why not installed, when not. */
export function hugepagesStats(): { installed: boolean; blocks: number; bytes: number; shifted: number; reason?: string } {
  if (!native) return { installed: false, blocks: 0, bytes: 0, shifted: 0, reason: state?.reason ?? "not installed yet" };
  return { installed: true, blocks: native.shimmy_hp_marked_blocks(), bytes: Number(native.shimmy_hp_marked_bytes()), shifted: native.shimmy_hp_shifted_blocks() };
}

/**
 * Whether weights read into memory should start 32 bytes past a 64-byte boundary (`setting`: true,
 * false, or "auto": on x86-64 only, where it was measured).
 *
 * Measured on the 2-core AMD EPYC VM with llama.cpp alone (llama-batched-bench, 4 streams of 16 tokens
 * after 70-token prompts, Q8_0, weights read into memory, the only change being where the weights buffer
 * starts): 4-token decode steps took 10-15% less with it 32 bytes past a 64-byte boundary than 64-byte
 * aligned, in 5 of 5 alternating pairs on the 22-layer bench model and 5 of 5 on a 12-layer one, and
 * whatever the alignment of ggml's work buffer (0, 16 or 32). One-token steps and prompts were the same.
 * A memory-mapped file puts the weights where the file has them (32 past in the bench model, 0 in the
 * 12-layer one): that was the whole of "mapped decodes 4 streams faster than read" on the bench model.
 * The cause inside the kernels is not established. ggml's CPU buffers need 32-byte alignment only.
 */
export function alignWeightsFor(setting: boolean | "auto" | undefined, arch: string = process.arch): boolean {
  return setting === undefined || setting === "auto" ? arch === "x64" : setting;
}

/** Whether big blocks are being placed for weights now (a model read into memory is loading; see withWeightsAligned). */
export function weightsAligning(): boolean {
  return native ? native.shimmy_hp_weights(0) > 0 : false;
}

/**
 * Runs `fn` (a model load reading its weights into memory) with big blocks placed 32 bytes past a
 * 64-byte boundary (see alignWeightsFor). Process-wide while it runs, like withHugepages' pause: a KV
 * cache allocated meanwhile by another model's context gets the same placement (still aligned as ggml
 * requires). Does nothing where the wrapper is not installed.
 */
export async function withWeightsAligned<T>(align: boolean, fn: () => Promise<T>): Promise<T> {
  const n = native;
  return align && n ? whileRaised((d) => n.shimmy_hp_weights(d), fn) : fn();
}

/** Whether the advice is paused now (a memory-mapped model is loading). */
export function hugepagesPaused(): boolean {
  return native ? native.shimmy_hp_pause(0) > 0 : false;
}

/**
 * Runs `fn` (a model load or a context creation) with the advice paused when `huge` is false: a model
 * whose weights stay memory-mapped gets its KV cache and compute buffers on ordinary pages. Measured on
 * the 2-core VM (1.1 GiB bench model mapped, one stream, alternating servers, runs of 8 and 3 rounds):
 * 44-72 ms per token with those buffers on huge pages against 35-48 ms without (llama-server, also
 * mapped: 34-42 ms). The cause is not established. The pause is process-wide: a model read into
 * memory that loads at the same time as a mapped one gets ordinary pages too (only its speed changes).
 */
export async function withHugepages<T>(huge: boolean, fn: () => Promise<T>): Promise<T> {
  const n = native;
  return huge || !n ? fn() : whileRaised((d) => n.shimmy_hp_pause(d), fn);
}

/** Raises one of hugepages.c's process-wide counters for the duration of `fn`, also when it throws. */
async function whileRaised<T>(counter: (delta: number) => number, fn: () => Promise<T>): Promise<T> {
  counter(1);
  try {
    return await fn();
  } finally {
    counter(-1);
  }
}

/**
 * Installs the wrapper, once per process, after node-llama-cpp has loaded llama.cpp (getLlama) and
 * before models are loaded. `gpu` picks the loaded build as threadpool.ts does. Never throws.
 */
export async function installHugepages(enabled = true, gpu: string | false = false): Promise<HugepagesState> {
  // Turned off: nothing is installed now. Once installed (by another engine of the process), the
  // wrapper stays for the life of the process.
  if (!enabled) {
    const off = { installed: false, reason: "turned off (SHIMMY_HUGEPAGES=0)" };
    log.debug(`hugepages: not used: ${off.reason}`);
    return off;
  }
  if (state) return state;
  state = await install(gpu);
  log.debug(state.installed ? `hugepages: llama.cpp's CPU buffers of 16 MiB or more ask for transparent huge pages (THP ${state.thp ?? "?"})` : `hugepages: not used: ${state.reason}`);
  return state;
}

async function install(gpu: string | false): Promise<HugepagesState> {
  if (process.platform !== "linux") return { installed: false, reason: `not available on ${process.platform}` };
  if (gpu !== false) return { installed: false, reason: `the ${gpu} backend keeps the weights in GPU memory` };
  const thp = thpMode();
  if (thp === "never") return { installed: false, reason: "the system's transparent huge pages are off (THP never)", thp };
  try {
    const { cc, dlopen, FFIType, read } = await import("bun:ffi");
    const maps = readFileSync("/proc/self/maps", "utf8");
    const { ggml, base } = loadedGgml(gpu, maps);
    if (!ggml || !base) return { installed: false, reason: "llama.cpp's ggml libraries are not loaded" };
    const dir = path.dirname(ggml);
    const libs = [...mappedFiles(maps)].filter((f) => path.dirname(f) === dir && /^libggml-(base|cpu[\w-]*)\.so/.test(path.basename(f)));
    const b = dlopen(base, { ggml_aligned_malloc: { args: [FFIType.u64], returns: FFIType.ptr } });
    keep.push(b);
    const real = (b.symbols.ggml_aligned_malloc as unknown as { ptr: number }).ptr;
    // The C library ggml's libraries allocate and free with (weights_block in hugepages.c). Without
    // glibc (musl), weights are not placed; the huge pages still apply.
    let malloc = 0;
    let free = 0;
    try {
      const libc = dlopen("libc.so.6", { malloc: { args: [FFIType.u64], returns: FFIType.ptr }, free: { args: [FFIType.ptr], returns: FFIType.void } });
      keep.push(libc);
      malloc = (libc.symbols.malloc as unknown as { ptr: number }).ptr;
      free = (libc.symbols.free as unknown as { ptr: number }).ptr;
    } catch {
      log.debug("hugepages: glibc not found; weights read into memory keep ggml's alignment");
    }
    const compiled = cc({
      source: hookSourceFile("hugepages", source),
      symbols: {
        shimmy_hp_install: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
        shimmy_hp_marked_bytes: { args: [], returns: FFIType.i64_fast },
        shimmy_hp_marked_blocks: { args: [], returns: FFIType.i32 },
        shimmy_hp_previous: { args: [], returns: FFIType.ptr },
        shimmy_hp_pause: { args: [FFIType.i32], returns: FFIType.i32 },
        shimmy_hp_weights: { args: [FFIType.i32], returns: FFIType.i32 },
        shimmy_hp_shifted_blocks: { args: [], returns: FFIType.i32 },
      },
    });
    keep.push(compiled);
    const s = compiled.symbols as unknown as Native;
    const previous = s.shimmy_hp_previous();
    const slots: number[] = [];
    for (const lib of libs) {
      const where = slotAddresses(lib, "ggml_aligned_malloc", maps);
      for (const slot of where?.slots ?? []) {
        if (!replaceable(read.ptr(slot as never), real, where!, previous)) return { installed: false, reason: `${path.basename(lib)}'s ggml_aligned_malloc slot holds an unexpected address`, thp };
        slots.push(slot);
      }
    }
    if (!slots.length) return { installed: false, reason: "no import slot of ggml_aligned_malloc found", thp };
    for (const slot of slots) {
      const rc = s.shimmy_hp_install(slot, real, malloc, free);
      if (rc !== 0) return { installed: false, reason: rc === 2 ? "an import table could not be made writable" : rc === 3 ? "no memory for the wrapper's counters" : `install returned ${rc}`, thp };
    }
    native = s;
    return { installed: true, thp };
  } catch (err) {
    return { installed: false, reason: (err as Error).message, thp };
  }
}
