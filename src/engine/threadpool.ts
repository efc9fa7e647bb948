/**
 * Persistent CPU threadpools for llama.cpp contexts.
 *
 * node-llama-cpp (3.21.1) never attaches a ggml threadpool to its contexts, so each decode call makes
 * ggml start and join fresh worker threads. llama.cpp's own tools attach one persistent pool per
 * context, whose workers poll for the next graph. On this project's 2-core machine that difference was
 * most of the gap to llama-server: node-llama-cpp decoded the 6-layer bench model at 36-64 tok/s on
 * 2 threads, and 66-84 with persistent pools (llama-bench: 91); see docs/PERFORMANCE.md.
 *
 * threadpool.c does what llama.cpp's tools do, from outside: it wraps the CPU backend registry's
 * get_proc_address so each context's CPU backend gets its own persistent pool (freed with the backend).
 * It is compiled at run time by bun:ffi's TinyCC (no system headers needed) and found through
 * /proc/self/maps, so it applies on Linux; elsewhere, or when anything does not match what it checks,
 * shimmy runs with node-llama-cpp's default and says why in the debug log. `SHIMMY_THREADPOOL=0`
 * turns it off.
 *
 * Pinning: by default a pool whose threads are as many as the CPUs the process may use keeps one
 * thread per CPU (ggml's strict placement, plus the calling thread moved to its CPU before each graph).
 * The addon's two worker threads take turns calling llama_decode; unpinned, the one that wakes can land
 * on the CPU where ggml's worker runs, and that decode stalls until the scheduler separates them. On
 * 2 cores (6-layer model, one stream) pinning cut the time lost to decodes over 1.3x the median from
 * 67 to 39 ms per 64 tokens (medians of 16 alternating rounds). `SHIMMY_PIN_THREADS` sets it (docs/PERFORMANCE.md).
 */
import { readFileSync } from "node:fs";
import path from "node:path";
import { log } from "../log.ts";
import { mappedFiles } from "./elf.ts";
import { nativeSourceFile } from "./native-source.ts";
import source from "./threadpool.c" with { type: "text" };

/**
 * ggml's polling level for the pools' idle workers (0..100): how long a worker spins for the next graph
 * before it sleeps. llama.cpp's tools use 50 (about 100 ms of spinning after every graph). On the 2-core
 * machine 0, 10 and 50 decoded alike (74-86 tok/s on the 6-layer model), and 0 burns no CPU between
 * requests and leaves the cores to other work; SHIMMY_THREADPOOL_POLL raises it.
 */
export const DEFAULT_POLL = 0;

export interface ThreadpoolState {
  /** True when contexts created from now on get persistent pools. */
  installed: boolean;
  /** Why not, when not installed. */
  reason?: string;
}

interface Shim {
  shimmy_tp_install: (reg: unknown, init: unknown, poll: number, pin: number) => number;
  shimmy_tp_created: () => number;
  shimmy_tp_live: () => number;
  shimmy_tp_refused: () => number;
  shimmy_tp_pinned: () => number;
}

let state: ThreadpoolState | undefined;
/** Kept for the life of the process: the compiled code must outlive every context that calls it. */
let shim: Shim | undefined;
const keep: unknown[] = [];

const REASONS: Record<number, string> = {
  1: "already installed",
  2: "the CPU backend or ggml_threadpool_params_init was not found",
  3: "the CPU backend registry has an unexpected API version",
  4: "the CPU backend registry does not name itself CPU",
  5: "the CPU backend does not provide the threadpool functions",
  6: "ggml_threadpool_params has an unexpected layout",
};

/**
 * The loaded ggml libraries' paths (Linux: from /proc/self/maps): node-llama-cpp's `libggml.v*.so`
 * (CPU build) or `libggml.<gpu>.v*.so` (GPU builds), and the `libggml-base.so` beside it. When a GPU
 * build failed to start and the CPU build was loaded after it, both are mapped: `gpu` picks.
 */
export function loadedGgml(gpu: string | false, maps?: string): { ggml?: string; base?: string } {
  const files = [...mappedFiles(maps ?? readFileSync("/proc/self/maps", "utf8"))].filter((f) => path.basename(f).startsWith("libggml"));
  const loaders = files.filter((f) => /^libggml(\.[a-z]+)?\.v[\d.]+\.so$|^libggml\.so(\.\d+)*$/.test(path.basename(f)));
  const tag = (f: string) => /^libggml\.([a-z]+)\.v/.exec(path.basename(f))?.[1] ?? false;
  const ggml = loaders.length === 1 ? loaders[0] : loaders.find((f) => tag(f) === gpu);
  const base = ggml ? files.find((f) => path.dirname(f) === path.dirname(ggml) && /^libggml-base\.so/.test(path.basename(f))) : undefined;
  return { ggml, base };
}

/**
 * Installs the persistent-pool wrappers into the loaded CPU backend, once per process. Call after
 * node-llama-cpp has loaded llama.cpp (getLlama) and before contexts are created; contexts that exist
 * already keep node-llama-cpp's behaviour. Never throws.
 */
export async function installThreadpools(enabled = true, poll = DEFAULT_POLL, gpu: string | false = false, pin: boolean | "auto" = "auto"): Promise<ThreadpoolState> {
  if (state) return state;
  state = await install(enabled, poll, gpu, pin);
  if (state.installed) log.debug(`threadpool: persistent pools per context (poll ${poll}; pinned: ${pin === "auto" ? "when threads = CPUs" : pin ? "always" : "never"})`);
  else log.debug(`threadpool: node-llama-cpp's default (a fresh set of threads per decode): ${state.reason}`);
  return state;
}

async function install(enabled: boolean, poll: number, gpu: string | false, pin: boolean | "auto"): Promise<ThreadpoolState> {
  if (!enabled) return { installed: false, reason: "turned off (SHIMMY_THREADPOOL=0)" };
  if (process.platform !== "linux") return { installed: false, reason: `not available on ${process.platform}` };
  try {
    const { cc, dlopen, FFIType } = await import("bun:ffi");
    const libs = loadedGgml(gpu);
    if (!libs.ggml || !libs.base) return { installed: false, reason: "llama.cpp's ggml libraries are not loaded" };
    const ggml = dlopen(libs.ggml, { ggml_backend_reg_by_name: { args: [FFIType.cstring], returns: FFIType.ptr } });
    const base = dlopen(libs.base, { ggml_threadpool_params_init: { args: [FFIType.ptr, FFIType.i32], returns: FFIType.void } });
    keep.push(ggml, base);
    const reg = ggml.symbols.ggml_backend_reg_by_name(Buffer.from("CPU\0"));
    if (!reg) return { installed: false, reason: "no CPU backend registered" };
    const compiled = cc({
      source: nativeSourceFile("threadpool", source),
      symbols: {
        shimmy_tp_install: { args: [FFIType.ptr, FFIType.ptr, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
        shimmy_tp_created: { args: [], returns: FFIType.i32 },
        shimmy_tp_live: { args: [], returns: FFIType.i32 },
        shimmy_tp_refused: { args: [], returns: FFIType.i32 },
        shimmy_tp_pinned: { args: [], returns: FFIType.i32 },
      },
    });
    keep.push(compiled);
    const s = compiled.symbols as unknown as Shim;
    const rc = s.shimmy_tp_install(reg, (base.symbols.ggml_threadpool_params_init as unknown as { ptr: unknown }).ptr, poll, pin === "auto" ? -1 : pin ? 1 : 0);
    if (rc !== 0) return { installed: false, reason: REASONS[rc] ?? `install returned ${rc}` };
    shim = s;
    return { installed: true };
  } catch (err) {
    return { installed: false, reason: (err as Error).message };
  }
}

/** Pools made so far, pools alive now (one per live multi-threaded CPU context), backends refused, pools made pinned. */
export function threadpoolStats(): { installed: boolean; created: number; live: number; refused: number; pinned: number } {
  if (!shim) return { installed: false, created: 0, live: 0, refused: 0, pinned: 0 };
  return { installed: true, created: shim.shimmy_tp_created(), live: shim.shimmy_tp_live(), refused: shim.shimmy_tp_refused(), pinned: shim.shimmy_tp_pinned() };
}
