/**
 * shimmy's own decode loop (src/engine/stepper.ts): plain generations bypass node-llama-cpp's
 * LlamaCompletion and batch dispatcher, and must give exactly what LlamaCompletion gives, share the
 * context with node-llama-cpp's dispatcher (logprobs and tool calls still use it), and never strand
 * a request.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { Engine } from "../src/engine/engine.ts";
import { ModelRegistry } from "../src/engine/registry.ts";
import type { GenerateOptions } from "../src/engine/types.ts";
import { existingStepper } from "../src/engine/stepper.ts";
import { makeFixtures } from "./helpers.ts";

let fx: Awaited<ReturnType<typeof makeFixtures>>;
let direct: Engine;
let stock: Engine;
const make = (directDecode: boolean, parallel = 2) => new Engine(new ModelRegistry({ modelDirs: [fx.dir] }, fx.dir), { gpu: "cpu", threads: 1, threadsExplicit: true, ctxSize: 1024, chatTemplate: "auto", parallel, directDecode });

beforeAll(async () => {
  fx = await makeFixtures();
  direct = make(true);
  stock = make(false);
});
afterAll(async () => {
  await direct.close();
  await stock.close();
});

type Ctx = { _ctx: Record<string, (...a: unknown[]) => unknown>; _decodeTokens: (...a: unknown[]) => unknown };
/** Counts native decode steps and node-llama-cpp dispatcher submissions on a loaded model's context. */
async function spy(engine: Engine) {
  const loaded = await engine.load("tiny");
  const context = (loaded.native as unknown as { pool: { context: Ctx } }).pool.context;
  const native = context._ctx;
  const counts = { decodes: 0, dispatcher: 0 };
  context._ctx = new Proxy(native, {
    get(t, p) {
      if (p === "decodeBatch") return (...a: unknown[]) => (counts.decodes++, t.decodeBatch!(...a));
      const v = t[p as string];
      return typeof v === "function" ? v.bind(t) : v;
    },
  });
  const own = context._decodeTokens;
  context._decodeTokens = (...a: unknown[]) => (counts.dispatcher++, own.apply(context, a));
  return {
    counts,
    restore() {
      context._ctx = native;
      delete (context as Partial<Ctx>)._decodeTokens;
    },
  };
}

test("direct decode gives exactly what node-llama-cpp's LlamaCompletion gives (greedy, seeded, penalties, stops, chat, cache)", async () => {
  const cases: GenerateOptions[] = [
    { prompt: "hello world", temperature: 0, maxTokens: 40 },
    { prompt: "once upon", temperature: 0.8, seed: 42, maxTokens: 40 },
    { prompt: "once upon", temperature: 1.2, seed: 7, topK: 0, topP: 1, minP: 0, maxTokens: 40 },
    { prompt: "the sea", temperature: 0, repeatPenalty: 1.3, frequencyPenalty: 0.5, presencePenalty: 0.2, maxTokens: 40 },
    { messages: [{ role: "user", content: "hi there" }], temperature: 0, maxTokens: 40 },
    { prompt: "hello world", temperature: 0, maxTokens: 40, stop: ["e"] },
    // The same prompt again: the slot's cached prefix is reused.
    { prompt: "hello world", temperature: 0, maxTokens: 40 },
  ];
  for (const c of cases) {
    const a = await direct.complete("tiny", c);
    const b = await stock.complete("tiny", c);
    expect({ text: a.text, finish: a.finishReason, n: a.timings.generatedTokens, stop: a.stopSequence }).toEqual({ text: b.text, finish: b.finishReason, n: b.timings.generatedTokens, stop: b.stopSequence });
  }
});

test("plain generations decode on shimmy's loop; with directDecode off they go through node-llama-cpp's dispatcher", async () => {
  const d = await spy(direct);
  const s = await spy(stock);
  try {
    const a = await direct.complete("tiny", { prompt: "count with me", temperature: 0, maxTokens: 16 });
    const b = await stock.complete("tiny", { prompt: "count with me", temperature: 0, maxTokens: 16 });
    expect(a.text).toBe(b.text);
    // 1 prompt step + 15 token steps (the 16th token is sampled, not decoded).
    expect(d.counts.decodes).toBe(16);
    expect(d.counts.dispatcher).toBe(0);
    expect(s.counts.dispatcher).toBeGreaterThanOrEqual(16);
  } finally {
    d.restore();
    s.restore();
  }
});

test("a plain generation keeps going while node-llama-cpp's dispatcher serves a logprobs one on the same model", async () => {
  const solo = await direct.complete("tiny", { prompt: "short one", temperature: 0, maxTokens: 8 });
  const soloLong = await direct.complete("tiny", { prompt: "a long one", temperature: 0, maxTokens: 300, logprobs: 1 });
  const order: string[] = [];
  const long = direct.complete("tiny", { prompt: "a long one", temperature: 0, maxTokens: 300, logprobs: 1 }).then((r) => (order.push("long"), r));
  // Let the logprobs generation start (its dispatcher loop then holds the context's lock).
  await Bun.sleep(20);
  const short = direct.complete("tiny", { prompt: "short one", temperature: 0, maxTokens: 8 }).then((r) => (order.push("short"), r));
  const [l, s] = await Promise.all([long, short]);
  expect(order).toEqual(["short", "long"]);

  expect(s.text).toBe(solo.text);
  expect(l.text).toBe(soloLong.text);
  expect(l.logprobs!.length).toBe(soloLong.logprobs!.length);
});

test("while node-llama-cpp's dispatcher keeps the context (two logprobs generations), plain tokens are handed to it", async () => {
  const e = make(true, 3);
  try {
    const solo = await e.complete("tiny", { prompt: "short one", temperature: 0, maxTokens: 8 });
    const longs = [0, 1].map((i) => e.complete("tiny", { prompt: `a long one ${i}`, temperature: 0, maxTokens: 200, logprobs: 1 }));
    await Bun.sleep(20);
    const s = await e.complete("tiny", { prompt: "short one", temperature: 0, maxTokens: 8 });
    await Promise.all(longs);
    expect(s.text).toBe(solo.text);
    const loaded = await e.load("tiny");
    const context = (loaded.native as unknown as { pool: { context: object } }).pool.context;
    expect(existingStepper(context as never)!.handedOver).toBeGreaterThan(0);
  } finally {
    await e.close();
  }
});

test("a failing decode fails the request with a clear error, and the model keeps serving", async () => {
  const loaded = await direct.load("tiny");
  const context = (loaded.native as unknown as { pool: { context: Ctx } }).pool.context;
  const native = context._ctx;
  let failed = false;
  context._ctx = new Proxy(native, {
    get(t, p) {
      if (p === "decodeBatch" && !failed) return () => ((failed = true), Promise.reject(new Error("Eval has failed")));
      const v = t[p as string];
      return typeof v === "function" ? v.bind(t) : v;
    },
  });
  try {
    const err = await direct.complete("tiny", { prompt: "boom", temperature: 0, maxTokens: 8 }).catch((e) => e);
    expect(err).toBeInstanceOf(Error);
    expect(err.message).toMatch(/generation failed: Eval has failed/);
  } finally {
    context._ctx = native;
  }
  const ok = await direct.complete("tiny", { prompt: "fine again", temperature: 0, maxTokens: 8 });
  expect(ok.timings.generatedTokens).toBe(8);
});

test("requests sent together evaluate their prompts in one step; contexts use flash attention auto", async () => {
  const loaded = await direct.load("tiny");
  const context = (loaded.native as unknown as { pool: { context: Ctx & { flashAttention: unknown } } }).pool.context;
  expect(context.flashAttention).toBe("auto");
  const native = context._ctx;
  const steps: number[][] = [];
  let seqs: number[] = [];
  context._ctx = new Proxy(native, {
    get(t, p) {
      if (p === "addToBatch") return (...a: unknown[]) => (seqs.push((a[2] as Uint32Array).length), t.addToBatch!(...a));
      if (p === "decodeBatch") return (...a: unknown[]) => (steps.push(seqs), (seqs = []), t.decodeBatch!(...a));
      const v = t[p as string];
      return typeof v === "function" ? v.bind(t) : v;
    },
  });
  try {
    await Promise.all([0, 1].map((i) => direct.complete("tiny", { prompt: `a prompt of several words, number ${i}`, temperature: 0, maxTokens: 4 })));
    // One step with both prompts (several tokens each), then steps of one token per sequence.
    expect(steps[0]!.length).toBe(2);
    expect(Math.min(...steps[0]!)).toBeGreaterThan(1);
  } finally {
    context._ctx = native;
  }
});
