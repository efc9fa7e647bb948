/**
 * Concurrent generations on one model share decode steps: every step carries a token of every
 * generating sequence (node-llama-cpp's own scheduling left one sequence out of each step).
 */
import { expect, test } from "bun:test";
import { engineFixtures } from "./helpers.ts";

const ctx = engineFixtures();

test("4 concurrent streams: each decode step holds all 4 tokens", async () => {
  const { engine } = ctx;
  const loaded = await engine.load("tiny");
  // Count the tokens of each native decode call (test-only view of node-llama-cpp's context).
  const context = (loaded.native as unknown as { pool: { context: { _ctx: Record<string, (...a: unknown[]) => unknown> } } }).pool.context;
  const native = context._ctx;
  const steps: number[] = [];
  let pending = 0;
  context._ctx = new Proxy(native, {
    get(t, p) {
      if (p === "addToBatch") return (...a: unknown[]) => ((pending += (a[2] as Uint32Array).length), t.addToBatch!(...a));
      if (p === "decodeBatch") return (...a: unknown[]) => (steps.push(pending), (pending = 0), t.decodeBatch!(...a));
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
  } finally {
    context._ctx = native;
  }
});
