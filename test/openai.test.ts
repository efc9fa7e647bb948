/**
 * Needs a model: the OpenAI-compatible API (/v1/*, /tokenize, /detokenize) on a real loopback
 * server, driven by the official `openai` client, the Vercel AI SDK and raw fetch for wire formats.
 * The tiny model has random weights: its text is gibberish, but deterministic with temperature 0
 * (or with a fixed seed), so greedy outputs can be compared across requests, clients and modes.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { generateText, Output, streamText } from "ai";
import OpenAI, { APIError } from "openai";
import { z } from "zod";
import type { Engine } from "../src/engine/engine.ts";
import type { GenerateResult } from "../src/engine/types.ts";
import type { Listening } from "../src/server/listen.ts";
import { makeEngine, makeFixtures, spyGenerations, startServer } from "./helpers.ts";

// Loads a model on 2 shared cores: allow 60 s per test (bun's default is 5 s).
setDefaultTimeout(60_000);

let fx: Awaited<ReturnType<typeof makeFixtures>>;
let engine: Engine;
let server: Listening;
let client: OpenAI;

beforeAll(async () => {
  fx = await makeFixtures();
  engine = makeEngine({ dir: fx.dir });
  server = startServer(engine);
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "x", maxRetries: 0 });
});
afterAll(async () => {
  await server?.stop();
  await engine?.close();
  fx?.cleanup();
});

type Chunk = OpenAI.Chat.Completions.ChatCompletionChunk;
type Message = OpenAI.Chat.Completions.ChatCompletionMessageParam;
type Tool = OpenAI.Chat.Completions.ChatCompletionTool;

const user = (content: string): Message[] => [{ role: "user", content }];

/** A greedy, non-stream chat completion through the client. */
function chat(messages: Message[], extra: Partial<OpenAI.Chat.Completions.ChatCompletionCreateParamsNonStreaming> = {}) {
  return client.chat.completions.create({ model: "tiny", messages, temperature: 0, max_tokens: 16, ...extra });
}

/** All chunks of a streamed chat completion through the client. */
async function chatChunks(params: Omit<OpenAI.Chat.Completions.ChatCompletionCreateParamsStreaming, "model" | "stream"> & { model?: string }): Promise<Chunk[]> {
  const stream = await client.chat.completions.create({ model: "tiny", temperature: 0, max_tokens: 16, ...params, stream: true });
  const chunks: Chunk[] = [];
  for await (const c of stream) chunks.push(c);
  return chunks;
}

/** POST a JSON body (or a raw string) to the server. */
function post(path: string, body: unknown, init: RequestInit = {}): Promise<Response> {
  return fetch(`${server.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: typeof body === "string" ? body : JSON.stringify(body),
    ...init,
  });
}

/** Raw SSE text split into its events; asserts every event is exactly one `data:` line. */
function dataEvents(raw: string): string[] {
  expect(raw.endsWith("\n\n")).toBe(true);
  return raw
    .split("\n\n")
    .filter(Boolean)
    .map((block) => {
      expect(block).toStartWith("data: ");
      expect(block.includes("\n")).toBe(false);
      return block.slice("data: ".length);
    });
}

/** Awaits a rejected client call and checks its APIError subclass and status. */
async function apiError<T extends APIError>(p: Promise<unknown>, Cls: new (...args: never[]) => T, status: number): Promise<T> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(APIError);
  expect(err).toBeInstanceOf(Cls);
  expect((err as APIError).status).toBe(status);
  return err as T;
}

/** The OpenAI error body of a raw response, with its status checked. */
async function errorBody(res: Response, status: number): Promise<{ message: string; type: string; param: string | null; code: string | null }> {
  expect(res.status).toBe(status);
  expect(res.headers.get("content-type")).toStartWith("application/json");
  const body = (await res.json()) as { error: { message: string; type: string; param: string | null; code: string | null } };
  expect(Object.keys(body)).toEqual(["error"]);
  expect(typeof body.error.message).toBe("string");
  expect(body.error).toHaveProperty("param");
  expect(body.error).toHaveProperty("code");
  return body.error;
}


async function firstResult(spy: { results: Promise<GenerateResult>[] }): Promise<GenerateResult | undefined> {
  const deadline = Date.now() + 10_000;
  while (spy.results.length === 0 && Date.now() < deadline) await Bun.sleep(5);
  return Promise.race([spy.results[0], Bun.sleep(10_000).then(() => undefined)]);
}

/** A JSON object schema small enough for the random model to finish: bounded strings, an enum, an integer, a boolean. */
const PERSON = {
  type: "object",
  properties: {
    name: { type: "string", maxLength: 12 },
    age: { type: "integer" },
    color: { type: "string", enum: ["red", "green", "blue"] },
    ok: { type: "boolean" },
  },
  required: ["name", "age", "color", "ok"],
  additionalProperties: false,
} as const;

function expectPerson(value: unknown) {
  expect(value).toBeObject();
  const v = value as Record<string, unknown>;
  expect(Object.keys(v).sort()).toEqual(["age", "color", "name", "ok"]);
  expect(typeof v.name).toBe("string");
  expect((v.name as string).length).toBeLessThanOrEqual(12);
  expect(Number.isInteger(v.age)).toBe(true);
  expect(["red", "green", "blue"]).toContain(v.color as string);
  expect(typeof v.ok).toBe("boolean");
}

const WEATHER: Tool = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Current weather of a city",
    parameters: {
      type: "object",
      properties: { city: { type: "string", maxLength: 10 }, unit: { type: "string", enum: ["c", "f"] } },
      required: ["city", "unit"],
    },
  },
};
const ADD: Tool = {
  type: "function",
  function: {
    name: "add",
    description: "Adds two numbers",
    parameters: { type: "object", properties: { a: { type: "integer" }, b: { type: "integer" } }, required: ["a", "b"] },
  },
};

function expectWeatherArgs(json: string) {
  const args = JSON.parse(json) as Record<string, unknown>;
  expect(typeof args.city).toBe("string");
  expect((args.city as string).length).toBeLessThanOrEqual(10);
  expect(["c", "f"]).toContain(args.unit as string);
}

describe("chat.completions (non-stream)", () => {
  test("shape: chat.completion, chatcmpl- id, assistant message, finish_reason length, consistent usage", async () => {
    const before = Math.floor(Date.now() / 1000);
    const r = await chat(user("hello"), { max_tokens: 16 });
    expect(r.object).toBe("chat.completion");
    expect(r.id).toMatch(/^chatcmpl-[A-Za-z0-9]+$/);
    expect(Number.isInteger(r.created)).toBe(true);
    expect(r.created).toBeGreaterThanOrEqual(before - 1);
    expect(r.created).toBeLessThanOrEqual(Math.floor(Date.now() / 1000) + 1);
    expect(r.model).toBe("tiny");
    expect(r.choices).toHaveLength(1);
    const c = r.choices[0]!;
    expect(c.index).toBe(0);
    expect(c.message.role).toBe("assistant");
    expect(typeof c.message.content).toBe("string");
    expect(c.message.content!.length).toBeGreaterThan(0);
    expect(c.message.tool_calls).toBeUndefined();
    expect(c.finish_reason).toBe("length");
    expect(r.usage!.completion_tokens).toBe(16);
    expect(r.usage!.prompt_tokens).toBeGreaterThan(0);
    expect(r.usage!.total_tokens).toBe(r.usage!.prompt_tokens + r.usage!.completion_tokens);
    // Greedy: the same request gives the same text, under a new id.
    const again = await chat(user("hello"), { max_tokens: 16 });
    expect(again.choices[0]!.message.content).toBe(c.message.content);
    expect(again.id).not.toBe(r.id);
  });

  test("a stop string taken from the greedy output ends generation with finish_reason stop; its text is not emitted", async () => {
    const base = (await chat(user("hello"), { max_tokens: 24 })).choices[0]!.message.content!;
    expect(base.length).toBeGreaterThan(12);
    const stop = base.slice(8, 12);
    const at = base.indexOf(stop);
    for (const stopParam of [stop, ["never-in-output-XYZ", stop]]) {
      const r = await chat(user("hello"), { max_tokens: 24, stop: stopParam });
      expect(r.choices[0]!.finish_reason).toBe("stop");
      expect(r.choices[0]!.message.content).toBe(base.slice(0, at));
      expect(r.choices[0]!.message.content!.includes(stop)).toBe(false);
      expect(r.usage!.completion_tokens).toBeLessThan(24);
    }
  });

  test("max_completion_tokens works like max_tokens", async () => {
    const a = await chat(user("hello"), { max_tokens: 7 });
    const b = await client.chat.completions.create({ model: "tiny", messages: user("hello"), temperature: 0, max_completion_tokens: 7 });
    expect(b.choices[0]!.finish_reason).toBe("length");
    expect(b.usage!.completion_tokens).toBe(7);
    expect(b.choices[0]!.message.content).toBe(a.choices[0]!.message.content);
  });

  test("content as an array of text parts is the same prompt as the joined string", async () => {
    const plain = await chat(user("hello world"));
    const parts = await chat([
      {
        role: "user",
        content: [
          { type: "text", text: "hello" },
          { type: "text", text: " world" },
        ],
      },
    ]);
    expect(parts.usage!.prompt_tokens).toBe(plain.usage!.prompt_tokens);
    expect(parts.choices[0]!.message.content).toBe(plain.choices[0]!.message.content);
  });

  test("a non-text content part is a 400 naming the part type and its param", async () => {
    const err = await apiError(
      chat([
        {
          role: "user",
          content: [
            { type: "text", text: "look:" },
            { type: "image_url", image_url: { url: "http://example.invalid/cat.png" } },
          ],
        },
      ]),
      OpenAI.BadRequestError,
      400,
    );
    expect(err.message).toContain("image_url");
    expect(err.param).toBe("messages[0].content[1].type");
    expect(err.type).toBe("invalid_request_error");
  });

  test("system messages are part of the prompt; developer is accepted as a system message", async () => {
    const bare = await chat(user("hello"));
    const sys = await chat([{ role: "system", content: "You are terse." }, ...user("hello")]);
    expect(sys.usage!.prompt_tokens).toBeGreaterThan(bare.usage!.prompt_tokens);
    const dev = await chat([{ role: "developer", content: "You are terse." }, ...user("hello")]);
    expect(dev.choices[0]!.finish_reason).toBe("length");
    expect(dev.usage!.prompt_tokens).toBe(sys.usage!.prompt_tokens);
    expect(dev.choices[0]!.message.content).toBe(sys.choices[0]!.message.content);
  });
});

describe("chat.completions (stream)", () => {
  test("client chunks: role first, one id/created, content equals the non-stream greedy text, finish_reason last", async () => {
    const full = await chat(user("hello"), { max_tokens: 20 });
    const chunks = await chatChunks({ messages: user("hello"), max_tokens: 20 });
    expect(chunks.length).toBeGreaterThan(3);
    expect(chunks[0]!.choices[0]!.delta.role).toBe("assistant");
    const ids = new Set(chunks.map((c) => c.id));
    expect(ids.size).toBe(1);
    expect([...ids][0]).toMatch(/^chatcmpl-/);
    expect(new Set(chunks.map((c) => c.created)).size).toBe(1);
    for (const c of chunks) {
      expect(c.object).toBe("chat.completion.chunk");
      expect(c.choices).toHaveLength(1);
      expect(c.choices[0]!.index).toBe(0);
      expect(c.usage ?? null).toBeNull();
    }
    const text = chunks.map((c) => c.choices[0]!.delta.content ?? "").join("");
    expect(text).toBe(full.choices[0]!.message.content!);
    expect(chunks.at(-1)!.choices[0]!.finish_reason).toBe("length");
    for (const c of chunks.slice(0, -1)) expect(c.choices[0]!.finish_reason).toBeNull();
    // One content chunk per generated token (plus the role and finish chunks).
    expect(chunks.filter((c) => c.choices[0]!.delta.content).length).toBe(20);
  });

  test("stream_options.include_usage: usage null on every chunk, then a final chunk with no choices and real usage", async () => {
    const full = await chat(user("hello"), { max_tokens: 9 });
    const chunks = await chatChunks({ messages: user("hello"), max_tokens: 9, stream_options: { include_usage: true } });
    const last = chunks.at(-1)!;
    expect(last.choices).toEqual([]);
    expect(last.usage).toEqual(full.usage!);
    for (const c of chunks.slice(0, -1)) {
      expect(c).toHaveProperty("usage");
      expect(c.usage).toBeNull();
      expect(c.choices).toHaveLength(1);
    }
    expect(chunks.at(-2)!.choices[0]!.finish_reason).toBe("length");
    expect(new Set(chunks.map((c) => c.id)).size).toBe(1);
  });

  test("stop strings hold in streams too", async () => {
    const base = (await chat(user("hello"), { max_tokens: 24 })).choices[0]!.message.content!;
    const stop = base.slice(10, 13);
    const nonStream = await chat(user("hello"), { max_tokens: 24, stop });
    const chunks = await chatChunks({ messages: user("hello"), max_tokens: 24, stop });
    const text = chunks.map((c) => c.choices[0]?.delta.content ?? "").join("");
    expect(text).toBe(nonStream.choices[0]!.message.content!);
    expect(text).toBe(base.slice(0, base.indexOf(stop)));
    expect(chunks.at(-1)!.choices[0]!.finish_reason).toBe("stop");
  });

  test("raw wire: text/event-stream, every event is data: {json}, the last is data: [DONE]", async () => {
    const res = await post("/v1/chat/completions", { model: "tiny", messages: user("hello"), temperature: 0, max_tokens: 5, stream: true, stream_options: { include_usage: true } });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toStartWith("text/event-stream");
    const events = dataEvents(await res.text());
    expect(events.at(-1)).toBe("[DONE]");
    const payloads = events.slice(0, -1).map((e) => JSON.parse(e) as Chunk);
    // role + 5 tokens + finish + usage
    expect(payloads).toHaveLength(8);
    expect(payloads.every((p) => p.object === "chat.completion.chunk")).toBe(true);
    expect(payloads.at(-1)!.usage!.completion_tokens).toBe(5);
  });
});

describe("response_format", () => {
  test("json_object: the content parses as a JSON object", async () => {
    for (const seed of [3, 4, 5, 6]) {
      const r = await client.chat.completions.create({ model: "tiny", messages: user("give json"), seed, max_tokens: 400, response_format: { type: "json_object" } });
      expect(r.choices[0]!.finish_reason).toBe("stop");
      const value = JSON.parse(r.choices[0]!.message.content!) as unknown;
      expect(value).toBeObject();
      expect(Array.isArray(value)).toBe(false);
    }
  });

  test("json_schema: the content parses and validates against the schema, for several seeds", async () => {
    const seen = new Set<string>();
    for (const seed of [1, 2, 3, 4]) {
      const r = await client.chat.completions.create({
        model: "tiny",
        messages: user("Describe a person."),
        seed,
        max_tokens: 400,
        response_format: { type: "json_schema", json_schema: { name: "person", schema: PERSON as unknown as Record<string, unknown>, strict: true } },
      });
      expect(r.choices[0]!.finish_reason).toBe("stop");
      const content = r.choices[0]!.message.content!;
      expectPerson(JSON.parse(content));
      seen.add(content);
    }
    // Seeds really sample (the grammar is not just replaying one answer).
    expect(seen.size).toBeGreaterThan(1);
  });

  test("json_schema without a schema is a 400", async () => {
    const err = await errorBody(await post("/v1/chat/completions", { model: "tiny", messages: user("x"), response_format: { type: "json_schema", json_schema: { name: "x" } } }), 400);
    expect(err.param).toBe("response_format.json_schema.schema");
  });
});

describe("tools", () => {
  test('tool_choice "required": finish_reason tool_calls and a call whose arguments validate', async () => {
    const r = await chat(user("Weather in Paris?"), { max_tokens: 400, tools: [WEATHER], tool_choice: "required" });
    const c = r.choices[0]!;
    expect(c.finish_reason).toBe("tool_calls");
    expect(c.message.role).toBe("assistant");
    expect(c.message.tool_calls).toHaveLength(1);
    const call = c.message.tool_calls![0]!;
    expect(call.id).toMatch(/^call_/);
    expect(call.type).toBe("function");
    if (call.type !== "function") throw new Error("not a function call");
    expect(call.function.name).toBe("get_weather");
    expectWeatherArgs(call.function.arguments);
  });

  test("a named function is the one called, with arguments of its schema", async () => {
    for (const seed of [1, 2]) {
      const r = await client.chat.completions.create({
        model: "tiny",
        messages: user("Weather in Paris?"),
        seed,
        max_tokens: 400,
        tools: [WEATHER, ADD],
        tool_choice: { type: "function", function: { name: "add" } },
      });
      expect(r.choices[0]!.finish_reason).toBe("tool_calls");
      const call = r.choices[0]!.message.tool_calls![0]!;
      if (call.type !== "function") throw new Error("not a function call");
      expect(call.id).toMatch(/^call_/);
      expect(call.function.name).toBe("add");
      const args = JSON.parse(call.function.arguments) as Record<string, unknown>;
      expect(Object.keys(args).sort()).toEqual(["a", "b"]);
      expect(Number.isInteger(args.a)).toBe(true);
      expect(Number.isInteger(args.b)).toBe(true);
    }
  });

  test("streaming with tools required: tool_call deltas rebuild the call; last finish_reason tool_calls", async () => {
    const chunks = await chatChunks({ messages: user("Weather in Paris?"), max_tokens: 400, tools: [WEATHER], tool_choice: "required" });
    expect(chunks[0]!.choices[0]!.delta.role).toBe("assistant");
    const calls = new Map<number, { id?: string; type?: string; name: string; arguments: string }>();
    for (const c of chunks) {
      for (const d of c.choices[0]?.delta.tool_calls ?? []) {
        const acc = calls.get(d.index) ?? { name: "", arguments: "" };
        if (d.id) acc.id = d.id;
        if (d.type) acc.type = d.type;
        if (d.function?.name) acc.name += d.function.name;
        if (d.function?.arguments) acc.arguments += d.function.arguments;
        calls.set(d.index, acc);
      }
    }
    expect([...calls.keys()]).toEqual([0]);
    const call = calls.get(0)!;
    expect(call.id).toMatch(/^call_/);
    expect(call.type).toBe("function");
    expect(call.name).toBe("get_weather");
    expectWeatherArgs(call.arguments);
    expect(chunks.at(-1)!.choices[0]!.finish_reason).toBe("tool_calls");
    expect(new Set(chunks.map((c) => c.id)).size).toBe(1);
  });

  test("tool_choice naming a function that is not in tools is a 400", async () => {
    const err = await apiError(chat(user("x"), { tools: [WEATHER], tool_choice: { type: "function", function: { name: "nope" } } }), OpenAI.BadRequestError, 400);
    expect(err.param).toBe("tool_choice");
    expect(err.message).toContain("nope");
  });

  test('tool_choice "none" with tools: a plain text answer', async () => {
    const r = await chat(user("Weather in Paris?"), { max_tokens: 12, tools: [WEATHER], tool_choice: "none" });
    expect(r.choices[0]!.finish_reason).toBe("length");
    expect(r.choices[0]!.message.tool_calls).toBeUndefined();
    expect(typeof r.choices[0]!.message.content).toBe("string");
    expect(r.usage!.completion_tokens).toBe(12);
  });

  test('tool_choice "auto" on the random model: a normal answer', async () => {
    const r = await chat(user("Weather in Paris?"), { max_tokens: 24, tools: [WEATHER, ADD], tool_choice: "auto" });
    expect(["length", "stop"]).toContain(r.choices[0]!.finish_reason);
    expect(typeof r.choices[0]!.message.content).toBe("string");
    expect(r.usage!.completion_tokens).toBeGreaterThan(0);
    expect(r.usage!.completion_tokens).toBeLessThanOrEqual(24);
  });

  test("a history with an assistant tool call and its tool result is accepted", async () => {
    const messages: Message[] = [
      ...user("Weather in Paris?"),
      { role: "assistant", content: null, tool_calls: [{ id: "call_abc", type: "function", function: { name: "get_weather", arguments: '{"city":"Paris","unit":"c"}' } }] },
      { role: "tool", tool_call_id: "call_abc", content: "sunny, 21 degrees" },
    ];
    const withTools = await chat(messages, { max_tokens: 5, tools: [WEATHER] });
    expect(withTools.choices[0]!.message.role).toBe("assistant");
    expect(["length", "stop", "tool_calls"]).toContain(withTools.choices[0]!.finish_reason);
    const noTools = await chat(messages, { max_tokens: 5 });
    expect(noTools.choices[0]!.finish_reason).toBe("length");
    // The tool result is in the prompt.
    const without = await chat(messages.slice(0, 1), { max_tokens: 5 });
    expect(noTools.usage!.prompt_tokens).toBeGreaterThan(without.usage!.prompt_tokens);
  });

  test("a tool message without tool_call_id is a 400", async () => {
    const err = await errorBody(await post("/v1/chat/completions", { model: "tiny", messages: [{ role: "tool", content: "x" }] }), 400);
    expect(err.param).toBe("messages[0].tool_call_id");
  });
});

describe("logprobs and n", () => {
  test("chat logprobs: one entry per token, spelling the same greedy text; top_logprobs ranked, the greedy pick first", async () => {
    const plain = await chat(user("hello"), { max_tokens: 12 });
    const r = await chat(user("hello"), { max_tokens: 12, logprobs: true, top_logprobs: 3 });
    const content = r.choices[0]!.message.content!;
    expect(content).toBe(plain.choices[0]!.message.content!);
    const lps = r.choices[0]!.logprobs!.content!;
    expect(lps).toHaveLength(r.usage!.completion_tokens);
    expect(lps).toHaveLength(12);
    expect(lps.map((l) => l.token).join("")).toBe(content);
    for (const l of lps) {
      expect(Number.isFinite(l.logprob)).toBe(true);
      expect(l.logprob).toBeLessThanOrEqual(0);
      expect(l.bytes).toEqual([...new TextEncoder().encode(l.token)]);
      expect(l.top_logprobs).toHaveLength(3);
      const tops = l.top_logprobs.map((t) => t.logprob);
      expect(tops).toEqual([...tops].sort((a, b) => b - a));
      // temperature 0: the chosen token is the most likely one.
      expect(l.top_logprobs[0]!.token).toBe(l.token);
      expect(l.top_logprobs[0]!.logprob).toBeCloseTo(l.logprob, 9);
    }
    // Without logprobs the choice carries logprobs: null.
    expect(plain.choices[0]!.logprobs).toBeNull();
  });

  test("chat logprobs in a stream: the chunks' entries spell the streamed text", async () => {
    const chunks = await chatChunks({ messages: user("hello"), max_tokens: 10, logprobs: true });
    const text = chunks.map((c) => c.choices[0]?.delta.content ?? "").join("");
    const tokens = chunks.flatMap((c) => c.choices[0]?.logprobs?.content ?? []);
    expect(tokens).toHaveLength(10);
    expect(tokens.map((t) => t.token).join("")).toBe(text);
    expect(text).toBe((await chat(user("hello"), { max_tokens: 10 })).choices[0]!.message.content!);
  });

  test("completions logprobs: <n> gives the legacy tokens / token_logprobs / top_logprobs / text_offset", async () => {
    const plain = await client.completions.create({ model: "tiny", prompt: "hello", temperature: 0, max_tokens: 8 });
    const r = await client.completions.create({ model: "tiny", prompt: "hello", temperature: 0, max_tokens: 8, logprobs: 2 });
    const text = r.choices[0]!.text;
    expect(text).toBe(plain.choices[0]!.text);
    const lp = r.choices[0]!.logprobs!;
    expect(lp.tokens).toHaveLength(8);
    expect(lp.tokens!.join("")).toBe(text);
    expect(lp.token_logprobs).toHaveLength(8);
    expect(lp.token_logprobs!.every((x) => x <= 0)).toBe(true);
    expect(lp.top_logprobs!.every((t) => Object.keys(t).length >= 1 && Object.keys(t).length <= 2)).toBe(true);
    lp.tokens!.forEach((tok, i) => expect(text.slice(lp.text_offset![i]!).startsWith(tok)).toBe(true));
  });

  test("top_logprobs without logprobs, and logprobs with response_format, are 400s", async () => {
    const a = await apiError(chat(user("x"), { top_logprobs: 2 }), OpenAI.BadRequestError, 400);
    expect(a.param).toBe("top_logprobs");
    const b = await apiError(chat(user("x"), { logprobs: true, response_format: { type: "json_object" } }), OpenAI.BadRequestError, 400);
    expect(b.param).toBe("logprobs");
  });

  test("n: 2 is a 400 on param n", async () => {
    const err = await apiError(chat(user("x"), { n: 2 }), OpenAI.BadRequestError, 400);
    expect(err.param).toBe("n");
    expect(err.message).toMatch(/not supported/);
  });
});

describe("completions", () => {
  test("a prompt string: text_completion with text and usage", async () => {
    const r = await client.completions.create({ model: "tiny", prompt: "hello", temperature: 0, max_tokens: 8 });
    expect(r.object).toBe("text_completion");
    expect(r.id).toMatch(/^cmpl-/);
    expect(r.model).toBe("tiny");
    expect(r.choices).toHaveLength(1);
    expect(r.choices[0]!.index).toBe(0);
    expect(typeof r.choices[0]!.text).toBe("string");
    expect(r.choices[0]!.text.length).toBeGreaterThan(0);
    expect(r.choices[0]!.finish_reason).toBe("length");
    expect(r.usage!.completion_tokens).toBe(8);
    expect(r.usage!.prompt_tokens).toBeGreaterThan(0);
    expect(r.usage!.total_tokens).toBe(r.usage!.prompt_tokens + 8);
  });

  test("a prompt array of 2 strings: 2 choices, index 0 and 1, each the answer of its own prompt", async () => {
    const a = await client.completions.create({ model: "tiny", prompt: "hello", temperature: 0, max_tokens: 5 });
    const b = await client.completions.create({ model: "tiny", prompt: "goodbye", temperature: 0, max_tokens: 5 });
    const r = await client.completions.create({ model: "tiny", prompt: ["hello", "goodbye"], temperature: 0, max_tokens: 5 });
    expect(r.choices.map((c) => c.index)).toEqual([0, 1]);
    expect(r.choices.map((c) => c.text)).toEqual([a.choices[0]!.text, b.choices[0]!.text]);
    expect(r.usage!.completion_tokens).toBe(10);
    expect(r.usage!.prompt_tokens).toBe(a.usage!.prompt_tokens + b.usage!.prompt_tokens);
  });

  test("stream: text chunks equal the non-stream text, then [DONE]", async () => {
    const full = await client.completions.create({ model: "tiny", prompt: "hello", temperature: 0, max_tokens: 8 });
    const stream = await client.completions.create({ model: "tiny", prompt: "hello", temperature: 0, max_tokens: 8, stream: true });
    const chunks: OpenAI.Completions.Completion[] = [];
    for await (const c of stream) chunks.push(c);
    expect(chunks.map((c) => c.choices[0]?.text ?? "").join("")).toBe(full.choices[0]!.text);
    expect(chunks.at(-1)!.choices[0]!.finish_reason).toBe("length");
    expect(new Set(chunks.map((c) => c.id)).size).toBe(1);

    const res = await post("/v1/completions", { model: "tiny", prompt: "hello", temperature: 0, max_tokens: 8, stream: true });
    expect(res.headers.get("content-type")).toStartWith("text/event-stream");
    const events = dataEvents(await res.text());
    expect(events.at(-1)).toBe("[DONE]");
    const payloads = events.slice(0, -1).map((e) => JSON.parse(e) as OpenAI.Completions.Completion);
    expect(payloads).toHaveLength(9);
    expect(payloads.every((p) => p.object === "text_completion")).toBe(true);
    expect(payloads.map((p) => p.choices[0]!.text).join("")).toBe(full.choices[0]!.text);
  });

  test("suffix and echo are 400s", async () => {
    const s = await apiError(client.completions.create({ model: "tiny", prompt: "x", suffix: "y" }), OpenAI.BadRequestError, 400);
    expect(s.param).toBe("suffix");
    const e = await apiError(client.completions.create({ model: "tiny", prompt: "x", echo: true }), OpenAI.BadRequestError, 400);
    expect(e.param).toBe("echo");
  });
});

describe("models", () => {
  test("list holds tiny; retrieve tiny; retrieve nope is a NotFoundError model_not_found", async () => {
    const list = await client.models.list();
    const tiny = list.data.find((m) => m.id === "tiny");
    expect(tiny).toBeDefined();
    expect(tiny!.object).toBe("model");
    expect(tiny!.owned_by).toBe("shimmy");
    expect(Number.isInteger(tiny!.created)).toBe(true);
    const one = await client.models.retrieve("tiny");
    expect(one).toMatchObject({ id: "tiny", object: "model", owned_by: "shimmy", created: tiny!.created });
    const err = await apiError(client.models.retrieve("nope"), OpenAI.NotFoundError, 404);
    expect(err.code).toBe("model_not_found");
    expect(err.message).toContain("nope");
  });
});

describe("embeddings", () => {
  test("a string: one finite vector; same text, same vector; usage counts tokens", async () => {
    const a = await client.embeddings.create({ model: "tiny", input: "hello world" });
    expect(a.object).toBe("list");
    expect(a.model).toBe("tiny");
    expect(a.data).toHaveLength(1);
    expect(a.data[0]!.object).toBe("embedding");
    expect(a.data[0]!.index).toBe(0);
    const v = a.data[0]!.embedding;
    expect(v.length).toBeGreaterThan(0);
    expect(v.every((x) => Number.isFinite(x))).toBe(true);
    expect(v.some((x) => x !== 0)).toBe(true);
    expect(a.usage.prompt_tokens).toBeGreaterThan(0);
    expect(a.usage.total_tokens).toBe(a.usage.prompt_tokens);
    const b = await client.embeddings.create({ model: "tiny", input: "hello world" });
    expect(b.data[0]!.embedding).toEqual(v);
  });

  test("an array of 2 strings: 2 items, index 0 and 1, each the vector of its own text", async () => {
    const one = await client.embeddings.create({ model: "tiny", input: "hello" });
    const two = await client.embeddings.create({ model: "tiny", input: "goodbye" });
    const r = await client.embeddings.create({ model: "tiny", input: ["hello", "goodbye"] });
    expect(r.data.map((d) => d.index)).toEqual([0, 1]);
    expect(r.data[0]!.embedding).toEqual(one.data[0]!.embedding);
    expect(r.data[1]!.embedding).toEqual(two.data[0]!.embedding);
    expect(r.data[0]!.embedding).not.toEqual(r.data[1]!.embedding);
    expect(r.usage.prompt_tokens).toBe(one.usage.prompt_tokens + two.usage.prompt_tokens);
  });

  test("token ids as input: the vector of the text they tokenize", async () => {
    const { tokens } = (await (await post("/tokenize", { content: "hello" })).json()) as { tokens: number[] };
    const byTokens = await client.embeddings.create({ model: "tiny", input: tokens });
    const byText = await client.embeddings.create({ model: "tiny", input: "hello" });
    expect(byTokens.data).toHaveLength(1);
    expect(byTokens.data[0]!.embedding).toEqual(byText.data[0]!.embedding);
  });

  test('encoding_format "base64": little-endian float32 of the float vector', async () => {
    const floats = (await (await post("/v1/embeddings", { model: "tiny", input: "hello", encoding_format: "float" })).json()) as { data: Array<{ embedding: number[] }> };
    const res = await post("/v1/embeddings", { model: "tiny", input: "hello", encoding_format: "base64" });
    expect(res.status).toBe(200);
    const b64 = (await res.json()) as { data: Array<{ embedding: string }>; usage: { prompt_tokens: number } };
    expect(typeof b64.data[0]!.embedding).toBe("string");
    const bytes = Buffer.from(b64.data[0]!.embedding, "base64");
    const want = floats.data[0]!.embedding;
    expect(bytes.length).toBe(want.length * 4);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let i = 0; i < want.length; i++) expect(Math.abs(view.getFloat32(i * 4, true) - want[i]!)).toBeLessThan(1e-6);
    expect(b64.usage.prompt_tokens).toBeGreaterThan(0);
    // The client asks for base64 by default and decodes it: it must agree too.
    const viaClient = await client.embeddings.create({ model: "tiny", input: "hello" });
    expect(viaClient.data[0]!.embedding).toEqual(want);
  });
});

describe("errors in OpenAI's shape", () => {
  test("malformed JSON is a 400 invalid_request_error", async () => {
    const err = await errorBody(await post("/v1/chat/completions", '{"model": "tiny", "messages": ['), 400);
    expect(err.type).toBe("invalid_request_error");
    expect(err.message).toMatch(/malformed JSON/);
    expect(err.param).toBeNull();
    expect(err.code).toBeNull();
  });

  test("a field of the wrong type is a 400 naming it", async () => {
    const err = await errorBody(await post("/v1/chat/completions", { model: "tiny", messages: user("x"), temperature: "hot" }), 400);
    expect(err.type).toBe("invalid_request_error");
    expect(err.param).toBe("temperature");
    expect(err.message).toContain("temperature");
    await apiError(client.chat.completions.create({ model: "tiny", messages: user("x"), temperature: "hot" as unknown as number }), OpenAI.BadRequestError, 400);
  });

  test("an unknown model is a 404 model_not_found listing tiny", async () => {
    const err = await errorBody(await post("/v1/chat/completions", { model: "nope", messages: user("x") }), 404);
    expect(err.code).toBe("model_not_found");
    expect(err.param).toBe("model");
    expect(err.message).toContain("nope");
    expect(err.message).toContain("tiny");
    const e = await apiError(chat(user("x"), { model: "nope" }), OpenAI.NotFoundError, 404);
    expect(e.code).toBe("model_not_found");
    await apiError(client.completions.create({ model: "nope", prompt: "x" }), OpenAI.NotFoundError, 404);
    await apiError(client.embeddings.create({ model: "nope", input: "x" }), OpenAI.NotFoundError, 404);
  });

  test("a prompt longer than the context is a 400 context_length_exceeded", async () => {
    const long = "hello ".repeat(6000);
    const err = await errorBody(await post("/v1/chat/completions", { model: "tiny", messages: user(long) }), 400);
    expect(err.code).toBe("context_length_exceeded");
    expect(err.type).toBe("invalid_request_error");
    expect(err.message).toContain("4096");
    const streamed = await apiError(client.chat.completions.create({ model: "tiny", messages: user(long), stream: true }), OpenAI.BadRequestError, 400);
    expect(streamed.code).toBe("context_length_exceeded");
    const cmpl = await apiError(client.completions.create({ model: "tiny", prompt: long }), OpenAI.BadRequestError, 400);
    expect(cmpl.code).toBe("context_length_exceeded");
  });

  test("a too-long prompt on /v1/completions names param prompt", async () => {
    const err = await errorBody(await post("/v1/completions", { model: "tiny", prompt: "hello ".repeat(6000) }), 400);
    expect(err.param).toBe("prompt");
  });
});

describe("/tokenize and /detokenize", () => {
  test("tokenize: ids; add_special prepends BOS (id 1); detokenize gives the text back", async () => {
    const plain = (await (await post("/tokenize", { content: "hello world" })).json()) as { tokens: number[] };
    expect(plain.tokens.length).toBeGreaterThan(1);
    expect(plain.tokens.every((t) => Number.isInteger(t) && t >= 0 && t < 512)).toBe(true);
    expect(plain.tokens[0]).not.toBe(1);
    const bos = (await (await post("/tokenize", { content: "hello world", add_special: true })).json()) as { tokens: number[] };
    expect(bos.tokens).toEqual([1, ...plain.tokens]);
    const back = (await (await post("/detokenize", { tokens: plain.tokens })).json()) as { content: string };
    expect(back).toEqual({ content: "hello world" });
    // BOS renders as nothing; SentencePiece's word-start space of the first word then shows.
    const backBos = (await (await post("/detokenize", { tokens: bos.tokens })).json()) as { content: string };
    expect(backBos.content.trimStart()).toBe("hello world");
    // The model field, when given, must name a model.
    const named = (await (await post("/tokenize", { model: "tiny", content: "hello world" })).json()) as { tokens: number[] };
    expect(named.tokens).toEqual(plain.tokens);
    const err = await errorBody(await post("/tokenize", { model: "nope", content: "x" }), 404);
    expect(err.code).toBe("model_not_found");
  });

  test("with_pieces: [{id, piece}] with the same ids; pieces spell the words", async () => {
    const plain = (await (await post("/tokenize", { content: "hello world" })).json()) as { tokens: number[] };
    const r = (await (await post("/tokenize", { content: "hello world", with_pieces: true })).json()) as { tokens: Array<{ id: number; piece: string }> };
    expect(r.tokens.map((t) => t.id)).toEqual(plain.tokens);
    for (const t of r.tokens) expect(Object.keys(t).sort()).toEqual(["id", "piece"]);
    expect(r.tokens.every((t) => typeof t.piece === "string" && t.piece.length > 0)).toBe(true);
    // Spaces aside, the pieces spell the content (the next test checks the spaces).
    expect(r.tokens.map((t) => t.piece).join("").replace(/ /g, "")).toBe("helloworld");
  });

  test("with_pieces: the pieces joined are the content", async () => {
    const r = (await (await post("/tokenize", { content: "hello world", with_pieces: true })).json()) as { tokens: Array<{ id: number; piece: string }> };
    expect(r.tokens.map((t) => t.piece).join("").trimStart()).toBe("hello world");
  });

  test("detokenize: an id outside the vocabulary is a 400 on param tokens", async () => {
    for (const tokens of [[512], [5, -1]]) {
      const err = await errorBody(await post("/detokenize", { tokens }), 400);
      expect(err.type).toBe("invalid_request_error");
      expect(err.param).toBe("tokens");
    }
  });
});

describe("Vercel AI SDK (@ai-sdk/openai-compatible)", () => {
  const provider = () => createOpenAICompatible({ name: "shimmy", baseURL: `${server.url}/v1`, includeUsage: true, supportsStructuredOutputs: true });

  test("generateText: the greedy text, finishReason length, usage matching the server's", async () => {
    const viaOpenAI = await chat(user("hello"), { max_tokens: 12 });
    const r = await generateText({ model: provider()("tiny"), prompt: "hello", temperature: 0, maxOutputTokens: 12, maxRetries: 0 });
    expect(r.text).toBe(viaOpenAI.choices[0]!.message.content!);
    expect(r.finishReason).toBe("length");
    expect(r.usage.inputTokens).toBe(viaOpenAI.usage!.prompt_tokens);
    expect(r.usage.outputTokens).toBe(12);
  });

  test("streamText: textStream concatenates to generateText's text", async () => {
    const g = await generateText({ model: provider()("tiny"), prompt: "hello", temperature: 0, maxOutputTokens: 14, maxRetries: 0 });
    const s = streamText({ model: provider()("tiny"), prompt: "hello", temperature: 0, maxOutputTokens: 14, maxRetries: 0 });
    let text = "";
    for await (const part of s.textStream) text += part;
    expect(text).toBe(g.text);
    expect(await s.finishReason).toBe("length");
    expect((await s.usage).outputTokens).toBe(14);
  });

  test("structured output from a zod schema goes through json_schema and validates", async () => {
    const schema = z.object({ name: z.string().max(10), color: z.enum(["red", "green"]), n: z.number().int() });
    for (const seed of [1, 3]) {
      const r = await generateText({ model: provider()("tiny"), prompt: "A person.", seed, maxOutputTokens: 400, maxRetries: 0, output: Output.object({ schema }) });
      const parsed = schema.parse(r.output);
      expect(parsed.name.length).toBeLessThanOrEqual(10);
      expect(r.finishReason).toBe("stop");
    }
  });
});

describe("cancellation", () => {
  test("aborting a chat stream through the client stops the generation and frees the model", async () => {
    const spy = await spyGenerations(engine, "tiny");
    try {
      const controller = new AbortController();
      const stream = await client.chat.completions.create(
        { model: "tiny", messages: user("hi"), temperature: 0, max_tokens: 3500, stream: true },
        { signal: controller.signal },
      );
      let seen = 0;
      try {
        for await (const _ of stream) if (++seen === 4) controller.abort();
      } catch (err) {
        expect(err).toBeInstanceOf(OpenAI.APIUserAbortError);
      }
      expect(seen).toBeGreaterThanOrEqual(4);
      const result = await firstResult(spy);
      expect(result?.finishReason).toBe("abort");
      expect(result!.timings.generatedTokens).toBeLessThan(1000);
    } finally {
      spy.restore();
    }
    const after = await chat(user("hi"), { max_tokens: 3 });
    expect(after.choices[0]!.finish_reason).toBe("length");
    expect(after.usage!.completion_tokens).toBe(3);
  });

  test("aborting a raw fetch of a stream stops the generation and frees the model", async () => {
    const spy = await spyGenerations(engine, "tiny");
    try {
      const controller = new AbortController();
      const res = await post("/v1/chat/completions", { model: "tiny", messages: user("hi"), temperature: 0, max_tokens: 3500, stream: true }, { signal: controller.signal });
      const reader = res.body!.getReader();
      await reader.read();
      await reader.read();
      controller.abort();
      const result = await firstResult(spy);
      expect(result?.finishReason).toBe("abort");
      expect(result!.timings.generatedTokens).toBeLessThan(1000);
    } finally {
      spy.restore();
    }
    const after = await client.completions.create({ model: "tiny", prompt: "hi", max_tokens: 3 });
    expect(after.usage!.completion_tokens).toBe(3);
  });
});

describe("model names", () => {
  test("every chunk of a stream names the resolved model", async () => {
    const chunks = await chatChunks({ model: "TINY", messages: user("x"), max_tokens: 2 });
    expect(new Set(chunks.map((c) => c.model))).toEqual(new Set(["tiny"]));
  });

  test("model names resolve case-insensitively", async () => {
    const r = await chat(user("x"), { model: "TINY", max_tokens: 2 });
    expect(r.model).toBe("tiny");
  });
});
