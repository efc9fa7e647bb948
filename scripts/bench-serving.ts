/**
 * Serving benchmark (not a test): aggregate decode throughput at 1, 2, 4 and 8 concurrent SSE streams,
 * and the prompt cache — time to first token of a follow-up chat turn that shares a long prefix,
 * against a cold prompt of the same length. Runs the real server in-process on the bench model
 * (TinyLlama-1.1B shape, Q8_0; generated on demand into the temp dir, never committed).
 *
 *   bun scripts/bench-serving.ts [--threads N] [--tokens N] [--model FILE]
 */
import { existsSync, mkdirSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { physicalCores } from "../src/config.ts";
import { Engine } from "../src/engine/engine.ts";
import { ModelRegistry } from "../src/engine/registry.ts";
import { writeBenchModel } from "../src/gguf/presets.ts";
import { createApp } from "../src/server/app.ts";
import { listen } from "../src/server/listen.ts";

const { values } = parseArgs({ options: { threads: { type: "string" }, tokens: { type: "string" }, model: { type: "string" } } });
const threads = Number(values.threads ?? physicalCores());
const tokens = Number(values.tokens ?? 32);
const model = values.model ?? path.join(os.tmpdir(), "shimmy-fixtures", "bench-tinyllama-q8.gguf");
if (!existsSync(model)) {
  mkdirSync(path.dirname(model), { recursive: true });
  console.error(`writing the bench model to ${model} ...`);
  await writeBenchModel(model);
}
const name = path.basename(model, ".gguf").toLowerCase();
const engine = new Engine(new ModelRegistry({ modelPath: model, modelDirs: [] }), { gpu: "auto", threads, threadsExplicit: true, ctxSize: 2048, chatTemplate: "auto", parallel: 8, keepAliveMs: -1 });
const server = listen(createApp({ engine }), "127.0.0.1:0");
await engine.load(name);

async function stream(body: object): Promise<{ tokens: number; ttftMs: number }> {
  const res = await fetch(`${server.url}/api/generate`, { method: "POST", body: JSON.stringify({ model: name, temperature: 0, ...body }) });
  const text = await res.text();
  const done = text.split("\n\n").find((e) => e.startsWith("event: done"))!;
  const t = JSON.parse(done.split("data: ")[1]!).timings;
  return { tokens: t.predicted_n, ttftMs: t.ttft_ms };
}

console.log(`model ${name}, threads ${threads}, ${tokens} tokens per stream, parallel slots 8\n`);
console.log("| concurrent streams | aggregate tok/s | per-stream tok/s | wall s |\n|---|---|---|---|");
await stream({ prompt: "warm up", max_tokens: 4 });
let single = 0;
for (const n of [1, 2, 4, 8]) {
  const t0 = performance.now();
  const runs = await Promise.all(Array.from({ length: n }, (_, i) => stream({ prompt: `Story ${i}: once upon a time`, max_tokens: tokens })));
  const s = (performance.now() - t0) / 1000;
  const total = runs.reduce((a, r) => a + r.tokens, 0);
  if (n === 1) single = total / s;
  console.log(`| ${n} | ${(total / s).toFixed(1)} (${(total / s / single).toFixed(2)}x) | ${(total / s / n).toFixed(1)} | ${s.toFixed(1)} |`);
}

// Prompt cache: a long first turn, then a follow-up that shares it, against a cold prompt as long.
const prefix = "The committee met on Tuesday to discuss the harbour, the roads and the school. ".repeat(24);
const turn1 = [{ role: "user", content: prefix }];
const first = await (await fetch(`${server.url}/api/generate`, { method: "POST", body: JSON.stringify({ model: name, messages: turn1, max_tokens: 8, temperature: 0, stream: false }) })).json() as any;
const turn2 = [...turn1, { role: "assistant", content: first.response }, { role: "user", content: "And then?" }];
const warm = await (await fetch(`${server.url}/api/generate`, { method: "POST", body: JSON.stringify({ model: name, messages: turn2, max_tokens: 4, temperature: 0, stream: false }) })).json() as any;
await engine.unload(name);
await engine.load(name);
const cold = await (await fetch(`${server.url}/api/generate`, { method: "POST", body: JSON.stringify({ model: name, messages: turn2, max_tokens: 4, temperature: 0, stream: false }) })).json() as any;
console.log(`\nprompt cache: turn 2 of ${warm.timings.prompt_n} prompt tokens, ${warm.timings.cache_n} cached: TTFT ${warm.timings.ttft_ms} ms; the same prompt cold: TTFT ${cold.timings.ttft_ms} ms (${(cold.timings.ttft_ms / warm.timings.ttft_ms).toFixed(1)}x)`);
await server.stop();
await engine.close();
