import { defineCommand } from "citty";
import type { Timings } from "../../engine/types.ts";
import { configFrom, engineFrom, intFlag, modelArgs, runtimeArgs } from "../args.ts";

/** The p-th percentile (nearest rank) of a list. */
function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))] ?? NaN;
}

const round = (n: number) => Math.round(n * 100) / 100;

export default defineCommand({
  meta: { name: "bench", description: "Measure load time, time to first token, prompt and decode speed (p50/p95 over --runs; --concurrency streams)" },
  args: {
    name: { type: "positional", description: "Model name (see `shimmy list`)", required: true },
    runs: { type: "string", description: "Timed runs after one warm-up (default 5)", valueHint: "N" },
    "max-tokens": { type: "string", description: "Tokens generated per stream (default 64)", valueHint: "N" },
    concurrency: { type: "string", description: "Streams generating at once in each run, each on its own slot (default 1)", valueHint: "N" },
    prompt: { type: "string", description: "Prompt (default: a fixed ~50-word paragraph)", valueHint: "TEXT" },
    json: { type: "boolean", description: "Print one JSON object instead of a table" },
    ...modelArgs,
    ...runtimeArgs,
  },
  async run({ args, rawArgs }) {
    const config = configFrom(args, rawArgs);
    const runs = intFlag("runs", args.runs, 1, 1000) ?? 5;
    const maxTokens = intFlag("max-tokens", args["max-tokens"], 1, 1 << 20) ?? 64;
    const concurrency = intFlag("concurrency", args.concurrency, 1, 256) ?? 1;
    config.parallel = Math.max(config.parallel, concurrency);
    const prompt =
      args.prompt ??
      "The quick brown fox jumps over the lazy dog while the rain falls on the old town and the people in the market talk about the weather, the price of bread and the news of the day, and a child laughs at a cat that sleeps in the sun";
    const engine = await engineFrom(config);
    try {
      const loaded = await engine.load(args.name);
      // Each stream of each run starts with a different word, so its prompt is evaluated anew
      // (no KV-cache reuse between runs).
      const opts = (i: number) => ({ prompt: `${i}: ${prompt}`, maxTokens, temperature: 0 });
      // The warm-up runs as many streams as the timed runs: a GPU backend builds its kernels for each
      // batch shape on first use (seen on an H100 with Vulkan: a first 4-stream run waited 6 s).
      await Promise.all(Array.from({ length: concurrency }, (_, k) => engine.complete(args.name, opts(k))));
      const perRun: Array<{ wallMs: number; streams: Timings[] }> = [];
      for (let r = 1; r <= runs; r++) {
        const t0 = performance.now();
        const streams = await Promise.all(Array.from({ length: concurrency }, (_, k) => engine.complete(args.name, opts(r * 1000 + k)).then((x) => x.timings)));
        perRun.push({ wallMs: performance.now() - t0, streams });
      }
      const all = perRun.flatMap((r) => r.streams);
      const stat = (f: (t: Timings) => number) => ({ p50: round(percentile(all.map(f), 50)), p95: round(percentile(all.map(f), 95)) });
      const aggregate = perRun.map((r) => (r.streams.reduce((n, t) => n + t.generatedTokens, 0) * 1000) / r.wallMs);
      const summary = {
        model: loaded.entry.name,
        threads: loaded.native.threads,
        runs,
        concurrency,
        load_ms: Math.round(loaded.loadMs),
        prompt_tokens: all[0]!.promptTokens,
        generated_tokens: all[0]!.generatedTokens,
        ttft_ms: stat((t) => t.ttftMs),
        prompt_tokens_per_second: stat((t) => t.promptTokensPerSecond),
        decode_tokens_per_second: stat((t) => t.tokensPerSecond),
        aggregate_tokens_per_second: { p50: round(percentile(aggregate, 50)), p95: round(percentile(aggregate, 95)) },
        per_run: perRun.map((r) => ({ wall_ms: round(r.wallMs), streams: r.streams.map((t) => ({ ttft_ms: round(t.ttftMs), prompt_tps: round(t.promptTokensPerSecond), decode_tps: round(t.tokensPerSecond), generated: t.generatedTokens })) })),
      };
      if (args.json) {
        process.stdout.write(`${JSON.stringify(summary)}\n`);
        return;
      }
      const pp = (s: { p50: number; p95: number }, unit: string) => `p50 ${s.p50} ${unit}, p95 ${s.p95} ${unit}`;
      process.stdout.write(
        [
          `model            ${summary.model} (threads ${summary.threads}, ${runs} runs x ${concurrency} stream${concurrency > 1 ? "s" : ""})`,
          `load             ${summary.load_ms} ms`,
          `prompt           ${summary.prompt_tokens} tokens: ${pp(summary.prompt_tokens_per_second, "tok/s")}`,
          `time to first    ${pp(summary.ttft_ms, "ms")}`,
          `decode           ${summary.generated_tokens} tokens per stream: ${pp(summary.decode_tokens_per_second, "tok/s")}`,
          ...(concurrency > 1 ? [`aggregate        ${pp(summary.aggregate_tokens_per_second, "tok/s")} over ${concurrency} streams`] : []),
        ].join("\n") + "\n",
      );
    } finally {
      await engine.close();
    }
  },
});
