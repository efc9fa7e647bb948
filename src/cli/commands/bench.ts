import { defineCommand } from "citty";
import { configFrom, engineFrom, intFlag, modelArgs, runtimeArgs } from "../args.ts";

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

export default defineCommand({
  meta: { name: "bench", description: "Measure load time, time to first token, prompt and decode speed over N runs" },
  args: {
    name: { type: "positional", description: "Model name (see `shimmy list`)", required: true },
    runs: { type: "string", description: "Timed runs after one warm-up (default 3)", valueHint: "N" },
    "max-tokens": { type: "string", description: "Tokens generated per run (default 64)", valueHint: "N" },
    prompt: { type: "string", description: "Prompt (default: a fixed ~40-word paragraph)", valueHint: "TEXT" },
    json: { type: "boolean", description: "Print one JSON object instead of a table" },
    ...modelArgs,
    ...runtimeArgs,
  },
  async run({ args, rawArgs }) {
    const config = configFrom(args, rawArgs);
    const runs = intFlag("runs", args.runs, 1, 1000) ?? 3;
    const maxTokens = intFlag("max-tokens", args["max-tokens"], 1, 1 << 20) ?? 64;
    const prompt =
      args.prompt ??
      "The quick brown fox jumps over the lazy dog while the rain falls on the old town and the people in the market talk about the weather, the price of bread and the news of the day, and a child laughs at a cat that sleeps in the sun";
    const engine = await engineFrom(config);
    try {
      const loaded = await engine.load(args.name);
      // Each run starts with a different word so the prompt is evaluated anew, not reused from the cache.
      const opts = (i: number) => ({ prompt: `${i}: ${prompt}`, maxTokens, temperature: 0 });
      await engine.complete(args.name, opts(0));
      const results = [];
      for (let i = 1; i <= runs; i++) results.push((await engine.complete(args.name, opts(i))).timings);
      const summary = {
        model: loaded.entry.name,
        threads: loaded.native.threads,
        runs,
        load_ms: Math.round(loaded.loadMs),
        prompt_tokens: results[0]!.promptTokens,
        generated_tokens: median(results.map((r) => r.generatedTokens)),
        ttft_ms: +median(results.map((r) => r.ttftMs)).toFixed(2),
        prompt_tokens_per_second: +median(results.map((r) => r.promptTokensPerSecond)).toFixed(2),
        decode_tokens_per_second: +median(results.map((r) => r.tokensPerSecond)).toFixed(2),
        per_run: results.map((r) => ({ ttft_ms: +r.ttftMs.toFixed(2), prompt_tps: +r.promptTokensPerSecond.toFixed(2), decode_tps: +r.tokensPerSecond.toFixed(2), generated: r.generatedTokens })),
      };
      if (args.json) {
        process.stdout.write(`${JSON.stringify(summary)}\n`);
        return;
      }
      process.stdout.write(
        [
          `model            ${summary.model} (threads ${summary.threads}, ${runs} runs, medians)`,
          `load             ${summary.load_ms} ms`,
          `prompt           ${summary.prompt_tokens} tokens at ${summary.prompt_tokens_per_second} tok/s`,
          `time to first    ${summary.ttft_ms} ms`,
          `decode           ${summary.generated_tokens} tokens at ${summary.decode_tokens_per_second} tok/s`,
        ].join("\n") + "\n",
      );
    } finally {
      await engine.close();
    }
  },
});
