/** Needs no model: the server layer through app.handle with a scripted fake engine. */
import { describe, expect, test } from "bun:test";
import { GenerationError, ModelLoadError, ModelNotFoundError } from "../src/errors.ts";
import type { GenerateOptions, TokenEvent } from "../src/engine/types.ts";
import { createApp } from "../src/server/app.ts";
import type { ServingEngine } from "../src/server/http.ts";
import { parseSse } from "./helpers.ts";

const timings = { promptTokens: 3, cachedTokens: 0, promptMs: 1, promptTokensPerSecond: 3000, generatedTokens: 3, generateMs: 2, tokensPerSecond: 1000, ttftMs: 1, queueMs: 0, totalMs: 3 };

/** A fake engine: model "fake" yields `script`; "broken" fails to load; "dies" fails after 2 tokens. */
function fakeEngine(script: string[] = ["Hel", "lo\nwor", "ld"]) {
  const calls: GenerateOptions[] = [];
  const engine: ServingEngine = {
    options: { gpu: "cpu", threads: 1, ctxSize: 512, chatTemplate: "auto" },
    list: async () => [{ name: "fake", path: "/x/fake.gguf", source: "dir", sizeBytes: 10, loaded: false }],
    resolve: (() => {
      throw new Error("unused");
    }) as any,
    backendInfo: async () => undefined,
    loadedNames: () => [],
    load: (async () => undefined) as any,
    unload: async () => false,
    status: (async (name: string) => ({ name, state: "unloaded", active: 0, queued: 0, slots: 1 })) as any,
    ps: () => [],
    setLora: (async () => ({})) as any,
    state: "ready",
    observer: {},
    tokenize: async () => ({ model: "fake", tokens: [1, 2], pieces: ["a", "b"] }),
    detokenize: async () => ({ model: "fake", text: "ab" }),
    embed: async () => ({ model: "fake", vectors: [[0.5, 0.25]], promptTokens: 2 }),
    metadata: async () => ({ metadata: { "general.architecture": "llama" } }),
    countTokens: async () => ({ model: "fake", tokens: 7 }),
    async *generate(name: string, opts: GenerateOptions): AsyncGenerator<TokenEvent, void, undefined> {
      calls.push(opts);
      if (name === "broken") throw new ModelLoadError("failed to load /x/broken.gguf: Failed to load model");
      if (name === "caller") {
        yield { type: "done", model: name, text: "", finishReason: "tool_calls", timings, toolCalls: [{ id: "call_0", name: "get_weather", arguments: '{"city":"Paris"}' }] };
        return;
      }
      if (name !== "fake" && name !== "dies") throw new ModelNotFoundError(name, ["fake"]);
      let i = 0;
      for (const text of script) {
        if (name === "dies" && i++ === 2) throw new GenerationError("generation failed: backend exploded");
        yield { type: "token", text };
      }
      if (name === "dies") throw new GenerationError("generation failed: backend exploded");
      yield { type: "done", model: name, text: script.join(""), finishReason: "length", timings };
    },
  };
  return { engine, calls };
}

const post = (app: ReturnType<typeof createApp>, path: string, body: unknown, headers: Record<string, string> = { "content-type": "application/json" }) =>
  app.handle(new Request(`http://local${path}`, { method: "POST", headers, body: typeof body === "string" ? body : JSON.stringify(body) }));

describe("POST /api/generate (fake engine)", () => {
  test("streams SSE: one event per token, newlines split into data lines, then [DONE]", async () => {
    const app = createApp(fakeEngine());
    const res = await post(app, "/api/generate", { model: "fake", prompt: "hi" });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toStartWith("text/event-stream");
    const raw = await res.text();
    expect(raw).toContain("data: lo\ndata: wor\n\n");
    const events = parseSse(raw);
    expect(events.filter((e) => e.event === "message").map((e) => e.data)).toEqual(["Hel", "lo\nwor", "ld", "[DONE]"]);
    // The finish reason and timings come in a named event, unseen by plain `data:` readers.
    const done = events.find((e) => e.event === "done")!;
    expect(JSON.parse(done.data)).toMatchObject({ finish_reason: "length", model: "fake", timings: { prompt_n: 3, cache_n: 0, predicted_n: 3 } });
    expect(events.at(-2)).toBe(done);
  });

  test("stream:false returns one JSON object with text, finish reason and timings", async () => {
    const res = await post(createApp(fakeEngine()), "/api/generate", { model: "fake", prompt: "hi", stream: false });
    expect(res.status).toBe(200);
    const body = await res.json() as any;
    expect(body).toMatchObject({ response: "Hello\nworld", model: "fake", finish_reason: "length" });
    expect(body.timings).toMatchObject({ prompt_n: 3, predicted_n: 3, predicted_per_second: 1000 });
  });

  test("maps wire fields to engine options; a single stop string becomes a list", async () => {
    const fake = fakeEngine();
    await post(createApp(fake), "/api/generate", { model: "fake", messages: [{ role: "user", content: "x" }], system: "s", temperature: 0.5, top_p: 0.9, top_k: 5, min_p: 0.1, repeat_penalty: 1.2, seed: 3, max_tokens: 7, stop: "END", chat_template: "llama3", stream: false });
    expect(fake.calls[0]).toMatchObject({ messages: [{ role: "user", content: "x" }], system: "s", temperature: 0.5, topP: 0.9, topK: 5, minP: 0.1, repeatPenalty: 1.2, seed: 3, maxTokens: 7, stop: ["END"], chatTemplate: "llama3" });
    expect(fake.calls[0]!.signal).toBeInstanceOf(AbortSignal);
  });

  test("accepts JSON sent as form-encoded (curl -d)", async () => {
    const res = await post(createApp(fakeEngine()), "/api/generate", { model: "fake", prompt: "hi", stream: false }, { "content-type": "application/x-www-form-urlencoded" });
    expect(res.status).toBe(200);
  });

  const bad: Array<[string, unknown, RegExp]> = [
    ["malformed JSON", '{"model": "fake",', /malformed JSON body/],
    ["empty body", "", /empty/],
    ["array body", "[1,2]", /JSON object/],
    ["missing model", { prompt: "x" }, /'model'/],
    ["wrong type", { model: "fake", prompt: "x", temperature: "hot" }, /'temperature'/],
    ["out of range", { model: "fake", prompt: "x", top_p: 3 }, /'top_p'/],
    ["non-integer", { model: "fake", prompt: "x", max_tokens: 1.5 }, /'max_tokens'/],
    ["zero max_tokens", { model: "fake", prompt: "x", max_tokens: 0 }, /'max_tokens'/],
    ["bad role", { model: "fake", messages: [{ role: "robot", content: "x" }] }, /'messages\.0\.role'/],
    ["bad template", { model: "fake", prompt: "x", chat_template: "alpaca" }, /'chat_template'/],
    ["no prompt or messages", { model: "fake" }, /either 'prompt' or a non-empty 'messages'/],
    ["empty messages", { model: "fake", messages: [] }, /either 'prompt'/],
  ];
  for (const [what, body, msg] of bad) {
    test(`400 for ${what}, with a message naming the problem`, async () => {
      const res = await post(createApp(fakeEngine()), "/api/generate", body);
      expect(res.status).toBe(400);
      const json = await res.json() as any;
      expect(Object.keys(json)).toEqual(["error"]);
      expect(json.error).toMatch(msg);
    });
  }

  test("schema messages say what was expected and what came", async () => {
    const cases: Array<[unknown, string]> = [
      [{ model: "fake", prompt: "x", temperature: "hot" }, `invalid field 'temperature': expected a number from 0 to 5, got "hot"`],
      [{ model: "fake", prompt: "x", max_tokens: 0 }, "invalid field 'max_tokens': expected an integer from 1 to 1048576, got 0"],
      [{ prompt: "x" }, "missing field 'model': expected a non-empty string"],
      [{ model: "fake", messages: [{ role: "robot", content: "x" }] }, `invalid field 'messages.0.role': expected one of "system", "user", "assistant", got "robot"`],
    ];
    for (const [body, message] of cases) {
      const res = await post(createApp(fakeEngine()), "/api/generate", body);
      expect(await res.json() as any).toEqual({ error: message });
    }
  });

  test("404 for an unknown model, listing the available ones", async () => {
    const res = await post(createApp(fakeEngine()), "/api/generate", { model: "nope", prompt: "x" });
    expect(res.status).toBe(404);
    expect((await res.json() as any).error).toBe("model 'nope' not found; available: fake");
  });

  test("502 for a load failure, before any byte is streamed", async () => {
    const res = await post(createApp(fakeEngine()), "/api/generate", { model: "broken", prompt: "x" });
    expect(res.status).toBe(502);
    expect((await res.json() as any).error).toContain("Failed to load model");
  });

  test("an error after streaming began becomes an SSE error event and the stream ends", async () => {
    const res = await post(createApp(fakeEngine()), "/api/generate", { model: "dies", prompt: "x" });
    expect(res.status).toBe(200);
    const events = parseSse(await res.text());
    expect(events.slice(0, 2).map((e) => e.data)).toEqual(["Hel", "lo\nwor"]);
    expect(events.at(-1)).toEqual({ event: "error", data: JSON.stringify({ error: "generation failed: backend exploded" }) });
    expect(events.some((e) => e.data === "[DONE]")).toBe(false);
  });

  test("stream:false with a mid-generation failure answers 502", async () => {
    const res = await post(createApp(fakeEngine()), "/api/generate", { model: "dies", prompt: "x", stream: false });
    expect(res.status).toBe(502);
  });
});

describe("OpenAI routes (fake engine)", () => {
  test("an error after streaming began is a last error chunk, then [DONE]", async () => {
    const res = await post(createApp(fakeEngine()), "/v1/chat/completions", { model: "dies", messages: [{ role: "user", content: "x" }], stream: true });
    expect(res.status).toBe(200);
    const events = parseSse(await res.text()).map((e) => e.data);
    expect(events.at(-1)).toBe("[DONE]");
    expect(JSON.parse(events.at(-2)!)).toEqual({ error: { message: "generation failed: backend exploded", type: "server_error", param: null, code: "generation_error" } });
    const first = JSON.parse(events[0]!);
    expect(first.choices[0].delta.role).toBe("assistant");
  });

  test("a load failure before the first byte is a 502 in OpenAI's error shape", async () => {
    const res = await post(createApp(fakeEngine()), "/v1/chat/completions", { model: "broken", messages: [{ role: "user", content: "x" }] });
    expect(res.status).toBe(502);
    expect((await res.json() as any).error).toMatchObject({ type: "server_error", code: "model_load_error" });
  });

  test("validation errors name the param in OpenAI's shape", async () => {
    const res = await post(createApp(fakeEngine()), "/v1/chat/completions", { model: "fake", messages: [{ role: "user", content: "x" }], temperature: "hot" });
    expect(res.status).toBe(400);
    expect(await res.json() as any).toEqual({ error: { message: `invalid field 'temperature': expected a number from 0 to 5 or null, got "hot"`, type: "invalid_request_error", param: "temperature", code: null } });
    const unknown = await createApp(fakeEngine()).handle(new Request("http://local/v1/nope"));
    expect(unknown.status).toBe(404);
    expect((await unknown.json() as any).error.message).toBe("no route for GET /v1/nope");
  });
});

describe("Ollama routes (fake engine)", () => {
  test("tool calls come back as Ollama's message.tool_calls with object arguments; history maps to engine messages", async () => {
    const fake = fakeEngine();
    const body = {
      model: "caller",
      stream: false,
      tools: [{ type: "function", function: { name: "get_weather", description: "w", parameters: { type: "object", properties: { city: { type: "string" } } } } }],
      messages: [
        { role: "user", content: "weather?" },
        { role: "assistant", content: "", tool_calls: [{ function: { name: "get_weather", arguments: { city: "Oslo" } } }] },
        { role: "tool", content: "sunny" },
      ],
    };
    const res = await post(createApp(fake), "/api/chat", body);
    expect(res.status).toBe(200);
    const j = (await res.json()) as any;
    expect(j.done).toBe(true);
    expect(j.done_reason).toBe("stop");
    expect(j.message).toEqual({ role: "assistant", content: "", tool_calls: [{ function: { name: "get_weather", arguments: { city: "Paris" } } }] });
    const sent = fake.calls[0]!;
    expect(sent.tools?.[0]?.name).toBe("get_weather");
    expect(sent.messages?.[1]?.toolCalls?.[0]).toEqual({ id: "call_0", name: "get_weather", arguments: '{"city":"Oslo"}' });
    expect(sent.messages?.[2]).toEqual({ role: "tool", content: "sunny", toolCallId: "call_0" });
  });

  test("streamed NDJSON: token lines then a done line with nanosecond durations", async () => {
    const res = await post(createApp(fakeEngine()), "/api/chat", { model: "fake", messages: [{ role: "user", content: "hi" }] });
    expect(res.headers.get("content-type")).toContain("application/x-ndjson");
    const lines = (await res.text()).trim().split("\n").map((l) => JSON.parse(l));
    expect(lines.slice(0, -1).map((l) => l.message.content).join("")).toBe("Hello\nworld");
    const last = lines.at(-1);
    expect(last.done).toBe(true);
    expect(last.done_reason).toBe("length");
    for (const k of ["total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration"]) expect(typeof last[k]).toBe("number");
  });

  test("format, options and keep_alive are validated with the field named", async () => {
    const app = createApp(fakeEngine());
    for (const [bad, field] of [[{ format: 42 }, "format"], [{ options: { top_k: 1.5 } }, "top_k"], [{ options: { num_ctx: 0 } }, "num_ctx"], [{ keep_alive: true }, "keep_alive"], [{ tools: "x" }, "tools"]] as const) {
      const res = await post(app, "/api/chat", { model: "fake", messages: [{ role: "user", content: "x" }], ...bad });
      expect(res.status).toBe(400);
      expect(((await res.json()) as { error: string }).error).toContain(field);
    }
  });

  test("format json / schema reach the engine as a response format", async () => {
    const fake = fakeEngine();
    const app = createApp(fake);
    await post(app, "/api/chat", { model: "fake", stream: false, format: "json", messages: [{ role: "user", content: "x" }] });
    await post(app, "/api/chat", { model: "fake", stream: false, format: { type: "object" }, messages: [{ role: "user", content: "x" }] });
    expect(fake.calls[0]!.responseFormat).toEqual({ type: "json_object" });
    expect(fake.calls[1]!.responseFormat).toEqual({ type: "json_schema", schema: { type: "object" } });
  });
});

describe("Anthropic routes (fake engine)", () => {
  test("errors on /v1/messages use Anthropic's shape, validation errors name the field", async () => {
    const app = createApp(fakeEngine());
    const res = await post(app, "/v1/messages", { model: "fake", max_tokens: 0, messages: [{ role: "user", content: "x" }] });
    expect(res.status).toBe(400);
    const j = (await res.json()) as { type: string; error: { type: string; message: string } };
    expect(j.type).toBe("error");
    expect(j.error.type).toBe("invalid_request_error");
    expect(j.error.message).toContain("max_tokens");
    const nf = await post(app, "/v1/messages", { model: "other", max_tokens: 5, messages: [{ role: "user", content: "x" }] });
    expect(nf.status).toBe(404);
    expect(((await nf.json()) as { error: { type: string } }).error.type).toBe("not_found_error");
  });

  test("a tool call becomes a tool_use block with stop_reason tool_use; count_tokens answers input_tokens", async () => {
    const app = createApp(fakeEngine());
    const res = await post(app, "/v1/messages", { model: "caller", max_tokens: 50, messages: [{ role: "user", content: "x" }], tools: [{ name: "get_weather", input_schema: { type: "object" } }] });
    const j = (await res.json()) as any;
    expect(j.stop_reason).toBe("tool_use");
    expect(j.content).toEqual([{ type: "tool_use", id: "call_0", name: "get_weather", input: { city: "Paris" } }]);
    const c = await post(app, "/v1/messages/count_tokens", { model: "fake", messages: [{ role: "user", content: "x" }] });
    expect(await c.json()).toEqual({ input_tokens: 7 });
  });
});

describe("ops routes (fake engine)", () => {
  test("GET /health", async () => {
    const body = await (await createApp(fakeEngine()).handle(new Request("http://local/health"))).json() as any;
    expect(body).toMatchObject({ status: "ready", models: 1, loaded: [], model_states: [] });
    expect(typeof body.version).toBe("string");
    expect(Number.isInteger(body.uptime)).toBe(true);
  });

  test("GET /api/models", async () => {
    const body = await (await createApp(fakeEngine()).handle(new Request("http://local/api/models"))).json() as any;
    expect(body.models).toEqual([{ name: "fake", path: "/x/fake.gguf", source: "dir", size_bytes: 10, loaded: false }]);
  });

  test("GET /diag", async () => {
    const body = await (await createApp(fakeEngine()).handle(new Request("http://local/diag"))).json() as any;
    expect(body).toMatchObject({ backend: "not started", threads: 1, ctx_size: 512, gpu_mode: "cpu" });
    expect(body.cpus.logical).toBeGreaterThan(0);
    expect(body.memory.total_bytes).toBeGreaterThan(0);
    expect(body.os.platform).toBe(process.platform);
  });

  test("unknown route: 404 JSON; wrong method: 404 JSON", async () => {
    const app = createApp(fakeEngine());
    const r1 = await app.handle(new Request("http://local/nope"));
    expect(r1.status).toBe(404);
    expect(await r1.json() as any).toEqual({ error: "no route for GET /nope" });
    const r2 = await app.handle(new Request("http://local/api/generate"));
    expect(r2.status).toBe(404);
  });
});

describe("bind auto", () => {
  test("takes 127.0.0.1:11435, or the next free port when it is busy", async () => {
    const { listen } = await import("../src/server/listen.ts");
    const first = listen(createApp(fakeEngine()), "auto");
    const second = listen(createApp(fakeEngine()), "auto");
    try {
      expect(first.hostname).toBe("127.0.0.1");
      expect(first.port).toBeGreaterThanOrEqual(11435);
      expect(first.port).toBeLessThanOrEqual(11535);
      expect(second.port).toBeGreaterThan(first.port);
      expect(second.url).toBe(`http://127.0.0.1:${second.port}`);
      expect((await fetch(`${second.url}/health`)).status).toBe(200);
    } finally {
      await first.stop();
      await second.stop();
    }
  });

  test("an explicit address that is in use is a usage error", async () => {
    const { listen } = await import("../src/server/listen.ts");
    const a = listen(createApp(fakeEngine()), "127.0.0.1:0");
    try {
      expect(() => listen(createApp(fakeEngine()), `127.0.0.1:${a.port}`)).toThrow(/in use/);
    } finally {
      await a.stop();
    }
  });
});
