/**
 * The in-process floor for `bench-compare.ts`, in a process of its own (so the harness's own
 * JavaScript, parsing every other contender's streams, never shares a process with the decode).
 * Loads MODEL with node-llama-cpp, then for each line `i` on stdin generates `prompt(i)` greedily and
 * answers one JSON line {t0, stamps, promptTokens} with performance.now() times of this process; a line
 * `w` runs a short untimed warm-up generation and answers `ok`.
 * Sampling as shimmy does it for these requests: greedy, no repeat penalty (LlamaCompletion applies
 * one by default, which costs time per token and is not what the servers run).
 *
 * With MODE = "pools", shimmy's persistent CPU threadpools (src/engine/threadpool.ts) are installed
 * first. With MODE = "engine", generation goes through shimmy's engine itself (src/engine/llama.ts:
 * threadpools and shimmy's decode loop, src/engine/stepper.ts), with no HTTP: the same engine
 * shimmy serves with, so SSE against this floor is the HTTP cost.
 *
 *   bun scripts/bench-inprocess.ts MODEL THREADS CTX TOKENS [pools|engine]
 */
import { getLlama, LlamaCompletion } from "node-llama-cpp";
import { installThreadpools } from "../src/engine/threadpool.ts";
import { benchPrompt } from "./bench-prompt.ts";

const [model, threads, ctxSize, tokens, pools] = process.argv.slice(2);
if (pools === "engine") await engineFloor();
const llama = await getLlama({ gpu: false, build: "never", skipDownload: true, logLevel: "error" as never });
if (pools === "pools") {
  const state = await installThreadpools(true);
  if (!state.installed) throw new Error(`threadpool: ${state.reason}`);
}
const m = await llama.loadModel({ modelPath: model! });
const ctx = await m.createContext({ contextSize: Number(ctxSize), threads: Number(threads), sequences: 1 });
const seq = ctx.getSequence();
process.stdout.write("ready\n");
for await (const line of console) {
  // "w": a short untimed warm-up generation (4 tokens), answered with "ok".
  if (line === "w") {
    const warm = new LlamaCompletion({ contextSequence: seq });
    await warm.generateCompletion(benchPrompt(0), { maxTokens: 4, temperature: 0, repeatPenalty: false });
    warm.dispose({ disposeSequence: false });
    process.stdout.write("ok\n");
    continue;
  }
  const i = Number(line);
  const completion = new LlamaCompletion({ contextSequence: seq });
  const stamps: number[] = [];
  const promptTokens = m.tokenize(benchPrompt(i)).length + 1;
  const t0 = performance.now();
  await completion.generateCompletion(benchPrompt(i), { maxTokens: Number(tokens), temperature: 0, repeatPenalty: false, onToken: () => void stamps.push(performance.now()) });
  completion.dispose({ disposeSequence: false });
  process.stdout.write(`${JSON.stringify({ t0, stamps, promptTokens })}\n`);
}

/** The floor through shimmy's engine (no HTTP), answering the same line protocol. */
async function engineFloor(): Promise<never> {
  const { openBackend } = await import("../src/engine/llama.ts");
  const backend = await openBackend({ gpu: "cpu", threads: Number(threads), threadsExplicit: true, ctxSize: Number(ctxSize), chatTemplate: "auto", parallel: 1 });
  const m = await backend.loadModel({ name: "bench", path: model!, source: "dir" } as never);
  process.stdout.write("ready\n");
  for await (const line of console) {
    const warm = line === "w";
    const i = warm ? 0 : Number(line);
    const stamps: number[] = [];
    const t0 = performance.now();
    const res = await m.generate({ prompt: benchPrompt(i), maxTokens: warm ? 4 : Number(tokens), temperature: 0 }, () => void stamps.push(performance.now()));
    process.stdout.write(warm ? "ok\n" : `${JSON.stringify({ t0, stamps, promptTokens: res.timings.promptTokens })}\n`);
  }
  process.exit(0);
}
