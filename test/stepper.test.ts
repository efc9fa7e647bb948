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
import { existingStepper, type SyncDecoder } from "../src/engine/stepper.ts";
import { makeFixtures } from "./helpers.ts";

let fx: Awaited<ReturnType<typeof makeFixtures>>;
let direct: Engine;
let stock: Engine;
const make = (directDecode: boolean, parallel = 2, syncDecode: boolean | "auto" = "auto", gatherMs?: number, streamIntervalMs?: number) =>
  new Engine(new ModelRegistry({ modelDirs: [fx.dir] }, fx.dir), { gpu: "cpu", threads: 1, threadsExplicit: true, ctxSize: 1024, chatTemplate: "auto", parallel, directDecode, syncDecode, gatherMs, streamIntervalMs });

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
  // Steps decoded on the JavaScript thread (SHIMMY_SYNC_DECODE) count too.
  const stepper = existingStepper(context as never);
  const syncBefore = stepper?.syncSteps ?? 0;
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
    /** Native decode calls, either way. */
    decodes: () => counts.decodes + (existingStepper(context as never)?.syncSteps ?? 0) - syncBefore,
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
    expect(d.decodes()).toBe(16);
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

/** Records each native decode step as the token counts it was given per sequence (addToBatch calls). */
function recordSteps(context: Ctx) {
  const native = context._ctx;
  const steps: number[][] = [];
  /** When each step's decode started (performance.now()). */
  const at: number[] = [];
  let seqs: number[] = [];
  context._ctx = new Proxy(native, {
    get(t, p) {
      if (p === "addToBatch") return (...a: unknown[]) => (seqs.push((a[2] as Uint32Array).length), t.addToBatch!(...a));
      if (p === "decodeBatch") return (...a: unknown[]) => (steps.push(seqs), at.push(performance.now()), (seqs = []), t.decodeBatch!(...a));
      const v = t[p as string];
      return typeof v === "function" ? v.bind(t) : v;
    },
  });
  return { steps, at, restore: () => void (context._ctx = native) };
}

test("requests sent together evaluate their prompts in one step; contexts use flash attention auto", async () => {
  const loaded = await direct.load("tiny");
  const context = (loaded.native as unknown as { pool: { context: Ctx & { flashAttention: unknown } } }).pool.context;
  expect(context.flashAttention).toBe("auto");
  const { steps, restore } = recordSteps(context);
  try {
    await Promise.all([0, 1].map((i) => direct.complete("tiny", { prompt: `a prompt of several words, number ${i}`, temperature: 0, maxTokens: 4 })));
    // One step with both prompts (several tokens each), then steps of one token per sequence.
    expect(steps[0]!.length).toBe(2);
    expect(Math.min(...steps[0]!)).toBeGreaterThan(1);
  } finally {
    restore();
  }
});

test("a prompt arriving at an idle model waits a share of its expected prompt time for requests sent just after it (gatherMs)", async () => {
  // Prompts evaluate in well under a millisecond per token here, so the stepper's estimate is set by
  // hand: 1 s per token makes the wait the cap (gatherMs), 100 ms, which
  // ends early once both slots have queued.
  const run = async (e: Engine) => {
    const loaded = await e.load("tiny");
    const context = (loaded.native as unknown as { pool: { context: Ctx } }).pool.context;
    const stepper = existingStepper(context as never) as unknown as { promptMsPerToken: number | undefined; gathered: number } | undefined;
    const { steps, at, restore } = recordSteps(context);
    try {
      const t0 = performance.now();
      const before = stepper?.gathered ?? 0;
      if (stepper) stepper.promptMsPerToken = 1000;
      const first = e.complete("tiny", { prompt: "a prompt of several words, number 0", temperature: 0, maxTokens: 4 });
      await Bun.sleep(5);
      const second = e.complete("tiny", { prompt: "a prompt of several words, number 1", temperature: 0, maxTokens: 4 });
      await Promise.all([first, second]);
      return { first: steps[0]!, firstStepMs: at[0]! - t0, gathered: (stepper?.gathered ?? 0) - before };
    } finally {
      restore();
    }
  };
  // Warm the stepper up (it exists after the first plain generation).
  const waits = make(true, 2, "auto", 100);
  const never = make(true, 2, "auto", 0);
  try {
    for (const e of [waits, never]) await e.complete("tiny", { prompt: "warm", temperature: 0, maxTokens: 2 });
    // The second request, 5 ms later, joins the first one's prompt step...
    const joined = await run(waits);
    expect(joined.first.length).toBe(2);
    expect(Math.min(...joined.first)).toBeGreaterThan(1);
    expect(joined.gathered).toBe(1);
    // The second request filled the last slot, so the step did not wait out the 100 ms.
    expect(joined.firstStepMs).toBeLessThan(90);
    // ...and without the wait the first prompt goes alone.
    const alone = await run(never);
    expect(alone.first.length).toBe(1);
    expect(alone.gathered).toBe(0);
    // With the real estimate (prompts here take well under 100 ms) nothing waits.
    const loaded = await waits.load("tiny");
    const stepper = existingStepper((loaded.native as unknown as { pool: { context: object } }).pool.context as never) as unknown as { promptMsPerToken: number; gathered: number };
    const before = stepper.gathered;
    await waits.complete("tiny", { prompt: "a prompt of several words", temperature: 0, maxTokens: 2 });
    expect(stepper.promptMsPerToken).toBeLessThan(20);
    expect(stepper.gathered).toBe(before);
  } finally {
    await waits.close();
    await never.close();
  }
});

type SyncView = { syncDecoder: () => SyncDecoder | undefined; syncSteps: number; turns: number };
const stepperOf = async (e: Engine) => {
  const loaded = await e.load("tiny");
  return existingStepper((loaded.native as unknown as { pool: { context: object } }).pool.context as never) as unknown as SyncView | undefined;
};

test("generation steps on the JavaScript thread (syncDecode) give what the addon's worker gives, one or several streams", async () => {
  if (process.platform !== "linux") return;
  const on = make(true, 2, true);
  const off = make(true, 2, false);
  try {
    const cases: GenerateOptions[] = [
      { prompt: "count with me", temperature: 0, maxTokens: 24 },
      { prompt: "once upon", temperature: 0.8, seed: 7, maxTokens: 24 },
      { messages: [{ role: "user", content: "hi there" }], temperature: 0, maxTokens: 24, stop: ["e"] },
    ];
    // Generation steps: one per token after the first (each request's first comes from its prompt step).
    let steps = 0;
    for (const c of cases) {
      const a = await on.complete("tiny", c);
      const b = await off.complete("tiny", c);
      expect({ text: a.text, finish: a.finishReason }).toEqual({ text: b.text, finish: b.finishReason });
      steps += a.timings.generatedTokens - 1;
    }
    const both = (e: Engine) => Promise.all(["the sea", "a cat"].map((prompt) => e.complete("tiny", { prompt, temperature: 0, maxTokens: 20 })));
    expect((await both(on)).map((r) => r.text)).toEqual((await both(off)).map((r) => r.text));
    // Every generation step of `on` ran on this thread (the two streams share at least 19); none of `off`'s did.
    expect((await stepperOf(on))!.syncSteps).toBeGreaterThanOrEqual(steps + 19);
    expect((await stepperOf(off))!.syncSteps).toBe(0);
  } finally {
    await on.close();
    await off.close();
  }
});

test("syncDecode auto: the first generation step goes to the addon's worker and is timed; short steps then run on this thread", async () => {
  if (process.platform !== "linux") return;
  const e = make(true, 1, "auto");
  try {
    const r = await e.complete("tiny", { prompt: "count with me", temperature: 0, maxTokens: 12 });
    expect(r.timings.generatedTokens).toBe(12);
    // 11 generation steps: the first one async (nothing measured yet), the other 10 here (the tiny model's steps take about a millisecond).
    expect((await stepperOf(e))!.syncSteps).toBe(10);
  } finally {
    await e.close();
  }
});

test("with streamIntervalMs 0, a step on the JavaScript thread lets the event loop run first: every token, other work gets its turn", async () => {
  if (process.platform !== "linux") return;
  const e = make(true, 1, true, undefined, 0);
  try {
    // At each token, schedule a macrotask; it must have run by the next token (a loop that never
    // yields would run the whole generation in microtasks, and the first would run only at the end).
    let ran = 0;
    let checked = 0;
    let expected = 0;
    for await (const ev of e.generate("tiny", { prompt: "count with me", temperature: 0, maxTokens: 24 })) {
      if (ev.type !== "token") continue;
      expect(ran).toBe(expected);
      checked++;
      expected++;
      setImmediate(() => ran++);
    }
    expect(checked).toBeGreaterThan(10);
    expect((await stepperOf(e))!.syncSteps).toBeGreaterThan(10);
  } finally {
    await e.close();
  }
});

type Decode = SyncDecoder["decode"];
/** The engine's loaded stepper with its synchronous decode wrapped by `wrap`; returns it and a function that puts the decode back. */
async function wrapDecode(e: Engine, wrap: (decode: Decode) => Decode): Promise<{ stepper: SyncView; restore: () => void }> {
  const stepper = (await stepperOf(e)) ?? (await e.complete("tiny", { prompt: "warm", temperature: 0, maxTokens: 3 }), await stepperOf(e))!;
  const own = stepper.syncDecoder;
  stepper.syncDecoder = () => {
    const d = own();
    return d && { decode: wrap((...a) => d.decode(...a)) };
  };
  return { stepper, restore: () => (stepper.syncDecoder = own) };
}

test("by default the event loop runs at least every stream interval (30 ms), not every token, and always right after the first token", async () => {
  if (process.platform !== "linux") return;
  const e = make(true, 1, true);
  try {
    // Each decode made to take at least 2 ms, so 30 ms hold at least 15 steps.
    const { stepper, restore } = await wrapDecode(e, (decode) => (...a) => {
      const until = performance.now() + 2;
      while (performance.now() < until);
      return decode(...a);
    });
    const turnsBefore = stepper.turns;
    const delays: number[] = [];
    let tokens = 0;
    let firstRan = false;
    const t0 = performance.now();
    try {
      for await (const ev of e.generate("tiny", { prompt: "count with me", temperature: 0, maxTokens: 200 })) {
        if (ev.type !== "token") continue;
        tokens++;
        // The first token's text goes out before the next decode: its macrotask runs before token 2.
        if (tokens === 2) expect(firstRan).toBe(true);
        const at = performance.now();
        const n = tokens;
        setImmediate(() => {
          delays.push(performance.now() - at);
          if (n === 1) firstRan = true;
        });
      }
    } finally {
      restore();
    }
    const elapsed = performance.now() - t0;
    const turns = stepper.turns - turnsBefore;
    expect(tokens).toBeGreaterThan(150);
    // Long enough that a loop which never let the event loop run would show in the delays.
    expect(elapsed).toBeGreaterThan(300);
    expect(Math.max(...delays)).toBeLessThan(30 + 100);
    // At most one turn per 30 ms (plus the first token's): with 2 ms steps, one per 15 or more steps
    // (fewer steps under load), far fewer than one per token.
    expect(turns).toBeLessThanOrEqual(Math.floor(elapsed / 30) + 2);
    expect(turns).toBeLessThan(tokens / 3);
    expect(turns).toBeGreaterThanOrEqual(Math.floor(elapsed / 130));
  } finally {
    await e.close();
  }
});

test("a first token and a finished sequence's last events get the event loop at the next step, however long the interval", async () => {
  if (process.platform !== "linux") return;
  // With 1 s, the interval alone would give no turn during these generations (under 300 ms).
  const e = make(true, 2, true, undefined, 1000);
  try {
    const { stepper, restore } = await wrapDecode(e, (decode) => (...a) => {
      const until = performance.now() + 2;
      while (performance.now() < until);
      return decode(...a);
    });
    const ran = new Set<string>();
    const mark = (label: string) => setImmediate(() => ran.add(label));
    let a = 0;
    let bEndedAt: number | undefined;
    // B starts while A generates: its prompt joins A's steps, then B ends long before A.
    const runB = async () => {
      let b = 0;
      for await (const ev of e.generate("tiny", { prompt: "a second request", temperature: 0, maxTokens: 6 })) {
        if (ev.type === "token") {
          b++;
          if (b === 1) mark("b first");
          if (b === 2) expect(ran.has("b first")).toBe(true);
        } else {
          mark("b done");
          bEndedAt = a;
        }
      }
    };
    let b: Promise<void> | undefined;
    const turnsBefore = stepper.turns;
    try {
      for await (const ev of e.generate("tiny", { prompt: "count with me", temperature: 0, maxTokens: 60 })) {
        if (ev.type !== "token") continue;
        a++;
        if (a === 5) b = runB();
        if (bEndedAt !== undefined && a === bEndedAt + 2) expect(ran.has("b done")).toBe(true);
      }
      await b;
    } finally {
      restore();
    }
    expect(a).toBe(60);
    expect(bEndedAt).toBeLessThan(58);
    // A's first token, B's first token, B's end (and perhaps one from the engine's start), not one per step.
    const turns = stepper.turns - turnsBefore;
    expect(turns).toBeGreaterThanOrEqual(3);
    expect(turns).toBeLessThanOrEqual(5);
  } finally {
    await e.close();
  }
});

test("a failing decode on the JavaScript thread fails the request with node-llama-cpp's message, and the model keeps serving", async () => {
  if (process.platform !== "linux") return;
  const e = make(true, 1, true);
  try {
    let calls = 0;
    const { restore } = await wrapDecode(e, (decode) => (...a) => (++calls === 3 ? 1 : decode(...a)));
    try {
      const err = await e.complete("tiny", { prompt: "boom", temperature: 0, maxTokens: 8 }).catch((x) => x);
      expect(err).toBeInstanceOf(Error);
      expect(err.message).toMatch(/generation failed: could not find a KV slot for the batch/);
    } finally {
      restore();
    }
    const ok = await e.complete("tiny", { prompt: "fine again", temperature: 0, maxTokens: 8 });
    expect(ok.timings.generatedTokens).toBe(8);
  } finally {
    await e.close();
  }
});
