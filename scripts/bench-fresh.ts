/**
 * A fresh server's first requests (not a test): for two or more shimmy configurations, each round
 * starts every side's server afresh (in turn, the order reversed every other round), sends it a
 * 4-token request, then REQUESTS streamed generations of TOKENS tokens one after the other, and stops it.
 * It records each generation's decode tok/s as the server reports it (`timings.predicted_per_second`),
 * so the figures show what a server pays while it is new (JavaScriptCore compiling shimmy's code as
 * it gets hot) against later requests.
 *
 *   bun scripts/bench-fresh.ts [--model FILE] [--rounds 8] [--requests 6] [--tokens 64] [--threads 2] SIDE SIDE...
 *
 * A SIDE is `NAME=VAR:VALUE,...` (shimmy serve with those environment variables; `NAME=` for the
 * defaults), as in bench-phases.ts. It prints each round's figures, each side's median per request
 * index, and for the first side against the second the per-round ratios of the medians over the first
 * three requests and over all of them.
 */
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { benchPrompt, envFrom, freePort, median, readSse, settlePageCache, waitForServer } from "./bench-prompt.ts";

const ROOT = path.resolve(import.meta.dir, "..");
const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { model: { type: "string" }, rounds: { type: "string" }, requests: { type: "string" }, tokens: { type: "string" }, threads: { type: "string" } },
});
const model = values.model ?? path.join(os.tmpdir(), "shimmy-fixtures", "bench-tinyllama-q8.gguf");
const rounds = Number(values.rounds ?? 8);
const requests = Number(values.requests ?? 6);
const tokens = Number(values.tokens ?? 64);
const threads = String(values.threads ?? 2);
if (![rounds, requests, tokens].every((n) => Number.isInteger(n) && n >= 1)) throw new Error("--rounds, --requests and --tokens must be whole numbers");
if (positionals.length < 2) throw new Error("name two sides or more: NAME=VAR:VALUE,... (NAME= for the defaults)");

const sides = positionals.map((spec) => {
  const eq = spec.indexOf("=");
  if (eq < 1) throw new Error(`side ${spec}: expected NAME=VAR:VALUE,...`);
  const env = envFrom(spec, spec.slice(eq + 1));
  return { name: spec.slice(0, eq), env };
});
const name = path.basename(model, ".gguf").toLowerCase().replace(/[_\s]+/g, "-");

/** One streamed /api/generate; the server's own decode rate and token count. */
async function generate(url: string, n: number, i: number): Promise<{ tps: number; n: number }> {
  const res = await fetch(`${url}/api/generate`, { method: "POST", body: JSON.stringify({ model: name, prompt: benchPrompt(i), max_tokens: n, temperature: 0, stream: true }) });
  if (!res.ok) throw new Error(`${res.status}: ${await res.text()}`);
  let timings: { predicted_per_second: number; predicted_n: number } | undefined;
  await readSse(res, (data) => {
    if (data.startsWith("{")) timings = (JSON.parse(data) as { timings?: typeof timings }).timings ?? timings;
  });
  if (!timings) throw new Error("no timings in the stream");
  return { tps: timings.predicted_per_second, n: timings.predicted_n };
}

console.error(settlePageCache(model));
const results = sides.map(() => [] as number[][]);
for (let r = 0; r < rounds; r++) {
  const order = sides.map((_, i) => i);
  if (r % 2) order.reverse();
  for (const s of order) {
    const port = freePort();
    const url = `http://127.0.0.1:${port}`;
    const proc = Bun.spawn(["bun", path.join(ROOT, "src/main.ts"), "serve", "--bind", `127.0.0.1:${port}`, "--model-path", model, "--threads", threads, "--parallel", "1", "--keep-alive", "-1", "--gpu", "cpu"], { env: sides[s]!.env, stdout: "ignore", stderr: "inherit" });
    try {
      await waitForServer(url, proc);
      await generate(url, 4, 0);
      const tps: number[] = [];
      for (let k = 0; k < requests; k++) {
        const g = await generate(url, tokens, k + 1);
        if (g.n !== tokens) console.error(`  ${sides[s]!.name}: ${g.n} tokens instead of ${tokens}`);
        tps.push(g.tps);
      }
      results[s]!.push(tps);
      console.log(`round ${r + 1} ${sides[s]!.name}: ${tps.map((x) => x.toFixed(1)).join(" ")} tok/s`);
    } finally {
      proc.kill();
      await proc.exited;
    }
  }
}
for (const [i, s] of sides.entries()) {
  const byIndex = Array.from({ length: requests }, (_, k) => median(results[i]!.map((x) => x[k]!)).toFixed(1));
  console.log(`${s.name}: median tok/s per request ${byIndex.join(" ")}; all ${median(results[i]!.flat()).toFixed(1)}`);
}
const [a, b] = [results[0]!, results[1]!];
const first = a.map((x, r) => median(x.slice(0, 3)) / median(b[r]!.slice(0, 3)));
const all = a.map((x, r) => median(x) / median(b[r]!));
console.log(`${sides[0]!.name} against ${sides[1]!.name}, per round, first 3 requests: ${first.map((x) => x.toFixed(3)).join(" ")} (median ${median(first).toFixed(3)})`);
console.log(`${sides[0]!.name} against ${sides[1]!.name}, per round, all requests: ${all.map((x) => x.toFixed(3)).join(" ")} (median ${median(all).toFixed(3)})`);
