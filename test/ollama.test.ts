/**
 * Needs a model: the Ollama-compatible API on a real loopback server, driven by the official
 * `ollama` client (and raw fetch for wire details). The tiny model's text is gibberish but greedy
 * output is deterministic, so streamed and non-streamed answers can be compared.
 */
import { beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { Ollama } from "ollama";
import { readSse, serveFixtures, spyGenerations } from "./helpers.ts";

setDefaultTimeout(60_000);

const ctx = serveFixtures();
let ollama: Ollama;
beforeAll(() => {
  ollama = new Ollama({ host: ctx.server.url });
});

const post = (path: string, body: unknown, headers: Record<string, string> = {}) =>
  fetch(`${ctx.server.url}${path}`, { method: "POST", headers: { "content-type": "application/json", ...headers }, body: typeof body === "string" ? body : JSON.stringify(body) });

describe("Ollama API (official client)", () => {
  test("version, tags (with sha256 digest) and show", async () => {
    expect((await ollama.version()).version).toMatch(/^\d+\.\d+\.\d+/);
    const tags = await ollama.list();
    const tiny = tags.models.find((m) => m.name === "tiny")!;
    expect(tiny).toBeDefined();
    expect(tiny.digest).toBe(createHash("sha256").update(readFileSync(ctx.fx.tiny)).digest("hex"));
    expect(tiny.size).toBeGreaterThan(0);
    expect(tiny.details.format).toBe("gguf");
    expect(tiny.details.family).toBe("llama");
    const show = await ollama.show({ model: "tiny" });
    expect(show.details.format).toBe("gguf");
    expect((show.model_info as unknown as Record<string, unknown>)["general.architecture"]).toBe("llama");
  });

  test("generate: streamed chunks add up to the non-streamed answer, with Ollama's counters", async () => {
    const full = await ollama.generate({ model: "tiny", prompt: "hello", options: { temperature: 0, num_predict: 8 } });
    expect(full.done).toBe(true);
    expect(full.eval_count).toBe(8);
    expect(full.done_reason).toBe("length");
    expect(full.prompt_eval_count).toBeGreaterThan(0);
    expect(full.total_duration).toBeGreaterThan(0);
    const parts: string[] = [];
    let last: { done: boolean; eval_count?: number } | undefined;
    for await (const part of await ollama.generate({ model: "tiny", prompt: "hello", stream: true, options: { temperature: 0, num_predict: 8 } })) {
      parts.push(part.response ?? "");
      last = part;
    }
    expect(parts.join("")).toBe(full.response ?? "");
    expect(last?.done).toBe(true);
    expect(last?.eval_count).toBe(8);
  });

  test("chat: streamed and non-streamed agree; stop option is honoured", async () => {
    const messages = [{ role: "user", content: "hello" }];
    const full = await ollama.chat({ model: "tiny", messages, options: { temperature: 0, num_predict: 10 } });
    expect(full.message.role).toBe("assistant");
    expect(full.eval_count).toBe(10);
    let text = "";
    for await (const part of await ollama.chat({ model: "tiny", messages, stream: true, options: { temperature: 0, num_predict: 10 } })) text += part.message.content;
    expect(text).toBe(full.message.content);
    expect(full.message.content.length).toBeGreaterThan(2);
    const stopAt = full.message.content.slice(1, 3);
    const stopped = await ollama.chat({ model: "tiny", messages, options: { temperature: 0, num_predict: 10, stop: [stopAt] } });
    expect(stopped.message.content).not.toContain(stopAt);
    expect(full.message.content.startsWith(stopped.message.content)).toBe(true);
  });

  test('format "json" and a JSON schema constrain the answer', async () => {
    const j = await ollama.chat({ model: "tiny", messages: [{ role: "user", content: "give json" }], format: "json", options: { seed: 3, num_predict: 400 } });
    expect(j.done_reason).toBe("stop");
    expect(JSON.parse(j.message.content)).toBeObject();
    const schema = { type: "object", properties: { n: { type: "integer" } }, required: ["n"], additionalProperties: false };
    const s = await ollama.generate({ model: "tiny", prompt: "a number", format: schema, options: { seed: 4, num_predict: 400 } });
    expect(Number.isInteger((JSON.parse(s.response ?? "") as { n: number }).n)).toBe(true);
  });

  test("tools and a tool-call history go through the chat template; keep_alive sets the expiry", async () => {
    const tools = [{ type: "function", function: { name: "get_weather", description: "Weather in a city", parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } } }];
    const plain = await ollama.chat({ model: "tiny", messages: [{ role: "user", content: "Weather in Paris?" }], options: { temperature: 0, num_predict: 2 } });
    const r = await ollama.chat({
      model: "tiny",
      tools,
      keep_alive: "17m",
      messages: [
        { role: "user", content: "Weather in Paris?" },
        { role: "assistant", content: "", tool_calls: [{ function: { name: "get_weather", arguments: { city: "Paris" } } }] },
        { role: "tool", content: "sunny, 21C" },
      ],
      options: { temperature: 0, num_predict: 2 },
    });
    expect(r.done).toBe(true);
    // The tool definitions, the call and its result all reach the prompt.
    expect(r.prompt_eval_count!).toBeGreaterThan(plain.prompt_eval_count! + 20);
    // The expiry is set once the model is idle again (right after the last line is sent).
    const expiry = () => ctx.engine.ps().find((m) => m.name === "tiny")?.expiresAt;
    for (let i = 0; i < 40 && !expiry(); i++) await Bun.sleep(50);
    const expires = Date.parse(expiry()!);
    expect(expires - Date.now()).toBeGreaterThan(16 * 60_000);
    await ollama.chat({ model: "tiny", messages: [{ role: "user", content: "x" }], keep_alive: "5m", options: { num_predict: 1 } });
  });

  test("embed: one vector per input, deterministic", async () => {
    const r = await ollama.embed({ model: "tiny", input: ["hello", "goodbye"] });
    expect(r.embeddings).toHaveLength(2);
    expect(r.embeddings[0]!.length).toBeGreaterThan(0);
    const again = await ollama.embed({ model: "tiny", input: "hello" });
    expect(again.embeddings[0]).toEqual(r.embeddings[0]!);
  });

  test("errors: unknown model is a 404 ResponseError; bad options are 400", async () => {
    const err = await ollama.chat({ model: "nope", messages: [{ role: "user", content: "x" }] }).catch((e) => e);
    expect(err.status_code).toBe(404);
    expect(String(err.error)).toContain("nope");
    const bad = await ollama.generate({ model: "tiny", prompt: "x", options: { temperature: -1 } }).catch((e) => e);
    expect(bad.status_code).toBe(400);
    expect(String(bad.error)).toContain("temperature");
  });
});

describe("POST /api/generate negotiation (raw HTTP)", () => {
  test("curl-style requests keep shimmy's SSE; Accept: application/x-ndjson gets Ollama NDJSON", async () => {
    const sse = await post("/api/generate", { model: "tiny", prompt: "hello", temperature: 0, max_tokens: 4 });
    expect(sse.headers.get("content-type")).toContain("text/event-stream");
    const events = await readSse(sse);
    const shimmyText = events.filter((e) => e.event === "message" && e.data !== "[DONE]").map((e) => e.data).join("");
    const nd = await post("/api/generate", { model: "tiny", prompt: "hello", raw: true, options: { temperature: 0, num_predict: 4 } }, { accept: "application/x-ndjson" });
    expect(nd.headers.get("content-type")).toContain("application/x-ndjson");
    const lines = (await nd.text()).trim().split("\n").map((l) => JSON.parse(l));
    expect(lines.at(-1).done).toBe(true);
    expect(lines.slice(0, -1).every((l) => l.done === false && typeof l.response === "string")).toBe(true);
    // raw: true skips the chat template, as shimmy's bare `prompt` does: same greedy text.
    expect(shimmyText.length).toBeGreaterThan(0);
    expect(lines.map((l) => l.response).join("")).toBe(shimmyText);
  });

  test("malformed JSON and a missing model are clear 400s", async () => {
    const bad = await post("/api/chat", "{nope");
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: string }).error).toContain("malformed JSON");
    const none = await post("/api/chat", { messages: [{ role: "user", content: "x" }] });
    expect(none.status).toBe(400);
    expect(((await none.json()) as { error: string }).error).toContain("model");
  });

  test("aborting the client's stream stops the generation (finish: abort) and frees the model", async () => {
    const spy = await spyGenerations(ctx.engine, "tiny");
    try {
      const stream = await ollama.chat({ model: "tiny", messages: [{ role: "user", content: "hello" }], stream: true, options: { temperature: 0, num_predict: 3500 } });
      let seen = 0;
      try {
        for await (const _ of stream) if (++seen === 4) stream.abort();
      } catch (err) {
        expect((err as Error).name).toBe("AbortError");
      }
      expect(seen).toBeGreaterThanOrEqual(4);
      const result = await spy.results[0];
      expect(result?.finishReason).toBe("abort");
      expect(result!.timings.generatedTokens).toBeLessThan(1000);
    } finally {
      spy.restore();
    }
    const after = await ollama.chat({ model: "tiny", messages: [{ role: "user", content: "hi" }], options: { temperature: 0, num_predict: 3 } });
    expect(after.eval_count).toBe(3);
  });
});
