/**
 * Persistent CPU threadpools (src/engine/threadpool.ts + threadpool.c): a multi-threaded context gets
 * its own pool, freed with the context; output is the same as with node-llama-cpp's threads per
 * decode; two models decoding at once on their own pools neither deadlock nor mix; SHIMMY_THREADPOOL=0
 * leaves node-llama-cpp's default; pinned pools keep one thread per CPU (SHIMMY_PIN_THREADS).
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { copyFileSync, readFileSync, writeFileSync } from "node:fs";
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

/** CPUs a Cpus_allowed_list names ("0-1,4" -> [0, 1, 4]). */
function cpus(list: string): number[] {
  return list.split(",").flatMap((r) => {
    const [a, b] = r.split("-").map(Number);
    return b === undefined ? [a!] : Array.from({ length: b - a! + 1 }, (_, k) => a! + k);
  });
}
const allowed = cpus(/Cpus_allowed_list:\s*(\S+)/.exec(readFileSync("/proc/self/status", "utf8"))![1]!);

/** A fresh process (pinning is chosen once per process) generates on 2 threads and reports each thread's CPUs. */
async function pinnedRun(pin: "0" | "1" | "auto") {
  const script = path.join(fx.dir, `pin-${pin}.ts`);
  const root = path.resolve(import.meta.dir, "..");
  writeFileSync(
    script,
    `import os from "node:os";
import { readdirSync, readFileSync } from "node:fs";
import { Engine } from ${JSON.stringify(path.join(root, "src/engine/engine.ts"))};
import { ModelRegistry } from ${JSON.stringify(path.join(root, "src/engine/registry.ts"))};
import { threadpoolStats } from ${JSON.stringify(path.join(root, "src/engine/threadpool.ts"))};
const pin = ${JSON.stringify(pin)};
const engine = new Engine(new ModelRegistry({ baseGguf: ${JSON.stringify(fx.tiny)}, loras: [], modelDirs: [] }, os.tmpdir()), { gpu: "cpu", threads: 2, threadsExplicit: true, ctxSize: 512, chatTemplate: "auto", pinThreads: pin === "auto" ? "auto" : pin === "1" });
const name = (await engine.list())[0].name;
const r = await engine.complete(name, { prompt: ${JSON.stringify(PROMPT)}, maxTokens: 24, temperature: 0 });
const threads = readdirSync("/proc/self/task").map((t) => /Cpus_allowed_list:\\s*(\\S+)/.exec(readFileSync("/proc/self/task/" + t + "/status", "utf8"))[1]);
const main = /Cpus_allowed_list:\\s*(\\S+)/.exec(readFileSync("/proc/self/task/" + process.pid + "/status", "utf8"))[1];
console.log(JSON.stringify({ text: r.text, pinned: threadpoolStats().pinned, threads, main }));
await engine.close();
process.exit(0);
`,
  );
  const proc = Bun.spawn(["bun", script], { stdout: "pipe", stderr: "pipe", env: { ...process.env, SHIMMY_LOG: "warn" } });
  const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  if (code !== 0) throw new Error(`pin=${pin} exited ${code}: ${err}`);
  return JSON.parse(out.trim().split("\n").at(-1)!) as { text: string; pinned: number; threads: string[]; main: string };
}

test.if(allowed.length >= 2)("pinned pools keep ggml's worker on the first allowed CPU and the calling thread on the second; unpinned ones touch no affinity; same text", async () => {
  const on = await pinnedRun("1");
  const off = await pinnedRun("0");
  expect(on.pinned).toBeGreaterThanOrEqual(1);
  const single = on.threads.map(cpus).filter((c) => c.length === 1).map((c) => c[0]);
  expect(single).toContain(allowed[0]); // ggml's worker 1
  expect(single).toContain(allowed[1]); // the thread that ran the decode
  expect(single.every((c) => c === allowed[0] || c === allowed[1])).toBe(true);
  // The JavaScript thread decodes short steps itself (SHIMMY_SYNC_DECODE) and gets its CPUs back after each.
  expect(cpus(on.main)).toEqual(allowed);
  expect(off.pinned).toBe(0);
  expect(off.threads.every((t) => cpus(t).length === allowed.length)).toBe(true);
  expect(on.text).toBe(off.text);
  // auto pins exactly when the 2 threads are as many as the allowed CPUs.
  const auto = await pinnedRun("auto");
  expect(auto.pinned > 0).toBe(allowed.length === 2);
  expect(auto.text).toBe(off.text);
}, 60_000);
