/**
 * Concurrent generations on one model share decode steps: every step carries a token of every
 * generating sequence (node-llama-cpp's own scheduling left one sequence out of each step), in
 * ascending sequence order (its queue order split a step into several llama.cpp ubatches).
 */
import { expect, test } from "bun:test";
import { engineFixtures } from "./helpers.ts";

const ctx = engineFixtures();

test("4 concurrent streams: each decode step holds all 4 tokens, in sequence order, on slots 0-3", async () => {
  const { engine } = ctx;
  const loaded = await engine.load("tiny");
  // Count the tokens of each native decode call (test-only view of node-llama-cpp's context).
  const context = (loaded.native as unknown as { pool: { context: { _ctx: Record<string, (...a: unknown[]) => unknown> } } }).pool.context;
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
  } finally {
    context._ctx = native;
  }
});
