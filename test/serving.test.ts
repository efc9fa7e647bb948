/** Needs a model: the serving core over real sockets — parallel slots, queue limits, lifecycle routes, metrics, LoRA swap. */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import OpenAI from "openai";
import { Engine } from "../src/engine/engine.ts";
import { ModelRegistry } from "../src/engine/registry.ts";
import type { Listening } from "../src/server/listen.ts";
import { makeFixtures, parseSse, spyGenerations, startServer } from "./helpers.ts";

// Loads models and streams on 2 shared cores: allow 60 s per test (bun's default is 5 s).
setDefaultTimeout(60_000);

let fx: Awaited<ReturnType<typeof makeFixtures>>;
beforeAll(async () => {
  fx = await makeFixtures();
});
afterAll(() => fx?.cleanup());

function serverWith(opts: Partial<ConstructorParameters<typeof Engine>[1]> = {}): { engine: Engine; server: Listening; url: string; close(): Promise<void> } {
  const engine = new Engine(new ModelRegistry({ modelDirs: [fx.dir] }, fx.dir), { gpu: "cpu", threads: 1, threadsExplicit: true, ctxSize: 4096, chatTemplate: "auto", ...opts });
  const server = startServer(engine);
  return { engine, server, url: server.url, close: async () => (await server.stop(), await engine.close()) };
}

const post = (url: string, body: unknown, init: RequestInit = {}) => fetch(url, { method: "POST", body: JSON.stringify(body), ...init });


describe("parallel slots and the queue", () => {
  test("8 simultaneous streams all complete with the right token counts (4 slots, the rest queued)", async () => {
    const s = serverWith({ parallel: 4 });
    try {
      const runs = await Promise.all(
        Array.from({ length: 8 }, async (_, i) => {
          const res = await post(`${s.url}/api/generate`, { model: "tiny", prompt: `stream ${i}`, temperature: 0, max_tokens: 20 + i });
          const events = parseSse(await res.text());
          return { i, tokens: events.filter((e) => e.event === "message" && e.data !== "[DONE]").length, done: JSON.parse(events.find((e) => e.event === "done")!.data) };
        }),
      );
      for (const r of runs) {
        expect(r.tokens).toBe(20 + r.i);
        expect(r.done.timings.predicted_n).toBe(20 + r.i);
      }
      // With 4 slots, at least one of the 8 had to wait.
      expect(Math.max(...runs.map((r) => r.done.timings.queue_ms))).toBeGreaterThan(0);
    } finally {
      await s.close();
    }
  });

  test("overflowing the queue gives 503 with Retry-After in each API's shape; accepted requests all finish", async () => {
    const s = serverWith({ parallel: 1, maxQueue: 2 });
    try {
      await s.engine.load("tiny");
      // Long enough that the queue stays full while the two refused requests are read: a running
      // generation lets the event loop accept requests only every 30 ms (SHIMMY_STREAM_INTERVAL_MS).
      const accepted = [0, 1, 2].map((i) => post(`${s.url}/api/generate`, { model: "tiny", prompt: `a${i}`, max_tokens: 800, stream: false }));
      // One runs, two wait: the queue is full.
      while ((await s.engine.status("tiny")).queued < 2) await Bun.sleep(2);
      const native = await post(`${s.url}/api/generate`, { model: "tiny", prompt: "over", max_tokens: 2, stream: false });
      expect(native.status).toBe(503);
      expect(native.headers.get("retry-after")).toBe("1");
      expect((await native.json() as any).error).toContain("server overloaded");
      const oa = await post(`${s.url}/v1/chat/completions`, { model: "tiny", messages: [{ role: "user", content: "x" }], max_tokens: 2 });
      expect(oa.status).toBe(503);
      expect(oa.headers.get("retry-after")).toBe("1");
      expect((await oa.json() as any).error).toMatchObject({ type: "server_error", code: "overloaded" });
      for (const r of await Promise.all(accepted)) {
        expect(r.status).toBe(200);
        expect((await r.json() as any).timings.predicted_n).toBe(800);
      }
    } finally {
      await s.close();
    }
  });

  test("a non-stream HTTP request whose client goes away frees its slot at once", async () => {
    const s = serverWith({ parallel: 1 });
    try {
      const probe = await spyGenerations(s.engine, "tiny");
      const controller = new AbortController();
      const pending = post(`${s.url}/v1/chat/completions`, { model: "tiny", messages: [{ role: "user", content: "x" }], max_tokens: 3500 }, { signal: controller.signal }).catch(() => undefined);
      while (probe.results.length === 0) await Bun.sleep(5);
      await Bun.sleep(50);
      controller.abort();
      await pending;
      const r = await probe.results[0]!;
      expect(r.finishReason).toBe("abort");
      expect(r.timings.generatedTokens).toBeLessThan(3000);
      const t0 = performance.now();
      const next = await (await post(`${s.url}/api/generate`, { model: "tiny", prompt: "next", max_tokens: 3, stream: false })).json() as any;
      expect(next.timings.predicted_n).toBe(3);
      expect(next.timings.queue_ms).toBeLessThan(100);
      expect(performance.now() - t0).toBeLessThan(5000);
      probe.restore();
    } finally {
      await s.close();
    }
  });
});

describe("model lifecycle routes", () => {
  test("load, status, ps, unload; keep_alive; unknown model", async () => {
    const s = serverWith({ keepAliveMs: -1 });
    try {
      expect(await (await fetch(`${s.url}/api/models/tiny/status`)).json()).toMatchObject({ name: "tiny", state: "unloaded", active: 0 });
      const loaded = await (await post(`${s.url}/api/models/tiny/load`, { keep_alive: "10m" })).json() as any;
      expect(loaded).toMatchObject({ name: "tiny", state: "loaded", slots: 4, context_size: 4096 });
      expect(loaded.size_bytes).toBeGreaterThan(0);
      expect(Date.parse(loaded.expires_at) - Date.now()).toBeGreaterThan(9 * 60_000);
      const ps = await (await fetch(`${s.url}/api/ps`)).json() as any;
      expect(ps.models.map((m: any) => m.name)).toEqual(["tiny"]);
      const health = await (await fetch(`${s.url}/health`)).json() as any;
      expect(health).toMatchObject({ status: "ready", loaded: ["tiny"], model_states: [{ name: "tiny", state: "loaded", active: 0, queued: 0 }] });
      const unloaded = await (await post(`${s.url}/api/models/tiny/unload`, {})).json() as any;
      expect(unloaded).toMatchObject({ state: "unloaded", was_loaded: true });
      expect((await (await fetch(`${s.url}/api/ps`)).json() as any).models).toEqual([]);
      // keep_alive 0 on a request: unloaded right after it.
      await post(`${s.url}/api/generate`, { model: "tiny", prompt: "x", max_tokens: 2, stream: false, keep_alive: 0 });
      await Bun.sleep(50);
      expect((await (await fetch(`${s.url}/api/models/tiny/status`)).json() as any).state).toBe("unloaded");
      const bad = await post(`${s.url}/api/generate`, { model: "tiny", prompt: "x", keep_alive: "soon" });
      expect(bad.status).toBe(400);
      expect((await bad.json() as any).error).toContain("keep_alive must be a duration");
      const nope = await post(`${s.url}/api/models/nope/load`, {});
      expect(nope.status).toBe(404);
      expect((await nope.json() as any).error).toContain("available: ");
    } finally {
      await s.close();
    }
  });

  test("/health reports loading while a model loads, then ready", async () => {
    const s = serverWith({});
    try {
      const loading = s.engine.load("tiny");
      // The load registers once the name is resolved; poll until /health shows it.
      let during: any;
      for (let i = 0; i < 500; i++) {
        during = await (await fetch(`${s.url}/health`)).json();
        if (during.model_states.length) break;
        await Bun.sleep(1);
      }
      expect(during.status).toBe("loading");
      expect(during.model_states).toEqual([{ name: "tiny", state: "loading", active: 0, queued: 0 }]);
      await loading;
      expect((await (await fetch(`${s.url}/health`)).json() as any).status).toBe("ready");
    } finally {
      await s.close();
    }
  });

  test("LoRA hot swap over HTTP changes the output of new requests", async () => {
    const s = serverWith({});
    try {
      const gen = async () => (await (await post(`${s.url}/api/generate`, { model: "tiny", prompt: "hello world", temperature: 0, max_tokens: 12, stream: false })).json() as any).response;
      const bare = await gen();
      const swapped = await (await post(`${s.url}/api/models/tiny/lora`, { adapters: [`${fx.lora}:1`] })).json() as any;
      expect(swapped.loras).toEqual([{ path: fx.lora, scale: 1 }]);
      const withLora = await gen();
      expect(withLora).not.toBe(bare);
      await post(`${s.url}/api/models/tiny/lora`, { adapters: [] });
      expect(await gen()).toBe(bare);
      // Only adapters shimmy knows: any other path is refused, existing or not.
      for (const p of ["/no/such.gguf", "/etc/passwd", fx.tiny]) {
        const bad = await post(`${s.url}/api/models/tiny/lora`, { adapters: [{ path: p }] });
        expect(bad.status).toBe(400);
        expect((await bad.json() as any).error).toStartWith(`unknown LoRA adapter '${p}'`);
      }
    } finally {
      await s.close();
    }
  });
});

describe("prompt cache and timings on every surface", () => {
  test("OpenAI: a follow-up turn reports cached tokens; responses carry timings", async () => {
    const s = serverWith({});
    try {
      const client = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: "x" });
      const messages: OpenAI.Chat.ChatCompletionMessageParam[] = [{ role: "user", content: "tell me about ".repeat(60) }];
      const r1 = await client.chat.completions.create({ model: "tiny", messages, max_tokens: 6, temperature: 0 });
      expect(r1.usage!.prompt_tokens_details!.cached_tokens).toBe(0);
      messages.push({ role: "assistant", content: r1.choices[0]!.message.content! }, { role: "user", content: "more" });
      const r2 = await client.chat.completions.create({ model: "tiny", messages, max_tokens: 6, temperature: 0 });
      expect(r2.usage!.prompt_tokens_details!.cached_tokens).toBeGreaterThan(r1.usage!.prompt_tokens - 5);
      expect((r2 as any).timings).toMatchObject({ cache_n: r2.usage!.prompt_tokens_details!.cached_tokens, predicted_n: 6 });
      const chunks = [];
      for await (const c of await client.chat.completions.create({ model: "tiny", messages, max_tokens: 3, stream: true })) chunks.push(c);
      const last = chunks.findLast((c) => c.choices[0]?.finish_reason);
      expect((last as any).timings.predicted_n).toBe(3);
    } finally {
      await s.close();
    }
  });
});

describe("metrics", () => {
  test("/metrics parses as Prometheus text and its counters match the requests made", async () => {
    const s = serverWith({});
    try {
      for (let i = 0; i < 3; i++) await post(`${s.url}/api/generate`, { model: "tiny", prompt: "x", max_tokens: 5, stream: false });
      await post(`${s.url}/api/generate`, { model: "nope", prompt: "x" });
      await fetch(`${s.url}/health`);
      const res = await fetch(`${s.url}/metrics`);
      expect(res.headers.get("content-type")).toContain("text/plain");
      const text = await res.text();
      // Every non-comment line is `name{labels} value`.
      const samples = new Map<string, number>();
      for (const line of text.split("\n")) {
        if (!line || line.startsWith("#")) continue;
        const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (-?[\d.e+-]+|NaN|\+Inf)$/);
        expect(m).not.toBeNull();
        samples.set(m![1]!, Number(m![2]));
      }
      expect(samples.get('shimmy_http_requests_total{method="POST",route="/api/generate",status="200"}')).toBe(3);
      expect(samples.get('shimmy_http_requests_total{method="POST",route="/api/generate",status="404"}')).toBe(1);
      expect(samples.get('shimmy_http_requests_total{method="GET",route="/health",status="200"}')).toBe(1);
      expect(samples.get('shimmy_generated_tokens_total{model="tiny"}')).toBe(15);
      expect(samples.get('shimmy_generations_total{model="tiny",finish_reason="length"}')).toBe(3);
      expect(samples.get('shimmy_time_to_first_token_seconds_count{model="tiny"}')).toBe(3);
      expect(samples.get('shimmy_inter_token_latency_seconds_count{model="tiny"}')).toBeGreaterThan(0);
      expect(samples.get('shimmy_model_load_seconds_count{model="tiny"}')).toBe(1);
      expect(samples.get("shimmy_loaded_models")).toBe(1);
      expect(samples.get('shimmy_slots{model="tiny"}')).toBe(4);
      expect(samples.get('shimmy_busy_slots{model="tiny"}')).toBe(0);
      expect(samples.get('shimmy_queue_depth{model="tiny"}')).toBe(0);
      expect(samples.get('shimmy_model_memory_bytes{model="tiny"}')).toBeGreaterThan(0);
    } finally {
      await s.close();
    }
  });
});
