/** Needs a model: API keys, browser safety (CORS, Host check), body limits, request ids and logs over a real socket. */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import OpenAI from "openai";
import { Engine } from "../src/engine/engine.ts";
import { keyMatches } from "../src/server/security.ts";
import { createApp, type AppDeps } from "../src/server/app.ts";
import { listen, type Listening } from "../src/server/listen.ts";
import { makeEngine, makeFixtures, runCli } from "./helpers.ts";

// Loads a model on 2 shared cores: allow 60 s per test (bun's default is 5 s).
setDefaultTimeout(60_000);

let fx: Awaited<ReturnType<typeof makeFixtures>>;
let engine: Engine;
beforeAll(async () => {
  fx = await makeFixtures();
  engine = makeEngine({ dir: fx.dir });
});
afterAll(async () => {
  await engine?.close();
  fx?.cleanup();
});

function serve(security: AppDeps["security"], requestLog?: AppDeps["requestLog"]): Listening {
  return listen(createApp({ engine, security, ...(requestLog ? { requestLog } : {}) }), "127.0.0.1:0", { maxBodyBytes: security?.maxBodyBytes });
}

describe("API keys", () => {
  test("keys are compared in constant time over digests", () => {
    expect(keyMatches("a", ["a", "b"])).toBe(true);
    expect(keyMatches("c", ["a", "b"])).toBe(false);
    expect(keyMatches("", ["a"])).toBe(false);
  });

  test("Bearer and x-api-key are accepted; missing or wrong keys get 401 in each API's shape; /health stays open", async () => {
    const s = serve({ apiKeys: ["k1", "k2"] });
    try {
      const gen = (headers: Record<string, string>) => fetch(`${s.url}/api/generate`, { method: "POST", headers, body: JSON.stringify({ model: "tiny", prompt: "hi", max_tokens: 2, stream: false }) });
      expect((await gen({ authorization: "Bearer k1" })).status).toBe(200);
      expect((await gen({ "x-api-key": "k2" })).status).toBe(200);
      const missing = await gen({});
      expect(missing.status).toBe(401);
      expect(((await missing.json()) as any).error).toContain("missing API key");
      const wrong = await gen({ authorization: "Bearer nope" });
      expect(wrong.status).toBe(401);
      expect(await wrong.json()).toEqual({ error: "invalid API key" });
      expect((await fetch(`${s.url}/health`)).status).toBe(200);
      expect((await fetch(`${s.url}/metrics`)).status).toBe(401);
      // The official client sends the key as Bearer; a wrong one surfaces as AuthenticationError.
      const ok = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: "k1" });
      expect((await ok.models.list()).data.map((m) => m.id)).toContain("tiny");
      const bad = await new OpenAI({ baseURL: `${s.url}/v1`, apiKey: "zzz", maxRetries: 0 }).models.list().catch((e) => e);
      expect(bad).toBeInstanceOf(OpenAI.AuthenticationError);
      expect(bad.status).toBe(401);
      expect(bad.error).toMatchObject({ type: "invalid_request_error", code: "invalid_api_key" });
    } finally {
      await s.stop();
    }
  });

  test("WebSocket upgrades need the key too (headers, or ?api_key= from browsers)", async () => {
    const s = serve({ apiKeys: ["k1"] });
    try {
      const wsUrl = `${s.url.replace("http", "ws")}/ws/generate`;
      const refused = await new Promise<string>((resolve) => {
        const ws = new WebSocket(wsUrl);
        ws.onopen = () => resolve("open");
        ws.onerror = () => resolve("error");
      });
      expect(refused).toBe("error");
      const frames = await new Promise<string[]>((resolve, reject) => {
        const ws = new WebSocket(`${wsUrl}?api_key=k1`);
        const got: string[] = [];
        ws.onopen = () => ws.send(JSON.stringify({ model: "tiny", prompt: "hi", max_tokens: 2 }));
        ws.onmessage = (e) => {
          got.push(String(e.data));
          if (String(e.data).startsWith('{"done"')) {
            ws.close();
            resolve(got);
          }
        };
        ws.onerror = () => reject(new Error("ws error"));
      });
      expect(frames).toHaveLength(3);
      // Headers work for clients that can set them.
      const withHeader = await new Promise<string>((resolve) => {
        const ws = new WebSocket(wsUrl, { headers: { authorization: "Bearer k1" } } as any);
        ws.onopen = () => (ws.close(), resolve("open"));
        ws.onerror = () => resolve("error");
      });
      expect(withHeader).toBe("open");
    } finally {
      await s.stop();
    }
  });
});

describe("browser safety", () => {
  test("foreign origins are refused; localhost origins get CORS headers; preflight answered", async () => {
    const s = serve({});
    try {
      const evil = await fetch(`${s.url}/api/models`, { headers: { origin: "https://evil.example" } });
      expect(evil.status).toBe(403);
      expect(((await evil.json()) as any).error).toContain("cross-origin request from https://evil.example refused");
      const evilOa = await fetch(`${s.url}/v1/models`, { headers: { origin: "https://evil.example" } });
      expect(evilOa.status).toBe(403);
      expect(((await evilOa.json()) as any).error).toMatchObject({ type: "invalid_request_error", code: "forbidden" });
      const local = await fetch(`${s.url}/api/models`, { headers: { origin: "http://localhost:5173" } });
      expect(local.status).toBe(200);
      expect(local.headers.get("access-control-allow-origin")).toBe("http://localhost:5173");
      const pre = await fetch(`${s.url}/v1/chat/completions`, { method: "OPTIONS", headers: { origin: "http://127.0.0.1:3000", "access-control-request-method": "POST", "access-control-request-headers": "content-type, authorization" } });
      expect(pre.status).toBe(204);
      expect(pre.headers.get("access-control-allow-origin")).toBe("http://127.0.0.1:3000");
      expect(pre.headers.get("access-control-allow-headers")).toBe("content-type, authorization");
      expect(pre.headers.get("access-control-allow-methods")).toContain("POST");
      const badPre = await fetch(`${s.url}/v1/chat/completions`, { method: "OPTIONS", headers: { origin: "https://evil.example", "access-control-request-method": "POST" } });
      expect(badPre.status).toBe(403);
      // No Origin (curl, SDKs): allowed.
      expect((await fetch(`${s.url}/api/models`)).status).toBe(200);
    } finally {
      await s.stop();
    }
    const open = serve({ corsOrigins: ["https://app.example"] });
    try {
      expect((await fetch(`${open.url}/api/models`, { headers: { origin: "https://app.example" } })).status).toBe(200);
      expect((await fetch(`${open.url}/api/models`, { headers: { origin: "http://localhost:1" } })).status).toBe(403);
    } finally {
      await open.stop();
    }
    const any = serve({ corsOrigins: ["*"] });
    try {
      const r = await fetch(`${any.url}/api/models`, { headers: { origin: "https://anything.example" } });
      expect(r.status).toBe(200);
      expect(r.headers.get("access-control-allow-origin")).toBe("*");
    } finally {
      await any.stop();
    }
  });

  test("bound to loopback, a Host that is not a loopback name is refused (DNS rebinding); --allow-hosts adds names", async () => {
    const s = serve({ hostCheck: true, allowHosts: ["shimmy.lan"] });
    try {
      const port = new URL(s.url).port;
      const raw = async (host: string) => {
        const sock = await Bun.connect({ hostname: "127.0.0.1", port: Number(port), socket: { data(_s, d) { chunks.push(Buffer.from(d).toString()); } } });
        const chunks: string[] = [];
        sock.write(`GET /api/models HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
        await Bun.sleep(150);
        sock.end();
        return chunks.join("");
      };
      expect(await raw("evil.example")).toStartWith("HTTP/1.1 403");
      expect(await raw(`evil.example:${port}`)).toContain("is not allowed");
      expect(await raw(`localhost:${port}`)).toStartWith("HTTP/1.1 200");
      expect(await raw(`127.0.0.1:${port}`)).toStartWith("HTTP/1.1 200");
      expect(await raw(`[::1]:${port}`)).toStartWith("HTTP/1.1 200");
      expect(await raw("shimmy.lan")).toStartWith("HTTP/1.1 200");
    } finally {
      await s.stop();
    }
  });
});

describe("limits and logs", () => {
  test("a body over the limit is 413 in each API's shape", async () => {
    const s = serve({ maxBodyBytes: 2048 });
    try {
      const body = JSON.stringify({ model: "tiny", prompt: "x".repeat(5000) });
      const n = await fetch(`${s.url}/api/generate`, { method: "POST", body });
      expect(n.status).toBe(413);
      expect(((await n.json()) as any).error).toContain("over the limit of 2048 bytes");
      const o = await fetch(`${s.url}/v1/completions`, { method: "POST", body });
      expect(o.status).toBe(413);
      expect(((await o.json()) as any).error.code).toBe("request_too_large");
      expect((await fetch(`${s.url}/api/generate`, { method: "POST", body: JSON.stringify({ model: "tiny", prompt: "ok", max_tokens: 1, stream: false }) })).status).toBe(200);
    } finally {
      await s.stop();
    }
  });

  test("request ids are echoed (or made); one log line per request, JSON, prompts only when asked", async () => {
    const lines: string[] = [];
    const write = process.stderr.write.bind(process.stderr);
    process.stderr.write = ((chunk: string | Uint8Array) => (lines.push(String(chunk)), true)) as typeof process.stderr.write;
    const quiet = serve({}, { format: "json", prompts: false });
    const loud = serve({}, { format: "json", prompts: true });
    try {
      const r = await fetch(`${quiet.url}/api/generate`, { method: "POST", headers: { "x-request-id": "abc-123" }, body: JSON.stringify({ model: "tiny", prompt: "secret words", max_tokens: 2, stream: false }) });
      expect(r.headers.get("x-request-id")).toBe("abc-123");
      await r.text();
      const made = await fetch(`${quiet.url}/health`, { headers: { "x-request-id": "bad id with spaces" } });
      expect(made.headers.get("x-request-id")).toMatch(/^[0-9a-f-]{36}$/);
      await fetch(`${loud.url}/api/generate`, { method: "POST", body: JSON.stringify({ model: "tiny", prompt: "visible words", max_tokens: 2, stream: false }) }).then((x) => x.text());
      // A stream's line is written when the generation ends, with its tokens.
      await fetch(`${quiet.url}/v1/chat/completions`, { method: "POST", headers: { "x-request-id": "stream-1" }, body: JSON.stringify({ model: "tiny", messages: [{ role: "user", content: "x" }], max_tokens: 3, stream: true }) }).then((x) => x.text());
      await Bun.sleep(50);
    } finally {
      process.stderr.write = write;
      await quiet.stop();
      await loud.stop();
    }
    const records = lines.filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
    const gen = records.find((x) => x.id === "abc-123");
    expect(gen).toMatchObject({ method: "POST", path: "/api/generate", status: 200, model: "tiny", prompt_n: expect.any(Number), predicted_n: 2, finish: "length" });
    expect(records.filter((x) => x.id === "stream-1")).toEqual([expect.objectContaining({ path: "/v1/chat/completions", status: 200, predicted_n: 3, finish: "length" })]);
    expect(JSON.stringify(records)).not.toContain("secret words");
    expect(records.some((x) => x.prompt === "visible words")).toBe(true);
  });

  test("serve on a non-loopback address without a key warns", async () => {
    const proc = Bun.spawn(["bun", "src/main.ts", "serve", "--bind", "0.0.0.0:0", "--model-dirs", fx.dir], { env: { ...process.env, SHIMMY_THREADS: "1", SHIMMY_DEMO_MODEL: "0", SHIMMY_API_KEY: "" }, stdout: "pipe", stderr: "pipe" });
    const reader = proc.stdout.getReader();
    while (!new TextDecoder().decode((await reader.read()).value).includes("listening")) {}
    proc.kill("SIGTERM");
    const stderr = await new Response(proc.stderr).text();
    expect(stderr).toContain("not loopback) with no API key");
    expect(await proc.exited).toBe(0);
    const withKey = await runCli(["serve", "--bind", "0.0.0.0:99999"], { env: { SHIMMY_API_KEY: "k" } });
    expect(withKey.code).toBe(1);
  });
});
