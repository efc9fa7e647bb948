/** Shared test fixtures: generated models in a temp dir, a real engine, a real listening server. */
import { afterAll, beforeAll } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { Engine } from "../src/engine/engine.ts";
import type { GenerateResult } from "../src/engine/types.ts";
import { ModelRegistry } from "../src/engine/registry.ts";
import { writeTinyLora, writeTinyModel } from "../src/gguf/presets.ts";
import { createApp } from "../src/server/app.ts";
import { listen, type Listening } from "../src/server/listen.ts";

export const REPO = path.resolve(import.meta.dir, "..");
export const MAIN = path.join(REPO, "src/main.ts");

/**
 * A fresh temp dir holding `tiny.gguf` (ctx 4096, so long generations are possible), and
 * `adapters/tiny-lora.gguf` (in a subfolder: an adapter beside a model would be paired with it).
 */
export async function makeFixtures(): Promise<{ dir: string; tiny: string; lora: string; cleanup(): void }> {
  const dir = mkdtempSync(path.join(os.tmpdir(), "shimmy-test-"));
  const tiny = path.join(dir, "tiny.gguf");
  mkdirSync(path.join(dir, "adapters"));
  const lora = path.join(dir, "adapters", "tiny-lora.gguf");
  await writeTinyModel(tiny, { seed: 1, contextLength: 4096 });
  await writeTinyLora(lora, { seed: 1 });
  return { dir, tiny, lora, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** A real engine on CPU with 1 thread (fastest for the tiny model on 2 cores). */
export function makeEngine(opts: { dir?: string; base?: string; lora?: string; ctxSize?: number; threads?: number; parallel?: number } = {}): Engine {
  const registry = new ModelRegistry({ baseGguf: opts.base, loras: opts.lora ? [{ path: opts.lora, scale: 1 }] : [], modelDirs: opts.dir ? [opts.dir] : [] }, opts.dir ?? os.tmpdir());
  return new Engine(registry, { gpu: "cpu", threads: opts.threads ?? 1, threadsExplicit: true, ctxSize: opts.ctxSize ?? 4096, chatTemplate: "auto", ...(opts.parallel ? { parallel: opts.parallel } : {}) });
}

/** Starts the real app on an ephemeral loopback port. */
export function startServer(engine: Engine): Listening {
  return listen(createApp({ engine }), "127.0.0.1:0");
}

/** Fixtures and a real engine over them, made in `beforeAll` and closed in `afterAll`. Read the fields inside tests. */
export function engineFixtures(): { fx: Awaited<ReturnType<typeof makeFixtures>>; engine: Engine } {
  const ctx = {} as { fx: Awaited<ReturnType<typeof makeFixtures>>; engine: Engine };
  beforeAll(async () => {
    ctx.fx = await makeFixtures();
    ctx.engine = makeEngine({ dir: ctx.fx.dir });
  });
  afterAll(async () => {
    await ctx.engine?.close();
    ctx.fx?.cleanup();
  });
  return ctx;
}

/**
 * The usual setup of a test file that needs a model: fixtures, a real engine and a real server,
 * made in `beforeAll` and torn down in `afterAll`. Read the fields inside tests (or later hooks).
 */
export function serveFixtures(): { fx: Awaited<ReturnType<typeof makeFixtures>>; engine: Engine; server: Listening } {
  const ctx = {} as { fx: Awaited<ReturnType<typeof makeFixtures>>; engine: Engine; server: Listening };
  beforeAll(async () => {
    ctx.fx = await makeFixtures();
    ctx.engine = makeEngine({ dir: ctx.fx.dir });
    ctx.server = startServer(ctx.engine);
  });
  afterAll(async () => {
    await ctx.server?.stop();
    await ctx.engine?.close();
    ctx.fx?.cleanup();
  });
  return ctx;
}

/** Runs the real CLI; returns exit code, stdout and stderr. */
export async function runCli(args: string[], opts: { stdin?: string; env?: Record<string, string>; cwd?: string } = {}) {
  const proc = Bun.spawn(["bun", MAIN, ...args], {
    cwd: opts.cwd ?? REPO,
    env: { ...process.env, SHIMMY_THREADS: "1", SHIMMY_GPU: "cpu", SHIMMY_DEMO_MODEL: "0", ...opts.env },
    stdin: opts.stdin === undefined ? "ignore" : new TextEncoder().encode(opts.stdin),
    stdout: "pipe",
    stderr: "pipe",
  });
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  return { code, stdout, stderr };
}

/** Reads an SSE response into events ({event, data}), data lines joined with "\n" as the spec says. */
export async function readSse(res: Response): Promise<Array<{ event: string; data: string }>> {
  const text = await res.text();
  return parseSse(text);
}

export function parseSse(text: string): Array<{ event: string; data: string }> {
  const events: Array<{ event: string; data: string }> = [];
  for (const block of text.split("\n\n")) {
    if (!block) continue;
    let event = "message";
    const data: string[] = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    events.push({ event, data: data.join("\n") });
  }
  return events;
}

/** Records the result of every native generation of a model, to prove when the engine really stopped (and a slot was freed). */
export async function spyGenerations(engine: Engine, name: string): Promise<{ results: Promise<GenerateResult>[]; restore(): void }> {
  const loaded = await engine.load(name);
  const original = loaded.native.generate;
  const results: Promise<GenerateResult>[] = [];
  loaded.native.generate = function (this: unknown, ...args: Parameters<typeof original>) {
    const p = original.apply(loaded.native, args);
    results.push(p);
    return p;
  };
  return { results, restore: () => void (loaded.native.generate = original) };
}
