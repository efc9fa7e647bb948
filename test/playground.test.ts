/**
 * The browser playground at `/`: served with a CSP that allows no external request, open without an
 * API key while the APIs stay closed, and driven end to end in headless Chromium (Debian's
 * `chromium`, through playwright-core): pick a model, stream an answer with timings, stop a
 * generation and see the engine stop it server-side.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { type Browser, chromium, type Page } from "playwright-core";
import type { Engine } from "../src/engine/engine.ts";
import type { GenerateResult } from "../src/engine/types.ts";
import { createApp } from "../src/server/app.ts";
import { listen, type Listening } from "../src/server/listen.ts";
import { makeEngine, makeFixtures, REPO, spyGenerations } from "./helpers.ts";

/** The page's DOM, as the functions evaluated in the browser use it (no DOM lib in this project's types). */
interface El { textContent: string | null; value: string; options: { length: number }; dataset: Record<string, string | undefined>; querySelector(s: string): El | null }
declare const document: { getElementById(id: string): El | null; querySelector(s: string): El | null };

const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const KEY = "playground-secret";

describe("playground page", () => {
  const app = createApp({ engine: {} as Engine, security: { apiKeys: [KEY] } });

  test("GET / is the page: HTML, a CSP that allows only its own code and this server, no external URL in it", async () => {
    const res = await app.handle(new Request("http://127.0.0.1/"));
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toContain("text/html");
    const csp = res.headers.get("content-security-policy") ?? "";
    expect(csp).toContain("default-src 'none'");
    expect(csp).toContain("connect-src 'self'");
    expect(csp).toMatch(/script-src 'sha256-[A-Za-z0-9+/=]+'/);
    const html = await res.text();
    expect(html).toContain("<title>shimmy playground</title>");
    expect(html).toContain("/v1/chat/completions");
    // Every src/href is inline (data:) or absent; nothing names another host.
    for (const m of html.matchAll(/\b(?:src|href|action)\s*=\s*"([^"]*)"/g)) expect(m[1]).toMatch(/^data:/);
    expect(html).not.toMatch(/https?:\/\//);
  });

  test("the page needs no API key, the APIs behind it still do", async () => {
    expect((await app.handle(new Request("http://127.0.0.1/"))).status).toBe(200);
    expect((await app.handle(new Request("http://127.0.0.1/playground"))).status).toBe(200);
    expect((await app.handle(new Request("http://127.0.0.1/v1/models"))).status).toBe(401);
  });

  test("the page's own calls are same-origin; another origin is still refused", async () => {
    const open = createApp({ engine: { list: async () => [] } as unknown as Engine });
    const own = await open.handle(new Request("http://192.168.1.7:11435/v1/models", { headers: { host: "192.168.1.7:11435", origin: "http://192.168.1.7:11435" } }));
    expect(own.status).toBe(200);
    const other = await open.handle(new Request("http://192.168.1.7:11435/v1/models", { headers: { host: "192.168.1.7:11435", origin: "http://evil.example" } }));
    expect(other.status).toBe(403);
  });

  test("--no-playground (playground: false) turns it off", async () => {
    const off = createApp({ engine: {} as Engine, playground: false });
    expect((await off.handle(new Request("http://127.0.0.1/"))).status).toBe(404);
  });
});

/** The real engine, with each streamed event held back `ms`: paces the tiny model (thousands of tokens/s) so a person, or a test, can press stop mid-answer. */
function paced(engine: Engine, ms: number): Engine {
  return new Proxy(engine, {
    get(target, prop, receiver) {
      if (prop !== "generate") {
        const v = Reflect.get(target, prop, receiver);
        return typeof v === "function" ? v.bind(target) : v;
      }
      return async function* (...args: Parameters<Engine["generate"]>) {
        for await (const ev of target.generate(...args)) {
          await Bun.sleep(ms);
          yield ev;
        }
      };
    },
  });
}

describe("playground in headless Chromium", () => {
  let fx: Awaited<ReturnType<typeof makeFixtures>>;
  let engine: Engine;
  let server: Listening;
  let browser: Browser;
  let page: Page;
  const requests: string[] = [];
  const bodies: unknown[] = [];
  const consoleErrors: string[] = [];
  const shots = mkdtempSync(path.join(os.tmpdir(), "shimmy-shot-"));

  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`Chromium not found at ${CHROMIUM}: install Debian's chromium package (.ci/run does) or set CHROMIUM_PATH`);
    fx = await makeFixtures();
    engine = makeEngine({ dir: fx.dir });
    server = listen(createApp({ engine: paced(engine, 20), security: { apiKeys: [KEY], hostCheck: true } }), "127.0.0.1:0");
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
    page = await browser.newPage({ viewport: { width: 1100, height: 700 } });
    page.on("request", (r) => {
      requests.push(r.url());
      if (r.method() === "POST") bodies.push(JSON.parse(r.postData() ?? "null"));
    });
    page.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
    page.on("pageerror", (e) => consoleErrors.push(String(e)));
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await server?.stop();
    await engine?.close();
    fx?.cleanup();
    rmSync(shots, { recursive: true, force: true });
  });

  const lastAnswer = () => page.locator(".msg.assistant").last();

  test("asks for the API key, then lists the models", async () => {
    await page.goto(server.url + "/");
    await page.waitForFunction(() => /API key/.test(document.getElementById("status")?.textContent ?? ""));
    await page.fill("#apiKey", KEY);
    await page.dispatchEvent("#apiKey", "change");
    await page.waitForFunction(() => document.getElementById("model")!.options.length > 0);
    const models = await page.$$eval("#model option", (os) => os.map((o) => (o as unknown as El).value));
    expect(models).toContain("tiny");
    await page.selectOption("#model", "tiny");
  }, 30_000);

  test("a message streams an answer token by token, then shows tok/s and TTFT from the response timings", async () => {
    await page.fill("#system", "You are terse.");
    await page.fill("#temperature", "0");
    await page.fill("#max_tokens", "24");
    await page.fill("#prompt", "Hello there");
    await page.press("#prompt", "Enter");
    // Sample the answer while it streams: it must grow through several partial states.
    const seen = new Set<string>();
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline) {
      const state = await lastAnswer().evaluate((el) => ({ text: (el as unknown as El).querySelector(".text")?.textContent ?? "", finish: (el as unknown as El).dataset.finish }));
      if (state.finish) break;
      if (state.text) seen.add(state.text);
      await Bun.sleep(15);
    }
    expect(seen.size).toBeGreaterThanOrEqual(3);
    expect(await lastAnswer().getAttribute("data-finish")).toBe("length");
    const meta = (await lastAnswer().locator(".meta").textContent()) ?? "";
    expect(meta).toMatch(/^24 tokens · [\d.]+ tok\/s · TTFT \d+ ms/);
    const sent = bodies.at(-1) as { model: string; stream: boolean; temperature: number; max_tokens: number; messages: Array<{ role: string; content: string }> };
    expect(sent).toMatchObject({ model: "tiny", stream: true, temperature: 0, max_tokens: 24 });
    expect(sent.messages).toEqual([
      { role: "system", content: "You are terse." },
      { role: "user", content: "Hello there" },
    ]);
  }, 40_000);

  test("stop ends the generation on the server, and the conversation goes on", async () => {
    const spy = await spyGenerations(engine, "tiny");
    try {
      await page.fill("#max_tokens", "3000");
      await page.fill("#prompt", "Tell me a long story");
      await page.click("#send");
      await page.waitForFunction(() => (document.querySelector(".msg.assistant:last-child .text")?.textContent ?? "").length > 10, undefined, { timeout: 20_000 });
      expect(await page.isVisible("#stop")).toBe(true);
      await page.click("#stop");
      await page.waitForSelector(".msg.assistant:last-child[data-finish]");
      expect(await lastAnswer().getAttribute("data-finish")).toBe("abort");
      expect(await lastAnswer().locator(".meta").textContent()).toContain("stopped after");
      // The engine's own generation ended as aborted, long before its 3000 tokens.
      expect(spy.results.length).toBe(1);
      const result: GenerateResult = await Promise.race([spy.results[0]!, Bun.sleep(5000).then(() => Promise.reject(new Error("generation still running 5 s after stop")))]);
      expect(result.finishReason).toBe("abort");
      expect(result.timings.generatedTokens).toBeLessThan(3000);
      // The engine's bookkeeping follows when the route closes the stream (a few microtasks or an
      // event-loop turn after the native generation ends); it must get there, not hang.
      for (let i = 0; i < 200 && engine.activeGenerations > 0; i++) await Bun.sleep(10);
      expect(engine.activeGenerations).toBe(0);
      expect(await page.isVisible("#send")).toBe(true);
    } finally {
      spy.restore();
    }
    // The next turn carries the whole conversation, the stopped answer included.
    await page.fill("#max_tokens", "8");
    await page.fill("#prompt", "Thanks");
    await page.press("#prompt", "Enter");
    await page.waitForSelector(".msg.assistant:last-child[data-finish]", { timeout: 20_000 });
    const sent = bodies.at(-1) as { messages: Array<{ role: string }> };
    expect(sent.messages.map((m) => m.role)).toEqual(["system", "user", "assistant", "user", "assistant", "user"]);
    await page.screenshot({ path: path.join(shots, "answer.png") });
  }, 60_000);

  test("errors are shown, not swallowed: a wrong key", async () => {
    await page.fill("#apiKey", "wrong");
    await page.dispatchEvent("#apiKey", "change");
    await page.waitForFunction(() => /API key refused: invalid API key/.test(document.getElementById("status")?.textContent ?? ""));
    await page.fill("#prompt", "hi");
    await page.press("#prompt", "Enter");
    await page.waitForSelector(".msg.assistant:last-child[data-finish=error]");
    expect(await lastAnswer().textContent()).toContain("invalid API key");
    await page.fill("#apiKey", KEY);
  }, 20_000);

  test("the page made no request outside this server and raised no error (CSP included); screenshot", async () => {
    expect(requests.length).toBeGreaterThan(3);
    for (const u of requests) expect(u.startsWith(server.url + "/")).toBe(true);
    expect(consoleErrors.filter((e) => !/401/.test(e))).toEqual([]);
    const png = readFileSync(path.join(shots, "answer.png"));
    expect(png.subarray(1, 4).toString()).toBe("PNG");
    // `SHIMMY_UPDATE_SCREENSHOT=1 bun test test/playground.test.ts` refreshes the README's picture.
    if (process.env.SHIMMY_UPDATE_SCREENSHOT === "1") writeFileSync(path.join(REPO, "docs", "playground.png"), png);
  });
});
