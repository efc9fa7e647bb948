/**
 * Persistent CPU threadpools (src/engine/threadpool.ts + threadpool.c): a multi-threaded context gets
 * its own pool, freed with the context; output is the same as with node-llama-cpp's threads per
 * decode; two models decoding at once on their own pools neither deadlock nor mix; SHIMMY_THREADPOOL=0
 * leaves node-llama-cpp's default.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { copyFileSync } from "node:fs";
import path from "node:path";
import type { Engine } from "../src/engine/engine.ts";
import { loadedGgml, threadpoolStats } from "../src/engine/threadpool.ts";
import { makeEngine, makeFixtures, runCli } from "./helpers.ts";

let fx: Awaited<ReturnType<typeof makeFixtures>>;
let engine: Engine;
const PROMPT = "The threadpool test prompt";

beforeAll(async () => {
  fx = await makeFixtures();
  copyFileSync(fx.tiny, path.join(fx.dir, "tiny-two.gguf"));
  engine = makeEngine({ dir: fx.dir, threads: 2, parallel: 2 });
});
afterAll(async () => {
  await engine?.close();
  fx?.cleanup();
});

const greedy = (name: string, maxTokens = 24) => engine.complete(name, { prompt: PROMPT, maxTokens, temperature: 0 }).then((r) => r.text);

test("a 2-thread context gets a persistent pool of its own, freed when the model unloads", async () => {
  await engine.load("tiny");
  const stats = threadpoolStats();
  expect(stats.installed).toBe(true);
  expect((await engine.status("tiny")).state).toBe("loaded");
  const before = stats.live;
  const text = await greedy("tiny");
  expect(text.length).toBeGreaterThan(0);
  const during = threadpoolStats();
  // The pool is made on the context's first multi-threaded decode.
  expect(during.live).toBeGreaterThanOrEqual(Math.max(1, before));
  expect(during.refused).toBe(0);
  await engine.unload("tiny");
  expect(threadpoolStats().live).toBe(during.live - 1);
});

test("load/unload cycles do not accumulate pools", async () => {
  const start = threadpoolStats();
  for (let i = 0; i < 4; i++) {
    await engine.load("tiny");
    await greedy("tiny", 4);
    await engine.unload("tiny");
  }
  const end = threadpoolStats();
  expect(end.created - start.created).toBeGreaterThanOrEqual(4);
  expect(end.live).toBe(start.live);
}, 30_000);

test("greedy output with persistent pools equals node-llama-cpp's default (SHIMMY_THREADPOOL=0) and is stable", async () => {
  const ours = await greedy("tiny");
  expect(await greedy("tiny")).toBe(ours);
  const env = { SHIMMY_MODEL_PATHS: fx.dir };
  const args = ["generate", "tiny", "--prompt", PROMPT, "--max-tokens", "24", "--temperature", "0", "--threads", "2", "--model-path", fx.tiny];
  const off = await runCli(args, { env: { ...env, SHIMMY_THREADPOOL: "0", SHIMMY_LOG: "debug" } });
  expect(off.code).toBe(0);
  expect(off.stderr).toContain("threadpool: node-llama-cpp's default");
  expect(off.stdout.trim().length).toBeGreaterThan(0);
  const on = await runCli(args, { env: { ...env, SHIMMY_LOG: "debug" } });
  expect(on.code).toBe(0);
  expect(on.stderr).toContain("threadpool: persistent pools per context");
  expect(on.stdout).toBe(off.stdout);
}, 30_000);

test("two models decoding at the same time, each on its own pool, give the same text as alone", async () => {
  // Two 2-thread models on a 2-core machine oversubscribe it (slow: spin barriers), which is the point.
  const alone = [await greedy("tiny", 24), await greedy("tiny-two", 24)];
  for (let round = 0; round < 2; round++) {
    const together = await Promise.all([greedy("tiny", 24), greedy("tiny-two", 24), greedy("tiny", 24), greedy("tiny-two", 24)]);
    expect(together as string[]).toEqual([...alone, ...alone]);
  }
  expect(threadpoolStats().refused).toBe(0);
}, 90_000);

test("finds node-llama-cpp's ggml libraries among the mapped files, for CPU and GPU builds", () => {
  const line = (f: string) => `7f0000000000-7f0000001000 r-xp 00000000 08:01 123 ${f}`;
  const cpu = "/c/bins/linux-x64";
  const vk = "/c/bins/linux-x64-vulkan";
  const cuda = "/c/bins/linux-x64-cuda";
  const cpuMaps = [line(`${cpu}/libggml.v0.4.0.so`), line(`${cpu}/libggml-base.so`), line(`${cpu}/libggml-cpu-zen4.so`), line("/usr/lib/libc.so.6")].join("\n");
  expect(loadedGgml(false, cpuMaps)).toEqual({ ggml: `${cpu}/libggml.v0.4.0.so`, base: `${cpu}/libggml-base.so` });
  const cudaMaps = [line(`${cuda}/libggml.cuda.v0.4.0.so`), line(`${cuda}/libggml-base.so`), line(`${cuda}/libggml-cuda.so`)].join("\n");
  expect(loadedGgml("cuda", cudaMaps)).toEqual({ ggml: `${cuda}/libggml.cuda.v0.4.0.so`, base: `${cuda}/libggml-base.so` });
  // A Vulkan build that failed to start, then the CPU build: the one in use is picked, with its own base.
  const both = [line(`${vk}/libggml.vulkan.v0.4.0.so`), line(`${vk}/libggml-base.so`), cpuMaps].join("\n");
  expect(loadedGgml(false, both)).toEqual({ ggml: `${cpu}/libggml.v0.4.0.so`, base: `${cpu}/libggml-base.so` });
  expect(loadedGgml("vulkan", both)).toEqual({ ggml: `${vk}/libggml.vulkan.v0.4.0.so`, base: `${vk}/libggml-base.so` });
  expect(loadedGgml(false, line("/usr/lib/libc.so.6"))).toEqual({ ggml: undefined, base: undefined });
});
