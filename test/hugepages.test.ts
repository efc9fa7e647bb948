/**
 * Transparent huge pages for llama.cpp's big CPU buffers (src/engine/hugepages.ts): blocks of 16 MiB
 * or more that ggml allocates ask for huge pages before they are touched; small ones are left alone.
 * And weights read into memory start 32 bytes past a 64-byte boundary (alignWeightsFor).
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { Engine } from "../src/engine/engine.ts";
import path from "node:path";
import { alignWeightsFor, hugepagesPaused, hugepagesStats, thpMode, weightsAligning, withHugepages, withWeightsAligned } from "../src/engine/hugepages.ts";
import { writeTinyModel } from "../src/gguf/presets.ts";
import { ModelRegistry } from "../src/engine/registry.ts";
import { loadedGgml } from "../src/engine/threadpool.ts";
import { makeFixtures } from "./helpers.ts";

let fx: Awaited<ReturnType<typeof makeFixtures>>;
let engine: Engine;

beforeAll(async () => {
  fx = await makeFixtures();
  engine = new Engine(new ModelRegistry({ modelDirs: [fx.dir] }, fx.dir), { gpu: "cpu", threads: 1, threadsExplicit: true, ctxSize: 512, chatTemplate: "auto", parallel: 1 });
  await engine.load("tiny");
});
afterAll(async () => {
  await engine.close();
});

test("thpMode reads the bracketed mode", () => {
  expect(thpMode("always [madvise] never")).toBe("madvise");
  expect(thpMode("[always] madvise never")).toBe("always");
  expect(thpMode("always madvise [never]")).toBe("never");
  expect(thpMode("garbage")).toBeUndefined();
});

test("a ggml CPU buffer of 16 MiB or more asks for huge pages and gets them; a small one does not", async () => {
  const thp = thpMode();
  if (process.platform !== "linux" || thp === "never" || thp === undefined) return;
  expect(hugepagesStats()).toMatchObject({ installed: true });
  const { dlopen, FFIType, toArrayBuffer } = await import("bun:ffi");
  const base = loadedGgml(false).base!;
  const g = dlopen(base, {
    ggml_backend_cpu_buffer_type: { args: [], returns: FFIType.ptr },
    ggml_backend_buft_alloc_buffer: { args: [FFIType.ptr, FFIType.u64], returns: FFIType.ptr },
    ggml_backend_buffer_get_base: { args: [FFIType.ptr], returns: FFIType.ptr },
    ggml_backend_buffer_free: { args: [FFIType.ptr], returns: FFIType.void },
  });
  const huge = () => Number(/AnonHugePages:\s+(\d+)/.exec(readFileSync("/proc/self/smaps_rollup", "utf8"))![1]) * 1024;
  try {
    const buft = g.symbols.ggml_backend_cpu_buffer_type();
    // Allocated through ggml's own allocator (ggml_aligned_malloc, called through its import table).
    const before = hugepagesStats();
    const small = g.symbols.ggml_backend_buft_alloc_buffer(buft, 1 << 20);
    // The 1 MiB buffer is not marked.
    expect(hugepagesStats()).toEqual(before);
    const size = 64 * 1024 * 1024;
    const buf = g.symbols.ggml_backend_buft_alloc_buffer(buft, size);
    const after = hugepagesStats();
    expect(after.blocks).toBe(before.blocks + 1);
    expect(after.bytes - before.bytes).toBeGreaterThanOrEqual(size - 4 * 1024 * 1024);
    // Touching it faults in huge pages (THP madvise or always).
    const hugeBefore = huge();
    new Uint8Array(toArrayBuffer(g.symbols.ggml_backend_buffer_get_base(buf)!, 0, size)).fill(1);
    expect(huge() - hugeBefore).toBeGreaterThanOrEqual(32 * 1024 * 1024);
    g.symbols.ggml_backend_buffer_free(buf);
    g.symbols.ggml_backend_buffer_free(small);
  } finally {
    g.close();
  }
});

test("withHugepages(false) leaves the buffers allocated meanwhile on ordinary pages (a memory-mapped model's KV cache and compute buffers)", async () => {
  const thp = thpMode();
  if (process.platform !== "linux" || thp === "never" || thp === undefined) return;
  const { dlopen, FFIType } = await import("bun:ffi");
  const g = dlopen(loadedGgml(false).base!, {
    ggml_backend_cpu_buffer_type: { args: [], returns: FFIType.ptr },
    ggml_backend_buft_alloc_buffer: { args: [FFIType.ptr, FFIType.u64], returns: FFIType.ptr },
    ggml_backend_buffer_free: { args: [FFIType.ptr], returns: FFIType.void },
  });
  const size = 32 * 1024 * 1024;
  const alloc = async () => g.symbols.ggml_backend_buft_alloc_buffer(g.symbols.ggml_backend_cpu_buffer_type(), size);
  try {
    const before = hugepagesStats().blocks;
    const plain = await withHugepages(false, alloc);
    expect(hugepagesStats().blocks).toBe(before);
    // The pause ends with the call, also when it throws.
    await expect(withHugepages(false, () => Promise.reject(new Error("load failed")))).rejects.toThrow("load failed");
    const huge = await withHugepages(true, alloc);
    expect(hugepagesStats().blocks).toBe(before + 1);
    const after = await alloc();
    expect(hugepagesStats().blocks).toBe(before + 2);
    for (const b of [plain, huge, after]) g.symbols.ggml_backend_buffer_free(b);
  } finally {
    g.close();
  }
});

test("a memory-mapped model loads with the advice paused; a model read into memory does not", async () => {
  const thp = thpMode();
  if (process.platform !== "linux" || thp === "never" || thp === undefined) return;
  for (const mmap of [true, false]) {
    // node-llama-cpp reports load progress from inside the load: record whether the advice was paused then.
    const seen: boolean[] = [];
    const e = new Engine(new ModelRegistry({ modelDirs: [fx.dir] }, fx.dir), { gpu: "cpu", threads: 1, threadsExplicit: true, ctxSize: 512, chatTemplate: "auto", parallel: 1, mmap, onLoadProgress: () => void seen.push(hugepagesPaused()) });
    try {
      await e.load("tiny");
    } finally {
      await e.close();
    }
    expect(seen.length).toBeGreaterThan(1);
    expect(seen.slice(0, -1).every((p) => p === mmap)).toBe(true);
    // The pause ends with the load (the last report comes after it).
    expect(seen.at(-1)).toBe(false);
    expect(hugepagesPaused()).toBe(false);
  }
});

test("alignWeightsFor: auto places the weights on x86-64 only; an explicit setting wins", () => {
  expect(alignWeightsFor("auto", "x64")).toBe(true);
  expect(alignWeightsFor(undefined, "x64")).toBe(true);
  expect(alignWeightsFor("auto", "arm64")).toBe(false);
  expect(alignWeightsFor(true, "arm64")).toBe(true);
  expect(alignWeightsFor(false, "x64")).toBe(false);
});

test("withWeightsAligned starts a big ggml CPU buffer 32 bytes past a 64-byte boundary; it fills and frees like any other", async () => {
  const thp = thpMode();
  if (process.platform !== "linux" || thp === "never" || thp === undefined) return;
  const { dlopen, FFIType, toArrayBuffer } = await import("bun:ffi");
  const g = dlopen(loadedGgml(false).base!, {
    ggml_backend_cpu_buffer_type: { args: [], returns: FFIType.ptr },
    ggml_backend_buft_alloc_buffer: { args: [FFIType.ptr, FFIType.u64], returns: FFIType.ptr },
    ggml_backend_buffer_get_base: { args: [FFIType.ptr], returns: FFIType.ptr },
    ggml_backend_buffer_get_size: { args: [FFIType.ptr], returns: FFIType.u64 },
    ggml_backend_buffer_free: { args: [FFIType.ptr], returns: FFIType.void },
  });
  const size = 32 * 1024 * 1024;
  const alloc = async (bytes = size) => g.symbols.ggml_backend_buft_alloc_buffer(g.symbols.ggml_backend_cpu_buffer_type(), bytes)!;
  const base = (b: ReturnType<typeof g.symbols.ggml_backend_buft_alloc_buffer>) => Number(g.symbols.ggml_backend_buffer_get_base(b));
  try {
    const before = hugepagesStats().shifted;
    const placed = await withWeightsAligned(true, () => alloc());
    expect(hugepagesStats().shifted).toBe(before + 1);
    expect(base(placed) % 64).toBe(32);
    expect(Number(g.symbols.ggml_backend_buffer_get_size(placed))).toBe(size);
    // The whole buffer is usable from its base (the block is 32 bytes bigger than asked).
    const bytes = new Uint8Array(toArrayBuffer(g.symbols.ggml_backend_buffer_get_base(placed)!, 0, size));
    bytes.fill(7);
    expect(bytes[size - 1]).toBe(7);
    // Small blocks, blocks outside the call, and withWeightsAligned(false) keep ggml's 64-byte alignment.
    const small = await withWeightsAligned(true, () => alloc(1 << 20));
    const after = await alloc();
    const off = await withWeightsAligned(false, () => alloc());
    expect(hugepagesStats().shifted).toBe(before + 1);
    for (const b of [small, after, off]) expect(base(b) % 64).toBe(0);
    // The flag ends with the call, also when it throws.
    await expect(withWeightsAligned(true, () => Promise.reject(new Error("load failed")))).rejects.toThrow("load failed");
    expect(weightsAligning()).toBe(false);
    for (const b of [placed, small, after, off]) g.symbols.ggml_backend_buffer_free(b);
  } finally {
    g.close();
  }
});

test("a model read into memory gets its weights placed (x86-64), generates the same tokens as unplaced or mapped, and a mapped load places nothing", async () => {
  const thp = thpMode();
  if (process.platform !== "linux" || thp === "never" || thp === undefined) return;
  // 43 MB of weights: one buffer over glibc's largest mmap threshold (32 MiB), so malloc maps it (a
  // smaller one may come from the heap, anywhere, and then is not placed).
  const dir = path.join(fx.dir, "wide");
  require("node:fs").mkdirSync(dir);
  await writeTinyModel(path.join(dir, "wide.gguf"), { seed: 3, shape: { embd: 640, ff: 1792, heads: 10, kvHeads: 10 } });
  const outputs: string[] = [];
  for (const [opts, aligned] of [[{}, process.arch === "x64"], [{ alignWeights: false }, false], [{ mmap: true }, false]] as const) {
    const seen: boolean[] = [];
    const e = new Engine(new ModelRegistry({ modelDirs: [dir] }, dir), { gpu: "cpu", threads: 1, threadsExplicit: true, ctxSize: 256, chatTemplate: "auto", parallel: 1, ...opts, onLoadProgress: () => void seen.push(weightsAligning()) });
    try {
      const loaded = await e.load("wide");
      expect((loaded.native as unknown as { weightsAligned: boolean }).weightsAligned).toBe(aligned);
      expect(seen.slice(0, -1).every((a) => a === aligned)).toBe(true);
      const r = await e.complete("wide", { prompt: "hello world", temperature: 0, maxTokens: 16 });
      expect(r.timings.generatedTokens).toBe(16);
      outputs.push(r.text);
    } finally {
      await e.close();
    }
  }
  expect(weightsAligning()).toBe(false);
  expect(new Set(outputs).size).toBe(1);
});
