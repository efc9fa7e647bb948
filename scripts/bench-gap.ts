/**
 * The time between one token's decode and the next (not a test): what shimmy does on the JavaScript
 * thread per token, serially, while llama.cpp's threads wait (sampling, detokenizing, the stop matcher,
 * handing the text to its consumer and, through the server, writing it to the socket).
 *
 * On a machine with as many llama.cpp threads as cores, this time adds to every token: it is the
 * part of shimmy's per-token cost that its own code decides. The script loads MODEL once, starts the
 * real server in this process on a loopback port, and alternates rounds of generations through the
 * server (SSE read by `curl`, a process of its own, so no client JavaScript runs here) and through the
 * engine alone. It wraps the synchronous decode call (greedy.ts's GreedyContext.decode, the decode
 * loop's path for one-token steps) with a clock and prints, per round and path, the median and 90th
 * percentile of the time from the end of one decode call to the start of the next, its mean (the
 * event loop runs only every SHIMMY_STREAM_INTERVAL_MS, so most gaps are short and some long), and
 * the median and mean decode call.
 *
 *   bun scripts/bench-gap.ts [--model FILE] [--threads 2] [--tokens 64] [--rounds 4] [--runs 3] [--stream-interval MS] [--llama-server PATH]
 *
 * --stream-interval sets the engine's SHIMMY_STREAM_INTERVAL_MS (default 30; 0: the event loop runs
 * before every decode).
 *
 * With --llama-server (the binary `bun run bench:compare` builds), each round also runs that server
 * on the same model and threads, read by the same `curl`, with scripts/decode-gap-shim.c preloaded
 * (compiled here with gcc): it wraps llama.cpp's llama_decode and records the same two times, so
 * llama-server's serial work per token is measured the same way.
 *
 * Needs greedy.ts installed (Linux, SHIMMY_SYNC_GREEDY not 0) and `curl` on the PATH.
 */
import { existsSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { Engine } from "../src/engine/engine.ts";
import { GreedyContext } from "../src/engine/greedy.ts";
import { ModelRegistry } from "../src/engine/registry.ts";
import { writeBenchModel } from "../src/gguf/presets.ts";
import { createApp } from "../src/server/app.ts";
import { listen } from "../src/server/listen.ts";
import { benchPrompt, freePort, waitForServer } from "./bench-prompt.ts";

const { values } = parseArgs({ options: { model: { type: "string" }, threads: { type: "string" }, tokens: { type: "string" }, rounds: { type: "string" }, runs: { type: "string" }, "stream-interval": { type: "string" }, "llama-server": { type: "string" } } });
const model = values.model ?? path.join(os.tmpdir(), "shimmy-fixtures", "bench-tinyllama-q8.gguf");
const threads = Number(values.threads ?? 2);
const tokens = Number(values.tokens ?? 64);
const rounds = Number(values.rounds ?? 4);
const runs = Number(values.runs ?? 3);
if (!existsSync(model)) {
  mkdirSync(path.dirname(model), { recursive: true });
  console.error(`writing the bench model to ${model} ...`);
  await writeBenchModel(model);
}

// Decode calls more than this apart belong to different generations (the next prompt is between them).
const SAME_GENERATION_MS = 50;
let lastEnd = 0;
let gaps: number[] = [];
let calls: number[] = [];
const decode = GreedyContext.prototype.decode;
GreedyContext.prototype.decode = function (this: GreedyContext, ...args: Parameters<typeof decode>) {
  const t0 = performance.now();
  if (lastEnd && t0 - lastEnd < SAME_GENERATION_MS) gaps.push(t0 - lastEnd);
  const r = decode.apply(this, args);
  lastEnd = performance.now();
  calls.push(lastEnd - t0);
  return r;
};

const name = path.basename(model, ".gguf").toLowerCase();
const engine = new Engine(new ModelRegistry({ modelPath: model, modelDirs: [] }), { gpu: "cpu", threads, threadsExplicit: true, ctxSize: 2048, chatTemplate: "auto", parallel: 1, keepAliveMs: -1, streamIntervalMs: values["stream-interval"] === undefined ? undefined : Number(values["stream-interval"]) });
const server = listen(createApp({ engine }), "127.0.0.1:0");
await engine.load(name);

const quantile = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.floor(p * (xs.length - 1))] ?? NaN;
const viaServer = async (i: number) => {
  const body = JSON.stringify({ model: name, prompt: benchPrompt(i), max_tokens: tokens, temperature: 0 });
  const curl = Bun.spawn(["curl", "-sSN", "-o", "/dev/null", "-H", "accept: text/event-stream", "-d", body, `${server.url}/api/generate`], { stderr: "inherit" });
  if ((await curl.exited) !== 0) throw new Error("curl failed");
};
const viaEngine = async (i: number) => {
  for await (const _ of engine.generate(name, { prompt: benchPrompt(i), maxTokens: tokens, temperature: 0 })) {
    // consume
  }
};

const llamaServer = values["llama-server"];
let shim: string | undefined;
if (llamaServer) {
  // The llama.cpp source tree the binary was built from: <src>/build*/bin/llama-server.
  const src = path.resolve(path.dirname(llamaServer), "..", "..");
  shim = path.join(os.tmpdir(), `shimmy-gap-shim-${process.pid}.so`);
  const cc = Bun.spawnSync(["gcc", "-O2", "-shared", "-fPIC", "-o", shim, path.join(import.meta.dir, "decode-gap-shim.c"), `-I${src}/include`, `-I${src}/ggml/include`, "-ldl"], { stderr: "inherit" });
  if (cc.exitCode !== 0) throw new Error("could not compile scripts/decode-gap-shim.c");
}
/** One round of llama-server: a fresh process (the shim writes its times when it exits). */
const llamaRound = async (first: number) => {
  const port = freePort();
  const out = path.join(os.tmpdir(), `shimmy-gap-${process.pid}.json`);
  const proc = Bun.spawn([llamaServer!, "-m", model, "-t", String(threads), "-tb", String(threads), "-c", "2048", "-np", "1", "--port", String(port), "--host", "127.0.0.1", "-ngl", "0", "--no-warmup"], { env: { ...process.env, LD_PRELOAD: shim!, GAP_OUT: out }, stdout: "ignore", stderr: "ignore" });
  await waitForServer(`http://127.0.0.1:${port}/health`, proc, 60_000);
  for (let i = 0; i < runs; i++) {
    const body = JSON.stringify({ prompt: benchPrompt(first + i), n_predict: tokens, temperature: 0, stream: true, cache_prompt: false });
    const curl = Bun.spawn(["curl", "-sSN", "-o", "/dev/null", "-d", body, `http://127.0.0.1:${port}/completion`], { stderr: "inherit" });
    if ((await curl.exited) !== 0) throw new Error("curl failed");
  }
  proc.kill("SIGINT");
  await proc.exited;
  if (!existsSync(out)) throw new Error(`llama-server exited (${proc.exitCode ?? proc.signalCode}) without writing its decode times`);
  const times = JSON.parse(readFileSync(out, "utf8")) as { gaps: number[]; calls: number[] };
  rmSync(out, { force: true });
  gaps = times.gaps;
  calls = times.calls;
};

/** A round through shimmy: `runs` generations, timed by the wrapper around GreedyContext.decode. */
const shimmyRound = (run: (i: number) => Promise<void>) => async (first: number) => {
  for (let i = 0; i < runs; i++) await run(first + i);
};
const paths: Array<[string, (first: number) => Promise<void>]> = [["server SSE", shimmyRound(viaServer)], ["engine", shimmyRound(viaEngine)]];
if (llamaServer) paths.push(["llama-server", llamaRound]);

console.log(`model ${path.basename(model)}, threads ${threads}, ${tokens} tokens, ${runs} generations per round, stream interval ${values["stream-interval"] ?? "default"}`);
console.log("| round | path | between decodes p50 ms | p90 ms | mean ms | decode call p50 ms | mean ms | gaps |\n|---|---|---|---|---|---|---|---|");
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
await viaEngine(0);
for (let r = 0; r < rounds; r++) {
  for (const [label, round] of paths) {
    gaps = [];
    calls = [];
    lastEnd = 0;
    await round(r * runs + 1);
    if (!gaps.length) throw new Error(label === "llama-server" ? "llama-server made no one-token decode calls" : "no synchronous decode calls were seen: is greedy.ts installed (Linux, SHIMMY_SYNC_GREEDY)?");
    console.log(`| ${r + 1} | ${label} | ${quantile(gaps, 0.5).toFixed(3)} | ${quantile(gaps, 0.9).toFixed(3)} | ${mean(gaps).toFixed(3)} | ${quantile(calls, 0.5).toFixed(2)} | ${mean(calls).toFixed(2)} | ${gaps.length} |`);
  }
}
await server.stop();
if (shim) rmSync(shim, { force: true });
process.exit(0);
