/**
 * Concurrent generations on one model share decode steps: every step carries a token of every
 * generating sequence (node-llama-cpp's own scheduling left one sequence out of each step), in
 * ascending sequence order (its queue order split a step into several llama.cpp ubatches).
 */
import { expect, test } from "bun:test";
import { existingStepper, type SyncDecoder } from "../src/engine/stepper.ts";
import { engineFixtures } from "./helpers.ts";

const ctx = engineFixtures();

test("4 concurrent streams: each decode step holds all 4 tokens, in sequence order, on slots 0-3", async () => {
  const { engine } = ctx;
  const loaded = await engine.load("tiny");
  // Count the tokens of each native decode call (test-only view of node-llama-cpp's context), and of
  // each step decoded on the JavaScript thread (the stepper's synchronous decoder).
  await engine.complete("tiny", { prompt: "warm up", maxTokens: 2, temperature: 0 });
  const context = (loaded.native as unknown as { pool: { context: { _ctx: Record<string, (...a: unknown[]) => unknown> } } }).pool.context;
  const stepper = existingStepper(context as never) as unknown as { syncDecoder: () => SyncDecoder | undefined; syncSteps: number };
  const ownSync = stepper.syncDecoder;
  const syncBefore = stepper.syncSteps;
  const native = context._ctx;
  const steps: number[] = [];
  const order: number[][] = [];
  let seqs: number[] = [];
  let pending = 0;
  context._ctx = new Proxy(native, {
    get(t, p) {
      if (p === "addToBatch") return (...a: unknown[]) => ((pending += (a[2] as Uint32Array).length), seqs.push(a[0] as number), t.addToBatch!(...a));
      if (p === "decodeBatch") return (...a: unknown[]) => (steps.push(pending), order.push(seqs), (pending = 0), (seqs = []), t.decodeBatch!(...a));
      const v = t[p as string];
      return typeof v === "function" ? v.bind(t) : v;
    },
  });
  stepper.syncDecoder = () => {
    const d = ownSync();
    return d && { decode: (n, tokens, pos, seq, flags) => (steps.push(n), order.push([...seq.subarray(0, n)]), d.decode(n, tokens, pos, seq, flags)) };
  };
  try {
    const tokens = 48;
    const results = await Promise.all([0, 1, 2, 3].map((i) => engine.complete("tiny", { prompt: `story ${i}:`, maxTokens: tokens, temperature: 0 })));
    for (const r of results) expect(r.timings.generatedTokens).toBe(tokens);
    // After the prompts, one step per token for all four together: 47 steps of 4 tokens.
    const full = steps.filter((n) => n === 4).length;
    expect(full).toBeGreaterThanOrEqual(tokens - 3);
    expect(steps.length).toBeLessThanOrEqual(tokens + 4);
    // In ascending sequence id, on consecutive slots: llama.cpp then decodes each step as one ubatch
    // (with a KV cache per sequence it splits a step wherever the ids do not ascend by one).
    for (const ids of order) expect(ids).toEqual([...ids].sort((a, b) => a - b));
    expect(new Set(order.flat())).toEqual(new Set([0, 1, 2, 3]));
    // On Linux most of those steps ran on the JavaScript thread (short steps, SHIMMY_SYNC_DECODE=auto).
    if (process.platform === "linux") expect(stepper.syncSteps - syncBefore).toBeGreaterThanOrEqual(tokens - 5);
  } finally {
    context._ctx = native;
    stepper.syncDecoder = ownSync;
  }
});

test("a request on a slot holding another prompt starts while the other slots keep generating (no wait for the context lock)", async () => {
  const { engine } = ctx;
  await engine.load("tiny");
  // Every slot holds a finished generation, so the next prompts differ from what their slots cache and
  // their tails must be trimmed (node-llama-cpp does that under the lock its busy decode loop holds).
  await Promise.all([0, 1, 2, 3].map((i) => engine.complete("tiny", { prompt: `old prompt number ${i} about the sea`, maxTokens: 4, temperature: 0 })));
  const order: string[] = [];
  const consume = async (tag: string, prompt: string, maxTokens: number, extra: { logprobs?: number } = {}) => {
    let first = true;
    for await (const ev of engine.generate("tiny", { prompt, maxTokens, temperature: 0, ...extra })) {
      if (ev.type === "token" && first) {
        first = false;
        order.push(`${tag}:first`);
      }
      if (ev.type === "done") order.push(`${tag}:done`);
    }
  };
  // Two long generations keep node-llama-cpp's decode loop (and the context lock) busy throughout.
  const long = Promise.all([consume("long", "a long answer about mountains", 400), consume("long2", "another long answer, about hills", 400)]);
  while (!order.includes("long:first") || !order.includes("long2:first")) await Bun.sleep(1);
  await consume("short", "something else entirely, rivers", 4);
  // The logprobs path empties its slot first (clearHistory took the same lock, even for an empty slot).
  await consume("logprobs", "and now the lakes", 4, { logprobs: 2 });
  await long;
  // The short request ran to its end while the long ones were still generating (before the fix it
  // started only after both had finished: 300 ms instead of 10 here).
  expect(order.indexOf("short:done")).toBeGreaterThan(-1);
  expect(order.indexOf("short:done")).toBeLessThan(order.indexOf("long:done"));
  expect(order.indexOf("short:done")).toBeLessThan(order.indexOf("long2:done"));
  expect(order.indexOf("logprobs:done")).toBeGreaterThan(-1);
  expect(order.indexOf("logprobs:done")).toBeLessThan(order.indexOf("long:done"));
  expect(order.indexOf("logprobs:done")).toBeLessThan(order.indexOf("long2:done"));
});
