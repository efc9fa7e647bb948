import { defineCommand } from "citty";
import { UsageError } from "../../errors.ts";
import type { GenerateOptions } from "../../engine/types.ts";
import { wireTimings } from "../../server/http.ts";
import { configFrom, engineFrom, modelArgs, repeatedFlag, runtimeArgs, samplingArgs, samplingFlags } from "../args.ts";

/** Reads all of stdin as UTF-8 (empty when stdin is a terminal). */
async function readStdin(): Promise<string> {
  if (process.stdin.isTTY) return "";
  return await Bun.stdin.text();
}

export default defineCommand({
  meta: { name: "generate", description: "Generate text from a prompt (--prompt or stdin); tokens go to stdout as they arrive" },
  args: {
    name: { type: "positional", description: "Model name (see `shimmy list`)", required: true },
    prompt: { type: "string", description: "Prompt text (default: read stdin)", valueHint: "TEXT" },
    system: { type: "string", description: "System prompt", valueHint: "TEXT" },
    raw: { type: "boolean", description: "Send the prompt as raw completion text, without the chat template" },
    stop: { type: "string", description: "Stop sequence (repeat the flag for several)", valueHint: "TEXT" },
    json: { type: "boolean", description: "Print one JSON object {model, text, finish_reason, timings} instead of streaming" },
    ...samplingArgs,
    ...modelArgs,
    ...runtimeArgs,
  },
  async run({ args, rawArgs }) {
    const config = configFrom(args, rawArgs);
    const stops = repeatedFlag(rawArgs, "stop");
    const opts: GenerateOptions = {
      ...samplingFlags(args),
      stop: stops.length ? stops : undefined,
    };
    const prompt: string = typeof args.prompt === "string" ? args.prompt : (await readStdin()).replace(/\r?\n$/, "");
    if (!prompt) throw new UsageError("no prompt: pass --prompt TEXT or pipe text on stdin");
    if (args.raw) opts.prompt = prompt;
    else opts.messages = [...(args.system !== undefined ? [{ role: "system" as const, content: args.system }] : []), { role: "user" as const, content: prompt }];

    // Not a terminal: no load line, so a script's stderr holds only real problems.
    const engine = await engineFrom(config, { loadLine: false });
    const controller = new AbortController();
    opts.signal = controller.signal;
    // A closed stdout (`| head -c 10`) stops generation and ends quietly.
    let stdoutClosed = false;
    process.stdout.on("error", () => {
      stdoutClosed = true;
      controller.abort(new Error("stdout closed"));
    });
    const onSignal = () => controller.abort(new Error("interrupted"));
    process.on("SIGINT", onSignal);
    try {
      const result = await engine.complete(args.name, opts, args.json ? undefined : (text) => {
        if (!stdoutClosed) process.stdout.write(text);
      });
      if (args.json) process.stdout.write(`${JSON.stringify({ model: args.name, text: result.text, finish_reason: result.finishReason, timings: wireTimings(result.timings) })}\n`);
      else if (!stdoutClosed && result.text && !result.text.endsWith("\n") && process.stdout.isTTY) process.stdout.write("\n");
    } finally {
      process.off("SIGINT", onSignal);
      await engine.close();
    }
  },
});
