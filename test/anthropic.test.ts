/**
 * Needs a model: Anthropic's Messages API on a real loopback server, driven by the official
 * `@anthropic-ai/sdk` client and raw fetch for the exact SSE event sequence.
 */
import { beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import Anthropic from "@anthropic-ai/sdk";
import { readSse, serveFixtures, spyGenerations } from "./helpers.ts";

setDefaultTimeout(60_000);

const ctx = serveFixtures();
let client: Anthropic;
beforeAll(() => {
  client = new Anthropic({ baseURL: ctx.server.url, apiKey: "x", maxRetries: 0 });
});

/** Greedy sampling: this SDK's types no longer list temperature, but the wire field is honoured. */
const greedy = { temperature: 0 };
const user = (content: string): Anthropic.MessageParam[] => [{ role: "user", content }];
const text = (m: Anthropic.Message) => m.content.map((b) => (b.type === "text" ? b.text : "")).join("");

const WEATHER: Anthropic.Tool = { name: "get_weather", description: "Current weather in a city", input_schema: { type: "object", properties: { city: { type: "string", enum: ["Paris", "Oslo", "Lima"] } }, required: ["city"] } };

describe("Anthropic Messages (official SDK)", () => {
  test("non-stream: a message with text content, max_tokens stop and real usage", async () => {
    const m = await client.messages.create({ model: "tiny", max_tokens: 8, ...greedy, messages: user("hello") });
    expect(m.type).toBe("message");
    expect(m.role).toBe("assistant");
    expect(m.id).toMatch(/^msg_/);
    expect(m.stop_reason).toBe("max_tokens");
    expect(m.usage.output_tokens).toBe(8);
    expect(m.usage.input_tokens).toBeGreaterThan(1);
    const counted = await client.messages.countTokens({ model: "tiny", messages: user("hello") });
    expect(counted.input_tokens).toBe(m.usage.input_tokens);
    const longer = await client.messages.countTokens({ model: "tiny", messages: user("hello there, how are you doing today?") });
    expect(longer.input_tokens).toBeGreaterThan(counted.input_tokens);
  });

  test("stream: the SDK's accumulated message equals the non-stream answer", async () => {
    const params = { model: "tiny", max_tokens: 10, ...greedy, system: "Be brief.", messages: user("hello") };
    const full = await client.messages.create(params);
    const stream = client.messages.stream(params);
    let deltas = "";
    stream.on("text", (t) => (deltas += t));
    const final = await stream.finalMessage();
    expect(text(final)).toBe(text(full));
    expect(deltas).toBe(text(full));
    expect(final.stop_reason).toBe("max_tokens");
    expect(final.usage.output_tokens).toBe(10);
    expect(final.usage.input_tokens).toBe(full.usage.input_tokens);
  });

  test("system as text blocks equals system as a string", async () => {
    const a = await client.messages.create({ model: "tiny", max_tokens: 6, ...greedy, system: "Be brief.", messages: user("hi") });
    const b = await client.messages.create({ model: "tiny", max_tokens: 6, ...greedy, system: [{ type: "text", text: "Be brief." }], messages: user("hi") });
    expect(text(b)).toBe(text(a));
    expect(b.usage.input_tokens).toBe(a.usage.input_tokens);
  });

  test("stop_sequences: stop_reason stop_sequence names the one that matched", async () => {
    const full = await client.messages.create({ model: "tiny", max_tokens: 12, ...greedy, messages: user("hello") });
    const t = text(full);
    expect(t.length).toBeGreaterThan(3);
    const stopAt = t.slice(2, 4);
    const m = await client.messages.create({ model: "tiny", max_tokens: 12, ...greedy, messages: user("hello"), stop_sequences: ["\u0001never", stopAt] });
    expect(m.stop_reason).toBe("stop_sequence");
    expect(m.stop_sequence).toBe(stopAt);
    expect(text(m)).not.toContain(stopAt);
    expect(t.startsWith(text(m))).toBe(true);
  });

  test('tools: tool_choice "any" gives a tool_use block whose input matches the schema; a tool_result round-trips', async () => {
    const m = await client.messages.create({ model: "tiny", max_tokens: 400, messages: user("Weather in Paris?"), tools: [WEATHER], tool_choice: { type: "any" } });
    expect(m.stop_reason).toBe("tool_use");
    const call = m.content.find((b): b is Anthropic.ToolUseBlock => b.type === "tool_use")!;
    expect(call.name).toBe("get_weather");
    expect(["Paris", "Oslo", "Lima"]).toContain((call.input as { city: string }).city);
    const next = await client.messages.create({
      model: "tiny",
      max_tokens: 5,
      ...greedy,
      tools: [WEATHER],
      tool_choice: { type: "none" },
      messages: [...user("Weather in Paris?"), { role: "assistant", content: m.content }, { role: "user", content: [{ type: "tool_result", tool_use_id: call.id, content: "sunny, 21C" }] }],
    });
    expect(next.content[0]!.type).toBe("text");
    // The tool call and its result are part of the prompt.
    const bare = await client.messages.countTokens({ model: "tiny", tools: [WEATHER], tool_choice: { type: "none" }, messages: user("Weather in Paris?") });
    expect(next.usage.input_tokens).toBeGreaterThan(bare.input_tokens + 5);
  });

  test("stream with tools: the SDK assembles the tool_use block from input_json_delta", async () => {
    const final = await client.messages.stream({ model: "tiny", max_tokens: 400, messages: user("Weather?"), tools: [WEATHER], tool_choice: { type: "tool", name: "get_weather" } }).finalMessage();
    expect(final.stop_reason).toBe("tool_use");
    const call = final.content.find((b): b is Anthropic.ToolUseBlock => b.type === "tool_use")!;
    expect(call.name).toBe("get_weather");
    expect(["Paris", "Oslo", "Lima"]).toContain((call.input as { city: string }).city);
  });

  test("errors: Anthropic's shape through the SDK (404 unknown model, 400 missing max_tokens / bad temperature)", async () => {
    const nf = await client.messages.create({ model: "nope", max_tokens: 4, messages: user("x") }).catch((e) => e);
    expect(nf).toBeInstanceOf(Anthropic.NotFoundError);
    expect(nf.error.type).toBe("error");
    expect(nf.error.error.type).toBe("not_found_error");
    const noMax = await client.messages.create({ model: "tiny", messages: user("x") } as never).catch((e) => e);
    expect(noMax).toBeInstanceOf(Anthropic.BadRequestError);
    expect(noMax.error.error.message).toContain("max_tokens");
    const hot = await client.messages.create({ model: "tiny", max_tokens: 4, ...{ temperature: 2 }, messages: user("x") }).catch((e) => e);
    expect(hot).toBeInstanceOf(Anthropic.BadRequestError);
    expect(hot.error.error.message).toContain("temperature");
  });
});

describe("Anthropic wire format (raw HTTP)", () => {
  const post = (body: unknown, path = "/v1/messages") => fetch(`${ctx.server.url}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: typeof body === "string" ? body : JSON.stringify(body) });

  test("the SSE event sequence is message_start, ping, content_block_start/delta/stop, message_delta, message_stop", async () => {
    const res = await post({ model: "tiny", max_tokens: 4, ...greedy, stream: true, messages: user("hello") });
    expect(res.headers.get("content-type")).toContain("text/event-stream");
    const events = await readSse(res);
    const names = events.map((e) => e.event);
    expect(names[0]).toBe("message_start");
    expect(names[1]).toBe("ping");
    expect(names[2]).toBe("content_block_start");
    expect(names.slice(-3)).toEqual(["content_block_stop", "message_delta", "message_stop"]);
    expect(names.filter((n) => n === "content_block_delta").length).toBeGreaterThanOrEqual(1);
    for (const e of events) expect(JSON.parse(e.data).type).toBe(e.event);
    const delta = JSON.parse(events.at(-2)!.data);
    expect(delta.delta).toEqual({ stop_reason: "max_tokens", stop_sequence: null });
    expect(delta.usage.output_tokens).toBe(4);
    const first = JSON.parse(events.find((e) => e.event === "content_block_delta")!.data);
    expect(first.delta.type).toBe("text_delta");
  });

  test("malformed JSON and a bad content block are 400 invalid_request_error", async () => {
    const a = await post("{oops");
    expect(a.status).toBe(400);
    const ja = (await a.json()) as { type: string; error: { type: string; message: string } };
    expect(ja.type).toBe("error");
    expect(ja.error.type).toBe("invalid_request_error");
    const b = await post({ model: "tiny", max_tokens: 4, messages: [{ role: "user", content: [{ type: "image", source: {} }] }] });
    expect(b.status).toBe(400);
    expect(((await b.json()) as { error: { message: string } }).error.message).toContain("messages.0.content.0.type");
  });

  test("aborting a stream stops the generation", async () => {
    const spy = await spyGenerations(ctx.engine, "tiny");
    try {
      const stream = client.messages.stream({ model: "tiny", max_tokens: 3500, ...greedy, messages: user("hello") });
      let seen = 0;
      stream.on("text", () => {
        if (++seen === 4) stream.abort();
      });
      await stream.done().catch(() => undefined);
      expect(seen).toBeGreaterThanOrEqual(4);
      const result = await spy.results[0];
      expect(result?.finishReason).toBe("abort");
      expect(result!.timings.generatedTokens).toBeLessThan(1000);
    } finally {
      spy.restore();
    }
  });
});
