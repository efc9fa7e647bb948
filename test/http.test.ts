/** Needs a model: the real server on a loopback port, real engine, SSE and WebSocket clients. */
import { afterAll, beforeAll, describe, expect, test, setDefaultTimeout } from "bun:test";
import type { Engine } from "../src/engine/engine.ts";
import type { Listening } from "../src/server/listen.ts";
import { makeEngine, makeFixtures, parseSse, spyGenerations, startServer } from "./helpers.ts";

// Loads models or spawns the CLI on 2 shared cores: allow 60 s per test (bun's default is 5 s).
setDefaultTimeout(60_000);

let fx: Awaited<ReturnType<typeof makeFixtures>>;
let engine: Engine;
let server: Listening;

beforeAll(async () => {
  fx = await makeFixtures();
  engine = makeEngine({ dir: fx.dir });
  server = startServer(engine);
});
afterAll(async () => {
  await server?.stop();
  await engine?.close();
  fx?.cleanup();
});


const gen = (body: unknown, init: RequestInit = {}) =>
  fetch(`${server.url}/api/generate`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body), ...init });

function wsOpen(): Promise<WebSocket> {
  const ws = new WebSocket(`${server.url.replace("http", "ws")}/ws/generate`);
  return new Promise((resolve, reject) => {
    ws.onopen = () => resolve(ws);
    ws.onerror = (e) => reject(e);
  });
}

/** Collects frames until `{"done":true}` or an error frame. Calls `onFrame` for each. */
function wsRun(ws: WebSocket, request: unknown, onFrame?: (data: string, n: number) => void): Promise<{ tokens: string[]; final: any }> {
  return new Promise((resolve) => {
    const tokens: string[] = [];
    ws.onmessage = (e) => {
      const data = String(e.data);
      onFrame?.(data, tokens.length);
      if (data.startsWith("{")) {
        try {
          const j = JSON.parse(data);
          if (j.done === true || typeof j.error === "string") return resolve({ tokens, final: j });
        } catch {}
      }
      tokens.push(data);
    };
    ws.send(typeof request === "string" ? request : JSON.stringify(request));
  });
}

describe("native API over a real socket", () => {
  test("SSE: tokens arrive in several chunks, then [DONE]; text matches the non-stream answer", async () => {
    const req = { model: "tiny", prompt: "hello world", temperature: 0, max_tokens: 300 };
    const res = await gen(req);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toStartWith("text/event-stream");
    const reader = res.body!.getReader();
    const decoder = new TextDecoder();
    let chunks = 0;
    let raw = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      chunks++;
      raw += decoder.decode(value, { stream: true });
    }
    const events = parseSse(raw);
    expect(events.at(-1)!.data).toBe("[DONE]");
    expect(events.length).toBe(302);
    const done = events.at(-2)!;
    expect(done.event).toBe("done");
    expect(JSON.parse(done.data)).toMatchObject({ finish_reason: "length", timings: { predicted_n: 300 } });
    // Streamed, not buffered to the end. The tiny model decodes 300 tokens in 50-100 ms and the server
    // writes what it has decoded at least every 30 ms (SHIMMY_STREAM_INTERVAL_MS), so the client's
    // reads merge many events, but never all of them.
    expect(chunks).toBeGreaterThan(1);
    const json = await (await gen({ ...req, stream: false })).json() as any;
    expect(events.slice(0, -2).map((e) => e.data).join("")).toBe(json.response);
    expect(json.finish_reason).toBe("length");
    expect(json.timings.predicted_n).toBe(300);
  });

  test("messages go through the chat template and take precedence over prompt", async () => {
    const base = { model: "tiny", temperature: 0, max_tokens: 12, stream: false };
    const chat = await (await gen({ ...base, messages: [{ role: "user", content: "hello" }], prompt: "ignored" })).json() as any;
    const chat2 = await (await gen({ ...base, messages: [{ role: "user", content: "hello" }] })).json() as any;
    const raw = await (await gen({ ...base, prompt: "hello" })).json() as any;
    expect(chat.response).toBe(chat2.response);
    expect(chat.timings.prompt_n).toBeGreaterThan(raw.timings.prompt_n);
  });

  test("closing the connection mid-stream aborts the generation in the engine", async () => {
    const spy = await spyGenerations(engine, "tiny");
    try {
      const controller = new AbortController();
      const res = await gen({ model: "tiny", prompt: "hi", temperature: 0, max_tokens: 3500 }, { signal: controller.signal });
      const reader = res.body!.getReader();
      await reader.read();
      await reader.read();
      controller.abort();
      const result = await spy.results[0]!;
      expect(result.finishReason).toBe("abort");
      expect(result.timings.generatedTokens).toBeLessThan(1000);
    } finally {
      spy.restore();
    }
    // The slot is free again at once.
    const after = await (await gen({ model: "tiny", prompt: "hi", max_tokens: 3, stream: false })).json() as any;
    expect(after.timings.predicted_n).toBe(3);
  });

  test("WebSocket: token frames then {done:true}; the socket takes the next request", async () => {
    const ws = await wsOpen();
    try {
      const a = await wsRun(ws, { model: "tiny", prompt: "hello world", temperature: 0, max_tokens: 20 });
      expect(a.tokens.length).toBe(20);
      expect(a.final).toMatchObject({ done: true, finish_reason: "length" });
      expect(a.final.timings.predicted_n).toBe(20);
      const json = await (await gen({ model: "tiny", prompt: "hello world", temperature: 0, max_tokens: 20, stream: false })).json() as any;
      expect(a.tokens.join("")).toBe(json.response);
      const b = await wsRun(ws, { model: "tiny", prompt: "again", max_tokens: 4 });
      expect(b.final.done).toBe(true);
      expect(b.tokens.length).toBe(4);
    } finally {
      ws.close();
    }
  });

  test('WebSocket: {"stop":true} mid-stream ends the generation early', async () => {
    const ws = await wsOpen();
    try {
      const r = await wsRun(ws, { model: "tiny", prompt: "hi", temperature: 0, max_tokens: 3500 }, (_d, n) => {
        if (n === 5) ws.send(JSON.stringify({ stop: true }));
      });
      expect(r.final).toMatchObject({ done: true, finish_reason: "abort" });
      // The stop is read at the next event-loop turn, at most SHIMMY_STREAM_INTERVAL_MS (30 ms)
      // later; the tiny model decodes several tokens per millisecond.
      expect(r.tokens.length).toBeLessThan(1000);
      const next = await wsRun(ws, { model: "tiny", prompt: "hi", max_tokens: 2 });
      expect(next.final.finish_reason).toBe("length");
    } finally {
      ws.close();
    }
  });

  test("WebSocket: closing the socket aborts the generation", async () => {
    const spy = await spyGenerations(engine, "tiny");
    try {
      const ws = await wsOpen();
      const closed = new Promise((r) => ws.addEventListener("close", r));
      void wsRun(ws, { model: "tiny", prompt: "hi", max_tokens: 3500 }, (_d, n) => {
        if (n === 3) ws.close();
      });
      await closed;
      while (spy.results.length === 0) await Bun.sleep(5);
      const result = await Promise.race([spy.results[0]!, Bun.sleep(10000).then(() => undefined)]);
      expect(result?.finishReason).toBe("abort");
    } finally {
      spy.restore();
    }
  });

  test("WebSocket: bad frames get error frames and the socket stays usable", async () => {
    const ws = await wsOpen();
    try {
      expect((await wsRun(ws, "not json")).final.error).toMatch(/not valid JSON/);
      expect((await wsRun(ws, { prompt: "x" })).final.error).toMatch(/'model'/);
      expect((await wsRun(ws, { model: "tiny", prompt: "x", temperature: "hot" })).final.error).toMatch(/'temperature'/);
      expect((await wsRun(ws, { model: "tiny" })).final.error).toMatch(/either 'prompt'/);
      expect((await wsRun(ws, { model: "nope", prompt: "x" })).final.error).toMatch(/not found; available: .*tiny/);
      expect((await wsRun(ws, { model: "tiny", prompt: "hello ".repeat(5000) })).final.error).toMatch(/does not fit the context/);
      expect((await wsRun(ws, { model: "tiny", prompt: "ok", max_tokens: 2 })).final.done).toBe(true);
    } finally {
      ws.close();
    }
  });

  test("bad input over HTTP: status and {error} body", async () => {
    const cases: Array<[RequestInit, number, RegExp]> = [
      [{ body: '{"model":' }, 400, /malformed JSON/],
      [{ body: JSON.stringify({ model: "tiny", prompt: 5 }) }, 400, /'prompt'/],
      [{ body: JSON.stringify({ model: "nope", prompt: "x" }) }, 404, /available: .*tiny/],
      [{ body: JSON.stringify({ model: "tiny", prompt: "hello ".repeat(5000) }) }, 400, /does not fit the context/],
    ];
    for (const [init, status, msg] of cases) {
      const res = await fetch(`${server.url}/api/generate`, { method: "POST", ...init });
      expect(res.status).toBe(status);
      expect((await res.json() as any).error).toMatch(msg);
    }
    const health = await (await fetch(`${server.url}/health`)).json() as any;
    expect(health.status).toBe("ready");
    expect(health.loaded).toContain("tiny");
    const diag = await (await fetch(`${server.url}/diag`)).json() as any;
    expect(diag.backend).toBe("cpu");
  });
});
