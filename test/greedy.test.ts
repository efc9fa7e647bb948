/**
 * Synchronous greedy sampling (src/engine/greedy.ts): greedy requests on shimmy's decode loop take
 * the argmax of llama.cpp's logits on the JavaScript thread instead of an async native sampling call.
 * It must give exactly what node-llama-cpp's sampler gives, be used only for greedy requests, and
 * step aside for a context whose pointer or answer does not check out.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import path from "node:path";
import { Engine } from "../src/engine/engine.ts";
import { argmax, GreedyContext, greedyFor, greedyStats, SyncSampler } from "../src/engine/greedy.ts";
import { importSlots, replaceable } from "../src/engine/elf.ts";
import { ModelRegistry } from "../src/engine/registry.ts";
import type { GenerateOptions } from "../src/engine/types.ts";
import { makeFixtures } from "./helpers.ts";

let fx: Awaited<ReturnType<typeof makeFixtures>>;
let direct: Engine;
let stock: Engine;
const make = (directDecode: boolean) => new Engine(new ModelRegistry({ modelDirs: [fx.dir] }, fx.dir), { gpu: "cpu", threads: 1, threadsExplicit: true, ctxSize: 1024, chatTemplate: "auto", parallel: 2, directDecode });

beforeAll(async () => {
  fx = await makeFixtures();
  direct = make(true);
  stock = make(false);
});
afterAll(async () => {
  await direct.close();
  await stock.close();
});

type Addon = { getThreads(): number; getContextSize(): number; sampleToken(i: number, s: unknown): Promise<number> };
async function addonOf(engine: Engine): Promise<Addon> {
  const loaded = await engine.load("tiny");
  return (loaded.native as unknown as { pool: { context: { _ctx: Addon } } }).pool.context._ctx;
}

test("argmax picks the first of equal maxima, as llama.cpp's greedy sampler does", () => {
  expect(argmax(Float32Array.of(1, 3, 3, 2))).toBe(1);
  expect(argmax(Float32Array.of(-Infinity, -1, -2))).toBe(1);
  expect(argmax(Float32Array.of(5))).toBe(0);
});

test("an import slot is taken over only from the function itself, its own library's stub, or an earlier shimmy wrapper", () => {
  const where = { start: 0x1000, end: 0x9000 };
  expect(replaceable(0x50000, 0x50000, where, null)).toBe(true);
  expect(replaceable(0x2000, 0x50000, where, null)).toBe(true);
  expect(replaceable(0x70000, 0x50000, where, 0x70000)).toBe(true);
  // Someone else's hook, or an unreadable slot: left alone.
  expect(replaceable(0x70000, 0x50000, where, null)).toBe(false);
  expect(replaceable(0x70000, 0x50000, where, 0x80000)).toBe(false);
  expect(replaceable(null, 0x50000, where, null)).toBe(false);
});

test("the wrapper is installed on Linux, through the addon's one import slot for llama_n_threads", async () => {
  await direct.load("tiny");
  expect(greedyStats().installed).toBe(process.platform === "linux");
  if (process.platform !== "linux") return;
  const addon = readFileSync("/proc/self/maps", "utf8")
    .split("\n")
    .map((l) => l.slice(l.indexOf("/")))
    .find((f) => path.basename(f) === "llama-addon.node")!;
  const elf = readFileSync(addon);
  expect(importSlots(elf, "llama_n_threads")).toHaveLength(1);
  expect(importSlots(elf, "llama_n_ctx")).toHaveLength(1);
  // Not imported by the addon; and anything that is not an ELF64 file has none.
  expect(importSlots(elf, "llama_no_such_function")).toEqual([]);
  expect(importSlots(new TextEncoder().encode("not an ELF file at all, just text that is long enough........"), "llama_n_threads")).toEqual([]);
});

test("greedy requests are sampled synchronously and give exactly what node-llama-cpp's sampler gives", async () => {
  if (process.platform !== "linux") return;
  const cases: GenerateOptions[] = [
    { prompt: "hello world", temperature: 0, maxTokens: 40 },
    { messages: [{ role: "user", content: "hi there" }], temperature: 0, maxTokens: 40 },
    { prompt: "hello world", temperature: 0, maxTokens: 40, stop: ["e"] },
  ];
  for (const c of cases) {
    const before = greedyStats().sampled;
    const a = await direct.complete("tiny", c);
    const b = await stock.complete("tiny", c);
    expect({ text: a.text, finish: a.finishReason, n: a.timings.generatedTokens }).toEqual({ text: b.text, finish: b.finishReason, n: b.timings.generatedTokens });
    // Every token but (on a context's first use) the one sampled both ways to check the pointer.
    expect(greedyStats().sampled - before).toBeGreaterThanOrEqual(a.timings.generatedTokens - 1);
  }
  // Two greedy requests at once (one batch, two output rows) give what they give through node-llama-cpp.
  const both = (e: Engine) => Promise.all(["the sea", "a cat"].map((prompt) => e.complete("tiny", { prompt, temperature: 0, maxTokens: 24 })));
  const before = greedyStats().sampled;
  const [x, y] = [await both(direct), await both(stock)];
  expect(x.map((r) => r.text)).toEqual(y.map((r) => r.text));
  expect(greedyStats().sampled - before).toBeGreaterThanOrEqual(44);
});

test("sampled requests without penalties or logit bias run llama.cpp's sampler chain synchronously and give exactly what node-llama-cpp's sampler gives", async () => {
  if (process.platform !== "linux") return;
  // Settings that change the chain node-llama-cpp builds: top-k off (0) or above the vocabulary, top-p
  // off (1) or 0, min-p on, high and low temperatures, chat, stops, seeds past 2^32.
  const cases: GenerateOptions[] = [
    { prompt: "once upon", temperature: 0.8, seed: 42, maxTokens: 24 },
    { prompt: "once upon", temperature: 1.5, seed: 7, topK: 0, topP: 1, maxTokens: 24 },
    { prompt: "the sea", temperature: 1, seed: 3, topK: 100000, topP: 0, maxTokens: 24 },
    { prompt: "the sea", temperature: 0.3, seed: 2 ** 32 + 5, minP: 0.05, topP: 0.5, maxTokens: 24 },
    { messages: [{ role: "user", content: "hi there" }], temperature: 0.9, seed: 11, maxTokens: 24, stop: ["e"] },
  ];
  for (const c of cases) {
    const before = greedyStats();
    const a = await direct.complete("tiny", c);
    const b = await stock.complete("tiny", c);
    expect({ text: a.text, finish: a.finishReason, n: a.timings.generatedTokens }).toEqual({ text: b.text, finish: b.finishReason, n: b.timings.generatedTokens });
    const after = greedyStats();
    expect(after.chained - before.chained).toBeGreaterThanOrEqual(a.timings.generatedTokens);
    expect(after.sampled).toBe(before.sampled);
  }
  // Two at once: their first step samples both, so both stay on node-llama-cpp's sampler (its async
  // calls run in parallel), with the same text.
  const both = (e: Engine) => Promise.all([1, 2].map((seed) => e.complete("tiny", { prompt: "a cat", temperature: 0.9, seed, maxTokens: 20 })));
  const before = greedyStats().chained;
  expect((await both(direct)).map((r) => r.text)).toEqual((await both(stock)).map((r) => r.text));
  expect(greedyStats().chained).toBe(before);
});

test("a sampled request whose first synchronous token disagrees with node-llama-cpp's continues on node-llama-cpp's sampler", async () => {
  if (process.platform !== "linux") return;
  const c: GenerateOptions = { prompt: "once upon", temperature: 0.8, seed: 99, maxTokens: 20 };
  const own = SyncSampler.prototype.sample;
  const before = greedyStats().chained;
  SyncSampler.prototype.sample = function (this: SyncSampler, i: number) {
    own.call(this, i);
    return 0;
  };
  let a;
  try {
    a = await direct.complete("tiny", c);
  } finally {
    SyncSampler.prototype.sample = own;
  }
  expect(a.text).toBe((await stock.complete("tiny", c)).text);
  // Only the first token went through the chain.
  expect(greedyStats().chained - before).toBe(1);
});

test("penalised and logit-biased requests keep node-llama-cpp's sampler", async () => {
  const cases: GenerateOptions[] = [
    { prompt: "once upon", temperature: 0.8, seed: 42, repeatPenalty: 1.2, maxTokens: 20 },
    { prompt: "the sea", temperature: 0, repeatPenalty: 1.3, maxTokens: 20 },
    { prompt: "the sea", temperature: 0, logitBias: { "5": 2 }, maxTokens: 20 },
  ];
  for (const c of cases) {
    const before = greedyStats();
    const a = await direct.complete("tiny", c);
    const b = await stock.complete("tiny", c);
    expect(a.text).toBe(b.text);
    expect(greedyStats().sampled).toBe(before.sampled);
    expect(greedyStats().chained).toBe(before.chained);
  }
});

test("on a context's first token, a synchronous answer that disagrees with node-llama-cpp's gives node-llama-cpp's token and gives up on the context", async () => {
  if (process.platform !== "linux") return;
  const addon = await addonOf(direct);
  await direct.complete("tiny", { prompt: "hello", temperature: 0, maxTokens: 4 });
  const real = greedyFor(addon)!;
  expect(real).toBeDefined();
  // The same llama_context read as if its vocabulary had 1 token: its argmax is always token 0.
  let mismatched = 0;
  const wrong = new GreedyContext((real as unknown as { ctx: number }).ctx, 1, () => mismatched++);
  expect(await wrong.sample(0, async () => 7)).toBe(7);
  expect(mismatched).toBe(1);
  // A context whose first token matches answers synchronously from then on.
  const right = new GreedyContext((real as unknown as { ctx: number }).ctx, (real as unknown as { nVocab: number }).nVocab, () => mismatched++);
  const token = (right as unknown as { argmax(i: number): number }).argmax(0);
  expect(token).toBeGreaterThanOrEqual(0);
  const first = right.sample(0, async () => token);
  expect(first).toBeInstanceOf(Promise);
  expect(await first).toBe(token);
  expect(right.sample(0, async () => -2)).toBe(token);
  expect(mismatched).toBe(1);
});
