/** Needs a model: the engine over the real node-llama-cpp with generated GGUF files. */
import { afterAll, beforeAll, describe, expect, test, setDefaultTimeout } from "bun:test";
import { copyFileSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import type { Engine } from "../src/engine/engine.ts";
import { ModelLoadError, ModelNotFoundError, PromptTooLongError } from "../src/errors.ts";
import { makeEngine, makeFixtures } from "./helpers.ts";

// Loads models or spawns the CLI on 2 shared cores: allow 60 s per test (bun's default is 5 s).
setDefaultTimeout(60_000);

let fx: Awaited<ReturnType<typeof makeFixtures>>;
let engine: Engine;
const greedy = { temperature: 0 } as const;

beforeAll(async () => {
  fx = await makeFixtures();
  engine = makeEngine({ dir: fx.dir });
});
afterAll(async () => {
  await engine?.close();
  fx?.cleanup();
});

async function collect(it: AsyncIterable<{ type: string; text: string }>) {
  const tokens: string[] = [];
  let done: any;
  for await (const ev of it) (ev.type === "token" ? tokens.push(ev.text) : (done = ev));
  return { tokens, done };
}

describe("engine", () => {
  test("loads a model once and keeps it loaded", async () => {
    const a = await engine.load("tiny");
    const b = await engine.load("TINY");
    expect(b).toBe(a);
    expect(engine.loadedNames()).toContain("tiny");
    expect(a.native.contextSize).toBe(4096);
  });

  test("greedy generation is deterministic, streamed token by token, with timings", async () => {
    const r1 = await collect(engine.generate("tiny", { prompt: "hello world", ...greedy, maxTokens: 24 }));
    const r2 = await collect(engine.generate("tiny", { prompt: "hello world", ...greedy, maxTokens: 24 }));
    expect(r1.tokens.length).toBeGreaterThan(10);
    expect(r1.tokens.join("")).toBe(r1.done.text);
    expect(r2.done.text).toBe(r1.done.text);
    expect(r1.done.finishReason).toBe("length");
    const t = r1.done.timings;
    expect(t.generatedTokens).toBe(24);
    expect(t.promptTokens).toBeGreaterThan(1);
    expect(t.tokensPerSecond).toBeGreaterThan(0);
    expect(t.ttftMs).toBeGreaterThan(0);
    expect(t.totalMs).toBeGreaterThanOrEqual(t.ttftMs);
  });

  test("seeded sampling is reproducible and differs from another seed", async () => {
    const opts = { prompt: "the day", temperature: 1.2, topK: 0, topP: 1, minP: 0, maxTokens: 24 };
    const a = await engine.complete("tiny", { ...opts, seed: 7 });
    const b = await engine.complete("tiny", { ...opts, seed: 7 });
    const c = await engine.complete("tiny", { ...opts, seed: 8 });
    expect(b.text).toBe(a.text);
    expect(c.text).not.toBe(a.text);
  });

  test("stop sequences end generation and their text is never emitted, not even a prefix", async () => {
    const base = await engine.complete("tiny", { prompt: "hello world", ...greedy, maxTokens: 40 });
    // A stop string that starts mid-way through the output and spans a token boundary.
    const at = Math.floor(base.text.length / 2);
    const stop = base.text.slice(at, at + 4);
    const pieces: string[] = [];
    const r = await engine.complete("tiny", { prompt: "hello world", ...greedy, maxTokens: 40, stop: [stop] }, (t) => pieces.push(t));
    expect(r.finishReason).toBe("stop");
    expect(pieces.join("")).toBe(r.text);
    expect(r.text).toBe(base.text.slice(0, base.text.indexOf(stop)));
    expect(pieces.join("")).not.toContain(stop);
  });

  test("a stop sequence with multi-byte UTF-8 is matched safely", async () => {
    const r = await engine.complete("tiny", { prompt: "hello", ...greedy, maxTokens: 12, stop: ["é😀"] });
    expect(r.finishReason).toBe("length");
    expect(r.text).not.toContain("\uFFFD");
  });

  test("aborting the signal stops generation within one token", async () => {
    const controller = new AbortController();
    let n = 0;
    let done: any;
    for await (const ev of engine.generate("tiny", { prompt: "hello", ...greedy, maxTokens: 3000, signal: controller.signal })) {
      if (ev.type === "token" && ++n === 5) controller.abort();
      if (ev.type === "done") done = ev;
    }
    expect(done.finishReason).toBe("abort");
    expect(done.timings.generatedTokens).toBeLessThanOrEqual(7);
  });

  test("breaking out of the iteration stops the generation (engine is free right after)", async () => {
    const loaded = await engine.load("tiny");
    const results: Promise<any>[] = [];
    const original = loaded.native.generate;
    loaded.native.generate = function (this: any, ...args: any[]) {
      const p = original.apply(this, args as any);
      results.push(p);
      return p;
    } as any;
    try {
      let n = 0;
      for await (const ev of engine.generate("tiny", { prompt: "hi", ...greedy, maxTokens: 3000 })) if (ev.type === "token" && ++n === 3) break;
      const r = await results[0];
      expect(r.finishReason).toBe("abort");
      expect(r.timings.generatedTokens).toBeLessThan(10);
    } finally {
      loaded.native.generate = original;
    }
    const after = await engine.complete("tiny", { prompt: "hi", ...greedy, maxTokens: 4 });
    expect(after.timings.generatedTokens).toBe(4);
  });

  test("concurrent requests share the parallel slots (batched decoding) and all complete alike", async () => {
    const loaded = await engine.load("tiny");
    expect(loaded.native.slots).toBe(4);
    let maxBusy = 0;
    const outs = await Promise.all(
      [1, 2, 3, 4, 5, 6].map(() =>
        engine.complete("tiny", { prompt: "hello world", ...greedy, maxTokens: 24 }, () => {
          maxBusy = Math.max(maxBusy, loaded.native.busy);
        }),
      ),
    );
    expect(new Set(outs.map((o) => o.text)).size).toBe(1);
    for (const o of outs) expect(o.timings.generatedTokens).toBe(24);
    expect(maxBusy).toBe(4);
    expect(loaded.native.busy).toBe(0);
  });

  test("chat: messages use the GGUF's ChatML template; named overrides change the prompt", async () => {
    const messages = [{ role: "user" as const, content: "hello" }];
    const auto = await engine.complete("tiny", { messages, ...greedy, maxTokens: 12 });
    const chatml = await engine.complete("tiny", { messages, ...greedy, maxTokens: 12, chatTemplate: "chatml" });
    const llama3 = await engine.complete("tiny", { messages, ...greedy, maxTokens: 12, chatTemplate: "llama3" });
    const openchat = await engine.complete("tiny", { messages, ...greedy, maxTokens: 12, chatTemplate: "openchat" });
    const raw = await engine.complete("tiny", { prompt: "hello", ...greedy, maxTokens: 12 });
    expect(auto.text).toBe(chatml.text);
    expect(auto.timings.promptTokens).toBe(chatml.timings.promptTokens);
    expect(llama3.timings.promptTokens).not.toBe(chatml.timings.promptTokens);
    expect(openchat.timings.promptTokens).not.toBe(chatml.timings.promptTokens);
    expect(raw.timings.promptTokens).toBeLessThan(auto.timings.promptTokens);
    const withSystem = await engine.complete("tiny", { messages, system: "be brief", ...greedy, maxTokens: 12 });
    expect(withSystem.timings.promptTokens).toBeGreaterThan(auto.timings.promptTokens);
  });

  test("a Jinja template file, per model, replaces the GGUF's template", async () => {
    const { Engine } = await import("../src/engine/engine.ts");
    const { ModelRegistry } = await import("../src/engine/registry.ts");
    const file = path.join(fx.dir, "plain.jinja");
    writeFileSync(file, "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}");
    const e = new Engine(new ModelRegistry({ baseGguf: fx.tiny, modelDirs: [] }), { gpu: "cpu", threads: 1, threadsExplicit: true, ctxSize: 512, chatTemplate: "auto", chatTemplates: { tiny: file } });
    try {
      const messages = [{ role: "user" as const, content: "hello" }];
      const viaFile = await e.complete("tiny", { messages, ...greedy, maxTokens: 8 });
      const viaGguf = await engine.complete("tiny", { messages, ...greedy, maxTokens: 8 });
      // "[user] hello\n[assistant] " tokenizes differently from ChatML's markers.
      expect(viaFile.timings.promptTokens).not.toBe(viaGguf.timings.promptTokens);
      expect(viaFile.timings.generatedTokens).toBe(8);
      // A named template in the request still wins.
      const chatml = await e.complete("tiny", { messages, ...greedy, maxTokens: 8, chatTemplate: "chatml" });
      expect(chatml.text).toBe(viaGguf.text);
    } finally {
      await e.close();
    }
  });

  test("logprobs: one entry per generated token, probabilities of the sampled token and alternatives", async () => {
    const pieces: Array<{ text: string; n: number }> = [];
    let done: any;
    for await (const ev of engine.generate("tiny", { prompt: "hello world", ...greedy, maxTokens: 10, logprobs: 3 })) {
      if (ev.type === "token") pieces.push({ text: ev.text, n: ev.logprobs?.length ?? 0 });
      else done = ev;
    }
    const plain = await engine.complete("tiny", { prompt: "hello world", ...greedy, maxTokens: 10 });
    expect(done.text).toBe(plain.text);
    expect(done.logprobs).toHaveLength(10);
    expect(pieces.reduce((a, p) => a + p.n, 0)).toBe(10);
    for (const l of done.logprobs) {
      expect(l.logprob).toBeLessThanOrEqual(0);
      expect(l.top).toHaveLength(3);
      // Greedy: the sampled token is the most likely one.
      expect(l.top[0].token).toBe(l.token);
      expect(l.top[0].logprob).toBeCloseTo(l.logprob, 6);
      expect(l.top[1].logprob).toBeLessThanOrEqual(l.top[0].logprob);
    }
    expect(done.logprobs.map((l: any) => l.token).join("")).toBe(done.text);
  });

  test("a full queue is refused with 503 (OverloadedError)", async () => {
    const { Engine } = await import("../src/engine/engine.ts");
    const { ModelRegistry } = await import("../src/engine/registry.ts");
    const { OverloadedError } = await import("../src/errors.ts");
    const e = new Engine(new ModelRegistry({ baseGguf: fx.tiny, modelDirs: [] }), { gpu: "cpu", threads: 1, threadsExplicit: true, ctxSize: 4096, chatTemplate: "auto", maxQueue: 1, parallel: 1 });
    try {
      await e.load("tiny");
      const running = e.complete("tiny", { prompt: "a", ...greedy, maxTokens: 300 });
      const waiting = e.complete("tiny", { prompt: "b", ...greedy, maxTokens: 2 });
      const refused = await e.complete("tiny", { prompt: "c", ...greedy, maxTokens: 2 }).catch((err) => err);
      expect(refused).toBeInstanceOf(OverloadedError);
      expect(refused.status).toBe(503);
      expect((await running).timings.generatedTokens).toBe(300);
      expect((await waiting).timings.generatedTokens).toBe(2);
    } finally {
      await e.close();
    }
  });

  test("lifecycle: keep-alive unloads an idle model; per-request keep-alive; LRU eviction at the loaded-models limit", async () => {
    const { Engine } = await import("../src/engine/engine.ts");
    const { ModelRegistry } = await import("../src/engine/registry.ts");
    const dir = path.join(fx.dir, "lifecycle");
    require("node:fs").mkdirSync(dir);
    for (const n of ["a", "b", "c"]) copyFileSync(fx.tiny, path.join(dir, `${n}.gguf`));
    const e = new Engine(new ModelRegistry({ modelDirs: [dir] }, dir), { gpu: "cpu", threads: 1, threadsExplicit: true, ctxSize: 512, chatTemplate: "auto", parallel: 1, keepAliveMs: 300, maxLoadedModels: 2 });
    try {
      await e.complete("a", { prompt: "x", ...greedy, maxTokens: 2 });
      expect(await e.status("a")).toMatchObject({ state: "loaded", active: 0 });
      expect((await e.status("a")).expiresAt).not.toBeNull();
      await Bun.sleep(600);
      expect((await e.status("a")).state).toBe("unloaded");
      // keep_alive -1 (per request): stays; 0: unloads right after.
      await e.complete("a", { prompt: "x", ...greedy, maxTokens: 2, keepAliveMs: -1 });
      await e.complete("b", { prompt: "x", ...greedy, maxTokens: 2, keepAliveMs: 0 });
      await Bun.sleep(50);
      expect(e.ps().map((m) => m.name)).toEqual(["a"]);
      expect((await e.status("a")).expiresAt).toBeNull();
      // At the limit (2), loading c evicts the least recently used idle model.
      await e.complete("b", { prompt: "x", ...greedy, maxTokens: 2, keepAliveMs: -1 });
      await e.complete("a", { prompt: "x", ...greedy, maxTokens: 2, keepAliveMs: -1 });
      await e.complete("c", { prompt: "x", ...greedy, maxTokens: 2, keepAliveMs: -1 });
      expect(e.ps().map((m) => m.name).sort()).toEqual(["a", "c"]);
      // A busy model is never evicted: with a and c both busy, loading b is refused (503).
      // Both streaming (first token seen) before b is asked for.
      const firstToken = () => {
        let seen!: () => void;
        return { p: new Promise<void>((r) => (seen = r)), on: () => seen() };
      };
      const [fa, fc] = [firstToken(), firstToken()];
      const ca = e.complete("a", { prompt: "x", ...greedy, maxTokens: 200 }, fa.on);
      const cc = e.complete("c", { prompt: "x", ...greedy, maxTokens: 200 }, fc.on);
      await Promise.all([fa.p, fc.p]);
      const refused = await e.complete("b", { prompt: "x", ...greedy, maxTokens: 2 }).catch((err) => err);
      expect(refused.status).toBe(503);
      expect(refused.message).toContain("loaded and busy");
      await Promise.all([ca, cc]);
      // Explicit unload.
      expect(await e.unload("a")).toBe(true);
      expect((await e.status("a")).state).toBe("unloaded");
      expect(await e.unload("a")).toBe(false);
    } finally {
      await e.close();
    }
  });

  test("simultaneous first requests share one load", async () => {
    const e = makeEngine({ dir: fx.dir });
    let loads = 0;
    e.observer = { onLoad: () => loads++ };
    try {
      const results = await Promise.all([1, 2, 3].map(() => e.complete("tiny", { prompt: "x", ...greedy, maxTokens: 2 })));
      expect(results.every((r) => r.timings.generatedTokens === 2)).toBe(true);
      expect(loads).toBe(1);
      expect(e.ps()).toHaveLength(1);
    } finally {
      await e.close();
    }
  });

  test("a model that does not fit the memory limit is refused with 503, not loaded", async () => {
    const { Engine } = await import("../src/engine/engine.ts");
    const { ModelRegistry } = await import("../src/engine/registry.ts");
    const e = new Engine(new ModelRegistry({ baseGguf: fx.tiny, modelDirs: [] }), { gpu: "cpu", threads: 1, threadsExplicit: true, ctxSize: 512, chatTemplate: "auto", memoryLimit: 64 * 1024 });
    try {
      const err = await e.load("tiny").catch((x) => x);
      expect(err.status).toBe(503);
      expect(err.message).toMatch(/not enough memory to load tiny: it needs about [\d.]+ GiB .* allowed \(SHIMMY_MEMORY_LIMIT\)/);
      expect(e.ps()).toEqual([]);
    } finally {
      await e.close();
    }
  });

  test("LoRA hot swap: new requests get the new adapter, the one in flight keeps its own", async () => {
    const e = makeEngine({ base: fx.tiny });
    try {
      const bare = await e.complete("tiny", { prompt: "hello world", ...greedy, maxTokens: 16 });
      let streaming!: () => void;
      const started = new Promise<void>((r) => (streaming = r));
      const long = e.complete("tiny", { prompt: "hello world", ...greedy, maxTokens: 400 }, () => streaming());
      await started;
      const st = await e.setLora("tiny", [{ path: fx.lora, scale: 1 }]);
      expect(st.loras).toEqual([{ path: fx.lora, scale: 1 }]);
      const withLora = await e.complete("tiny", { prompt: "hello world", ...greedy, maxTokens: 16 });
      const inFlight = await long;
      expect(withLora.text).not.toBe(bare.text);
      expect(inFlight.text.startsWith(bare.text)).toBe(true);
      await e.setLora("tiny", []);
      expect((await e.complete("tiny", { prompt: "hello world", ...greedy, maxTokens: 16 })).text).toBe(bare.text);
      const bad = await e.setLora("tiny", [{ path: fx.tiny, scale: 1 }]).catch((x) => x);
      expect(bad.status).toBe(400);
      expect(bad.message).toContain("unknown LoRA adapter");
    } finally {
      await e.close();
    }
  });

  test("prompt cache: a follow-up turn reuses the shared prefix (cache_n) and gives the same text", async () => {
    const e = makeEngine({ dir: fx.dir });
    try {
      const history = [{ role: "user" as const, content: "hello world ".repeat(40) }];
      const t1 = await e.complete("tiny", { messages: history, ...greedy, maxTokens: 8 });
      expect(t1.timings.cachedTokens).toBe(0);
      const turn2 = [...history, { role: "assistant" as const, content: t1.text }, { role: "user" as const, content: "and then?" }];
      const t2 = await e.complete("tiny", { messages: turn2, ...greedy, maxTokens: 8 });
      expect(t2.timings.cachedTokens).toBeGreaterThan(t1.timings.promptTokens - 5);
      expect(t2.timings.cachedTokens).toBeLessThan(t2.timings.promptTokens);
      // The same request on a cold model gives the same text.
      const cold = makeEngine({ dir: fx.dir });
      try {
        const c = await cold.complete("tiny", { messages: turn2, ...greedy, maxTokens: 8 });
        expect(c.timings.cachedTokens).toBe(0);
        expect(c.text).toBe(t2.text);
      } finally {
        await cold.close();
      }
    } finally {
      await e.close();
    }
  });

  test("drain waits at most closeMs for the final unload (a shutdown always ends)", async () => {
    const e = makeEngine({ dir: fx.dir });
    await e.load("tiny");
    const close = e.close.bind(e);
    e.close = () => new Promise<void>(() => {});
    const t0 = performance.now();
    const drained = await e.drain(0, 200);
    expect(drained.finished).toBe(true);
    expect(performance.now() - t0).toBeLessThan(2000);
    await close();
  });

  test("after an unload nothing holds llama.cpp: closing never waits for the garbage collector", async () => {
    const e = makeEngine({ dir: fx.dir });
    try {
      // Keep every GgufInsights the memory check makes reachable, so the garbage collector cannot
      // release its simulated model behind the test's back (the release must be shimmy's).
      const { GgufInsights } = await import("node-llama-cpp");
      const kept: unknown[] = [];
      const from = GgufInsights.from;
      GgufInsights.from = (async (...a: Parameters<typeof from>) => {
        const i = await from.apply(GgufInsights, a);
        kept.push(i);
        return i;
      }) as typeof from;
      try {
        await e.complete("tiny", { prompt: "hi", ...greedy, maxTokens: 2 });
      } finally {
        GgufInsights.from = from;
      }
      expect(kept.length).toBeGreaterThanOrEqual(1);
      // node-llama-cpp's guard on its Llama instance: Llama.dispose() (close, shutdown) waits until no
      // handle is held. The memory estimate's simulated model held one until it was garbage-collected
      // (close then took 8 s, or timed out a test at 60 s).
      const guard = ((await (e as unknown as { backendPromise: Promise<unknown> }).backendPromise) as { llama: { _backendDisposeGuard: { _preventionHandles: number } } }).llama._backendDisposeGuard;
      expect(guard._preventionHandles).toBeGreaterThan(0);
      await e.unload("tiny");
      expect(guard._preventionHandles).toBe(0);
    } finally {
      await e.close();
    }
  });

  test("drain: running generations get the grace period, then are aborted; new work is refused", async () => {
    const e = makeEngine({ dir: fx.dir });
    // Start a long generation and wait for its first token: it is running when the drain begins.
    let streaming!: () => void;
    const started = new Promise<void>((r) => (streaming = r));
    const long = e.complete("tiny", { prompt: "x", ...greedy, maxTokens: 3500 }, () => streaming());
    await started;
    const t0 = performance.now();
    const drained = await e.drain(200);
    expect(drained.finished).toBe(false);
    expect(performance.now() - t0).toBeLessThan(5000);
    const r = await long;
    expect(r.finishReason).toBe("abort");
    expect(e.state).toBe("draining");
    const refused = await e.complete("tiny", { prompt: "x", maxTokens: 1 }).catch((x) => x);
    expect(refused.status).toBe(503);
  });

  test("model files changed on disk while loaded: deleted or replaced is harmless; with mmap off, truncated too", async () => {
    const { Engine } = await import("../src/engine/engine.ts");
    const { ModelRegistry } = await import("../src/engine/registry.ts");
    const fs = require("node:fs");
    const dir = path.join(fx.dir, "changing");
    fs.mkdirSync(dir);
    const file = path.join(dir, "m.gguf");
    copyFileSync(fx.tiny, file);
    const e = new Engine(new ModelRegistry({ modelDirs: [dir] }, dir, { roots: [{ kind: "dir", path: dir }] }), { gpu: "cpu", threads: 1, threadsExplicit: true, ctxSize: 512, chatTemplate: "auto", mmap: false });
    try {
      const before = await e.complete("m", { prompt: "hello", ...greedy, maxTokens: 8 });
      // Truncated in place while loaded (with mmap this would be SIGBUS): the weights are in memory.
      fs.truncateSync(file, 1000);
      const after = await e.complete("m", { prompt: "hello", ...greedy, maxTokens: 8 });
      expect(after.text).toBe(before.text);
      // The next load of that file is refused with the problem, not handed to llama.cpp.
      await e.unload("m");
      const err = await e.load("m").catch((x) => x);
      expect(err.status).toBe(502);
      expect(err.message).toMatch(/not a readable GGUF file|truncated/);
      // Deleted while loaded, memory-mapped: the mapping keeps the old file alive.
      copyFileSync(fx.tiny, file);
      const mm = new Engine(new ModelRegistry({ modelDirs: [dir] }, dir, { roots: [{ kind: "dir", path: dir }] }), { gpu: "cpu", threads: 1, threadsExplicit: true, ctxSize: 512, chatTemplate: "auto", mmap: true });
      try {
        await mm.load("m");
        fs.rmSync(file);
        expect((await mm.complete("m", { prompt: "hello", ...greedy, maxTokens: 8 })).text).toBe(before.text);
      } finally {
        await mm.close();
      }
    } finally {
      await e.close();
    }
  });

  test("load mode: on the Linux CPU backend a model is read into memory by default (auto), mapped with mmap on; the rule", async () => {
    const { Engine } = await import("../src/engine/engine.ts");
    const { ModelRegistry } = await import("../src/engine/registry.ts");
    const { chooseMmap } = await import("../src/engine/llama.ts");
    const gib = 1024 ** 3;
    // auto: read when CPU + Linux + the file takes at most half the available memory.
    expect(chooseMmap("auto", { platform: "linux", cpu: true, fileBytes: 4 * gib, availableBytes: 8 * gib })).toBe(false);
    expect(chooseMmap(undefined, { platform: "linux", cpu: true, fileBytes: 4 * gib, availableBytes: 8 * gib })).toBe(false);
    expect(chooseMmap("auto", { platform: "linux", cpu: true, fileBytes: 4 * gib + 1, availableBytes: 8 * gib })).toBe(true);
    expect(chooseMmap("auto", { platform: "linux", cpu: false, fileBytes: gib, availableBytes: 8 * gib })).toBe(true);
    expect(chooseMmap("auto", { platform: "darwin", cpu: true, fileBytes: gib, availableBytes: 8 * gib })).toBe(true);
    expect(chooseMmap(true, { platform: "linux", cpu: true, fileBytes: gib, availableBytes: 8 * gib })).toBe(true);
    expect(chooseMmap(false, { platform: "darwin", cpu: false, fileBytes: 9 * gib, availableBytes: 8 * gib })).toBe(false);
    if (process.platform !== "linux") return;
    const dir = path.join(fx.dir, "load-mode");
    require("node:fs").mkdirSync(dir);
    const file = path.join(dir, "lm.gguf");
    copyFileSync(fx.tiny, file);
    const mapped = () => readFileSync("/proc/self/maps", "utf8").includes(file);
    for (const [mmap, expected] of [[undefined, false], [true, true]] as const) {
      const e = new Engine(new ModelRegistry({ modelDirs: [dir] }, dir, { roots: [{ kind: "dir", path: dir }] }), { gpu: "cpu", threads: 1, threadsExplicit: true, ctxSize: 512, chatTemplate: "auto", ...(mmap === undefined ? {} : { mmap }) });
      try {
        const loaded = await e.load("lm");
        expect((loaded.native as unknown as { mapped: boolean }).mapped).toBe(expected);
        expect(mapped()).toBe(expected);
        expect((await e.complete("lm", { prompt: "hello", ...greedy, maxTokens: 4 })).timings.generatedTokens).toBe(4);
      } finally {
        await e.close();
      }
      expect(mapped()).toBe(false);
    }
  });

  test("a prompt longer than the context is refused before generating", async () => {
    const small = makeEngine({ dir: fx.dir, ctxSize: 256 });
    try {
      const err = await small.complete("tiny", { prompt: "hello ".repeat(200) }).catch((e) => e);
      expect(err).toBeInstanceOf(PromptTooLongError);
      expect(err.status).toBe(400);
      expect(err.message).toMatch(/context of 256 tokens/);
      const ok = await small.complete("tiny", { prompt: "hello", ...greedy });
      expect(ok.finishReason).toBe("length");
      expect(ok.timings.promptTokens + ok.timings.generatedTokens).toBeLessThanOrEqual(256);
    } finally {
      await small.close();
    }
  });

  test("unknown model names the available ones", async () => {
    const err = await engine.complete("nope", { prompt: "x" }).catch((e) => e);
    expect(err).toBeInstanceOf(ModelNotFoundError);
    expect(err.message).toContain("tiny");
  });

  test("LoRA from the base+adapter config changes the output", async () => {
    const withLora = makeEngine({ base: fx.tiny, lora: fx.lora });
    try {
      const a = await withLora.complete("tiny", { prompt: "hello world", ...greedy, maxTokens: 16 });
      const b = await engine.complete("tiny", { prompt: "hello world", ...greedy, maxTokens: 16 });
      expect((await withLora.list())[0]!.loras).toEqual([{ path: fx.lora, scale: 1 }]);
      expect(a.text).not.toBe(b.text);
    } finally {
      await withLora.close();
    }
  });

  test("broken model files fail with ModelLoadError and the process survives", async () => {
    const dir = path.join(fx.dir, "broken");
    require("node:fs").mkdirSync(dir);
    writeFileSync(path.join(dir, "garbage.gguf"), "this is not a gguf file at all".repeat(10));
    const bytes = await Bun.file(fx.tiny).bytes();
    writeFileSync(path.join(dir, "truncated.gguf"), bytes.slice(0, 4000));
    writeFileSync(path.join(dir, "cut-data.gguf"), bytes.slice(0, bytes.length - 5000));
    const broken = makeEngine({ dir });
    try {
      for (const name of ["garbage", "truncated", "cut-data"]) {
        const err = await broken.load(name).catch((e) => e);
        expect(err).toBeInstanceOf(ModelLoadError);
        expect(err.status).toBe(502);
        expect(err.message).toContain(`${name}.gguf`);
      }
    } finally {
      await broken.close();
    }
  });

  test("a file that would abort llama.cpp (no head_count / no byte tokens) is rejected before loading", async () => {
    const { tinyModelSpec } = await import("../src/gguf/presets.ts");
    const { writeGguf } = await import("../src/gguf/writer.ts");
    const dir = path.join(fx.dir, "abort");
    require("node:fs").mkdirSync(dir);
    const spec = tinyModelSpec();
    const kvs = Array.isArray(spec.kv) ? spec.kv : Object.entries(spec.kv);
    await writeGguf(path.join(dir, "nohead.gguf"), { ...spec, kv: kvs.filter(([k]) => k !== "llama.attention.head_count") });
    const e2 = makeEngine({ dir });
    try {
      const err = await e2.load("nohead").catch((e) => e);
      expect(err).toBeInstanceOf(ModelLoadError);
      expect(err.message).toContain("head_count");
    } finally {
      await e2.close();
    }
  });

  test("default threads: a model under 64 MiB runs on 1 thread; an explicit count is kept", async () => {
    const { Engine } = await import("../src/engine/engine.ts");
    const { ModelRegistry } = await import("../src/engine/registry.ts");
    const reg = new ModelRegistry({ baseGguf: fx.tiny, modelDirs: [] });
    const auto = new Engine(reg, { gpu: "cpu", threads: 2, threadsExplicit: false, ctxSize: 512, chatTemplate: "auto" });
    const explicit = new Engine(reg, { gpu: "cpu", threads: 2, threadsExplicit: true, ctxSize: 512, chatTemplate: "auto" });
    try {
      expect((await auto.load("tiny")).native.threads).toBe(1);
      expect((await explicit.load("tiny")).native.threads).toBe(2);
    } finally {
      await auto.close();
      await explicit.close();
    }
  });

  test("a missing file is never listed", async () => {
    const dir = path.join(fx.dir, "gone");
    require("node:fs").mkdirSync(dir);
    copyFileSync(fx.tiny, path.join(dir, "gone.gguf"));
    const e = makeEngine({ dir, base: path.join(dir, "elsewhere", "does-not-exist.gguf") });
    expect((await e.list()).map((m) => m.name)).toEqual(["gone"]);
    require("node:fs").rmSync(path.join(dir, "gone.gguf"));
    expect(await e.list({ refresh: true })).toEqual([]);
  });
});
