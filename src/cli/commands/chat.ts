/**
 * `shimmy chat MODEL`: an interactive chat in the terminal. Tokens stream as they come, the
 * conversation is kept, Ctrl-C stops the current answer (not the chat), and `/system`, `/clear`,
 * `/save FILE`, `/exit` manage it. Multi-line input: wrap it in `"""` lines, or end lines with `\`.
 * With stdin not a terminal, each line (or `"""` block) of the piped text is one user turn.
 */
import { writeFileSync } from "node:fs";
import readline from "node:readline";
import { defineCommand } from "citty";
import type { ChatMessage, GenerateOptions } from "../../engine/types.ts";
import { toShimmyError } from "../../errors.ts";
import { configFrom, engineFrom, modelArgs, runtimeArgs, samplingArgs, samplingFlags } from "../args.ts";

const HELP = `commands:
  /system TEXT   set the system prompt (the conversation is kept)
  /clear         forget the conversation (the system prompt stays)
  /save FILE     write the conversation as JSON
  /exit, /bye    leave (Ctrl-D too)
multi-line input: a line with """ starts and ends a block; a line ending in \\ continues
Ctrl-C stops the answer being written`;

export default defineCommand({
  meta: { name: "chat", description: "Chat with a model in the terminal (streams tokens; /help for commands)" },
  args: {
    name: { type: "positional", description: "Model name (see `shimmy list`)", required: true },
    system: { type: "string", description: "System prompt", valueHint: "TEXT" },
    ...samplingArgs,
    ...modelArgs,
    ...runtimeArgs,
  },
  async run({ args, rawArgs }) {
    const config = configFrom(args, rawArgs);
    const sampling: GenerateOptions = samplingFlags(args);
    const tty = process.stdin.isTTY === true;
    const engine = await engineFrom(config, { loadLine: tty });
    const model = (await engine.resolve(args.name)).name;
    if (tty) await engine.load(model);
    let system: string | undefined = args.system;
    let history: ChatMessage[] = [];
    let current: AbortController | undefined;

    // A terminal gets readline (prompt, history, Ctrl-C); piped input is read whole, a line at a time.
    const rl = tty ? readline.createInterface({ input: process.stdin, output: process.stdout, terminal: true, prompt: ">>> " }) : undefined;
    const prompt = () => rl?.prompt();
    rl?.on("SIGINT", () => {
      if (current) {
        current.abort(new Error("interrupted"));
        return;
      }
      // At the prompt: drop the line being typed, or say how to leave.
      if ((rl as unknown as { line: string }).line) rl.write(null, { ctrl: true, name: "u" });
      else process.stdout.write("\n(/exit or Ctrl-D to leave)\n");
      prompt();
    });
    const lines: AsyncIterable<string> = rl ?? (async function* () {
      yield* (await Bun.stdin.text()).split(/\r?\n/);
    })();
    if (tty) process.stdout.write(`chatting with ${model}; /help for commands\n`);

    async function answer(text: string): Promise<void> {
      history.push({ role: "user", content: text });
      current = new AbortController();
      let reply = "";
      try {
        const r = await engine.complete(model, { ...sampling, messages: [...(system !== undefined ? [{ role: "system" as const, content: system }] : []), ...history], signal: current.signal }, (t) => {
          reply += t;
          process.stdout.write(t);
        });
        reply = r.text;
        if (r.finishReason === "abort") process.stdout.write(tty ? " ^C" : "");
        process.stdout.write("\n");
        history.push({ role: "assistant", content: reply });
      } catch (err) {
        history.pop();
        process.stdout.write("\n");
        process.stderr.write(`error: ${toShimmyError(err).message}\n`);
      } finally {
        current = undefined;
      }
    }

    /** Runs a command line; false when the chat should end. */
    function command(line: string): boolean {
      const [cmd, ...rest] = line.slice(1).split(" ");
      const arg = rest.join(" ").trim();
      switch (cmd) {
        case "exit":
        case "bye":
          return false;
        case "system":
          system = arg || undefined;
          process.stderr.write(system ? "system prompt set\n" : "system prompt cleared\n");
          return true;
        case "clear":
          history = [];
          process.stderr.write("conversation cleared\n");
          return true;
        case "save":
          if (!arg) process.stderr.write("usage: /save FILE\n");
          else {
            writeFileSync(arg, `${JSON.stringify({ model, messages: [...(system !== undefined ? [{ role: "system", content: system }] : []), ...history] }, null, 2)}\n`);
            process.stderr.write(`saved ${history.length} message(s) to ${arg}\n`);
          }
          return true;
        case "help":
        case "?":
          process.stderr.write(`${HELP}\n`);
          return true;
        default:
          process.stderr.write(`unknown command /${cmd}; /help lists them\n`);
          return true;
      }
    }

    let block: string[] | undefined;
    let continued = "";
    prompt();
    for await (const raw of lines) {
      let line = raw;
      if (block) {
        if (line.trim() === '"""') {
          line = block.join("\n");
          block = undefined;
        } else {
          block.push(line);
          if (tty) process.stdout.write("... ");
          continue;
        }
      } else if (line.trim() === '"""') {
        block = [];
        if (tty) process.stdout.write("... ");
        continue;
      } else if (line.endsWith("\\")) {
        continued += `${line.slice(0, -1)}\n`;
        if (tty) process.stdout.write("... ");
        continue;
      } else if (continued) {
        line = continued + line;
        continued = "";
      }
      if (!line.trim()) {
        prompt();
        continue;
      }
      if (line.startsWith("/") && !line.includes("\n")) {
        if (!command(line.trim())) break;
      } else await answer(line);
      prompt();
    }
    rl?.close();
    await engine.close();
  },
});
