/**
 * Concurrent streams split into their two phases, for several shimmy configurations against
 * llama-server, alternating per round (the host drifts by tens of percent between minutes).
 *
 * Each round sends N requests at once (the harness's prompts, greedy unless --temperature) to one server and records:
 *   - aggregate tok/s: all tokens / time to the last token;
 *   - prompt phase: time to the slowest stream's first token (the N prompts are evaluated together);
 *   - decode step: (end - that first token) / (tokens - 1), the time of one N-token decode step.
 * A short untimed request goes to each server before its round (as in bench-compare.ts).
 *
 *   bun scripts/bench-phases.ts [--model FILE] [--streams 4] [--rounds 8] [--tokens 32] [--threads 2]
 *       [--temperature 0] [--llama-server PATH] SIDE...
 *
 * A SIDE is `llama` (llama-server, mapped as it ships), `llama:--no-mmap` (extra arguments after the
 * colon, comma-separated), `NAME=VAR:VALUE,VAR:VALUE` (shimmy serve with those environment
 * variables, e.g. `mapped=SHIMMY_MMAP:1`; `NAME=` for the defaults), or `engine` (shimmy's engine
 * without HTTP, in a process of its own: bench-inprocess.ts, as bench-compare.ts's floor; one stream
 * only; `engine:VAR:VALUE,...` with environment variables). The last lines print each side's
 * medians and, for the first side against the last, the medians of the per-round ratios.
 * llama-server comes from bench-compare.ts's build (~/.cache/shimmy-bench) unless --llama-server is given.
 */
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { benchPrompt, envFrom, freePort, lines, median, readSse, settlePageCache, waitForServer } from "./bench-prompt.ts";

const ROOT = path.resolve(import.meta.dir, "..");
const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    model: { type: "string" },
    streams: { type: "string" },
    rounds: { type: "string" },
    tokens: { type: "string" },
    threads: { type: "string" },
    temperature: { type: "string" },
    "llama-server": { type: "string" },
  },
});
const model = values.model ?? path.join(os.tmpdir(), "shimmy-fixtures", "bench-tinyllama-q8.gguf");
const streams = Number(values.streams ?? 4);
const rounds = Number(values.rounds ?? 8);
const tokens = Number(values.tokens ?? 32);
const threads = String(values.threads ?? 2);
/** 0 (greedy, the default), or a sampling temperature (each stream then gets its own fixed seed). */
const temperature = Number(values.temperature ?? 0);
if (!(temperature >= 0 && temperature <= 2)) throw new Error("--temperature must be between 0 and 2");
const CTX = 2048;
const llamaBin = values["llama-server"] ?? path.join(os.homedir(), ".cache", "shimmy-bench", "llama.cpp", "build", "bin", "llama-server");
if (!positionals.length) throw new Error("name at least one side: llama, llama:ARGS, or NAME=VAR:VALUE,...");
if (![streams, rounds, tokens].every((n) => Number.isInteger(n) && n >= 1) || tokens < 2) throw new Error("--streams, --rounds and --tokens must be whole numbers (tokens at least 2)");

type Side = { name: string; kind: "shimmy" | "llama" | "engine"; url: string; proc: ReturnType<typeof Bun.spawn>; model?: string; lines?: AsyncGenerator<string> };
interface Round {
  tps: number;
  promptMs: number;
  stepMs: number;
}

function start(spec: string, port: number): Side {
  const url = `http://127.0.0.1:${port}`;
  if (spec === "engine" || spec.startsWith("engine:")) {
    if (streams !== 1) throw new Error("an engine side runs one stream (--streams 1)");
    const proc = Bun.spawn(["bun", path.join(ROOT, "scripts/bench-inprocess.ts"), model, threads, String(CTX), String(tokens), "engine"], { env: envFrom(spec, spec.slice(7)), stdin: "pipe", stdout: "pipe", stderr: "inherit" });
    return { name: spec, kind: "engine", url, proc, lines: lines(proc.stdout as ReadableStream<Uint8Array>) };
  }
  if (spec === "llama" || spec.startsWith("llama:")) {
    const extra = spec.startsWith("llama:") ? spec.slice(6).split(",").filter(Boolean) : [];
    const proc = Bun.spawn([llamaBin, "-m", model, "-t", threads, "-tb", threads, "-c", String(CTX * streams), "-np", String(streams), "--port", String(port), "--host", "127.0.0.1", "-ngl", "0", "--no-warmup", ...extra], { stdout: "ignore", stderr: "ignore" });
    return { name: spec, kind: "llama", url, proc };
  }
  const eq = spec.indexOf("=");
  if (eq < 1) throw new Error(`side ${spec}: expected llama, llama:ARGS or NAME=VAR:VALUE,...`);
  const env = envFrom(spec, spec.slice(eq + 1));
  const proc = Bun.spawn(["bun", path.join(ROOT, "src/main.ts"), "serve", "--bind", `127.0.0.1:${port}`, "--model-path", model, "--threads", threads, "--ctx-size", String(CTX), "--parallel", String(streams), "--keep-alive", "-1", "--gpu", "cpu"], { env, stdout: "ignore", stderr: "inherit" });
  return { name: spec.slice(0, eq), kind: "shimmy", url, proc };
}

/** Token arrival times (ms after t0) of one streamed request. */
async function stream(side: Side, i: number, t0: number, n: number): Promise<number[]> {
  const stamps: number[] = [];
  if (side.kind === "engine") {
    // bench-inprocess.ts's line protocol: `i` for a timed run of `tokens` tokens, `w` for a 4-token
    // one (round()'s untimed warm-up, i = 0).
    const p = side.proc.stdin as import("bun").FileSink;
    p.write(i === 0 ? "w\n" : `${i}\n`);
    p.flush();
    const line = (await side.lines!.next()).value as string;
    if (i === 0) return [0, 0];
    // Times after the engine's own start of the request (its clock is its own; the pipe adds ~0.1 ms).
    const r = JSON.parse(line) as { t0: number; stamps: number[] };
    return r.stamps.map((s) => s - r.t0);
  }
  const res =
    side.kind === "shimmy"
      ? await fetch(`${side.url}/api/generate`, { method: "POST", keepalive: false, headers: { accept: "text/event-stream" }, body: JSON.stringify({ model: side.model, prompt: benchPrompt(i), max_tokens: n, temperature, seed: i }) })
      : await fetch(`${side.url}/completion`, { method: "POST", keepalive: false, headers: { "content-type": "application/json" }, body: JSON.stringify({ prompt: benchPrompt(i), n_predict: n, temperature, seed: i, stream: true, cache_prompt: false }) });
  if (!res.ok || !res.body) throw new Error(`${side.name}: HTTP ${res.status}`);
  await readSse(res, (data, event) => {
    if (side.kind === "shimmy" ? event !== "done" && data !== "[DONE]" : Boolean(JSON.parse(data).content)) stamps.push(performance.now() - t0);
  });
  return stamps;
}

let next = 100;
async function round(side: Side): Promise<Round> {
  await stream(side, 0, performance.now(), 4);
  const t0 = performance.now();
  const all = await Promise.all(Array.from({ length: streams }, (_, k) => stream(side, next++ + k * 1000, t0, tokens)));
  const end = performance.now() - t0;
  if (all.some((s) => s.length < 2)) throw new Error(`${side.name}: a stream ended with fewer than 2 tokens`);
  const promptMs = Math.max(...all.map((s) => s[0]!));
  const steps = Math.max(...all.map((s) => s.length)) - 1;
  // The decode step ends at the last token (not at the end of the response, which an engine side has not).
  const last = Math.max(...all.map((s) => s.at(-1)!));
  return { tps: (all.reduce((a, s) => a + s.length, 0) * 1000) / end, promptMs, stepMs: (last - promptMs) / steps };
}

// Before any server maps the file (its cached pages cannot be dropped while mapped).
const pageCache = settlePageCache(model);
const sides = positionals.map((spec) => start(spec, freePort()));
try {
  for (const s of sides) {
    if (s.kind === "engine") {
      if ((await s.lines!.next()).value !== "ready") throw new Error(`${s.name}: bench-inprocess.ts did not start`);
      continue;
    }
    await waitForServer(`${s.url}/health`, s.proc, 180_000);
    if (s.kind === "shimmy") s.model = ((await (await fetch(`${s.url}/v1/models`)).json()) as { data: Array<{ id: string }> }).data[0]!.id;
  }
  for (const s of sides) await round(s); // warm-up at this batch shape
  const results = new Map<string, Round[]>(sides.map((s) => [s.name, []]));
  console.log(`${path.basename(model)}, ${streams} streams x ${tokens} tokens, ${threads} threads, ${rounds} rounds; ${pageCache}`);
  console.log("round side aggregate-tok/s prompt-phase-ms decode-step-ms");
  for (let r = 0; r < rounds; r++) {
    for (const s of r % 2 ? [...sides].reverse() : sides) {
      const x = await round(s);
      results.get(s.name)!.push(x);
      console.log(`${r} ${s.name} ${x.tps.toFixed(2)} ${x.promptMs.toFixed(0)} ${x.stepMs.toFixed(1)}`);
    }
  }
  for (const s of sides) {
    const xs = results.get(s.name)!;
    console.log(`median ${s.name}: ${median(xs.map((x) => x.tps)).toFixed(2)} tok/s, prompt phase ${median(xs.map((x) => x.promptMs)).toFixed(0)} ms, decode step ${median(xs.map((x) => x.stepMs)).toFixed(1)} ms`);
  }
  if (sides.length > 1) {
    const a = results.get(sides[0]!.name)!;
    const b = results.get(sides.at(-1)!.name)!;
    const ratio = (f: (x: Round, y: Round) => number) => median(a.map((x, i) => f(x, b[i]!))).toFixed(3);
    console.log(`${sides[0]!.name} against ${sides.at(-1)!.name} (paired medians, above 1 = ${sides[0]!.name} faster): aggregate ${ratio((x, y) => x.tps / y.tps)}, prompt phase ${ratio((x, y) => y.promptMs / x.promptMs)}, decode step ${ratio((x, y) => y.stepMs / x.stepMs)}`);
  }
} finally {
  for (const s of sides) s.proc.kill("SIGTERM");
  await Promise.all(sides.map((s) => s.proc.exited));
}
