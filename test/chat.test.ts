/**
 * Needs a model: `shimmy chat`, piped (stdin not a terminal) and driven through a real
 * pseudo-terminal with util-linux `script` (Ctrl-C stops the answer, the chat goes on).
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFileSync } from "node:fs";
import path from "node:path";
import { MAIN, makeFixtures, runCli } from "./helpers.ts";

setDefaultTimeout(60_000);

let fx: Awaited<ReturnType<typeof makeFixtures>>;
beforeAll(async () => {
  fx = await makeFixtures();
});
afterAll(() => fx?.cleanup());

const env = () => ({ SHIMMY_MODEL_PATHS: fx.dir });

describe("shimmy chat (piped)", () => {
  test("keeps the conversation; /clear forgets it; /save writes it; multi-line blocks are one turn", async () => {
    const saved = path.join(fx.dir, "conv.json");
    const blockFile = path.join(fx.dir, "block.json");
    const stdin = ["hello", "/clear", "hello", "/save " + saved, "/clear", "/system be brief", '"""', "line one", "line two", '"""', "/save " + blockFile, "/nope", "/exit", "never sent"].join("\n");
    const r = await runCli(["chat", "tiny", "--temperature", "0", "--max-tokens", "6"], { stdin, env: env() });
    expect(r.code).toBe(0);
    const answers = r.stdout.split("\n").filter(Boolean);
    expect(answers).toHaveLength(3);
    expect(answers[1]).toBe(answers[0]!); // the same greedy answer after /clear
    expect(r.stderr).toContain("conversation cleared");
    expect(r.stderr).toContain("unknown command /nope");
    const conv = JSON.parse(readFileSync(saved, "utf8"));
    expect(conv).toEqual({ model: "tiny", messages: [{ role: "user", content: "hello" }, { role: "assistant", content: answers[1] }] });
    const block = JSON.parse(readFileSync(blockFile, "utf8"));
    expect(block.messages[0]).toEqual({ role: "system", content: "be brief" });
    expect(block.messages[1]).toEqual({ role: "user", content: "line one\nline two" });
    expect(block.messages).toHaveLength(3);
  });

  test("the second turn sees the first (the conversation is kept)", async () => {
    const two = await runCli(["chat", "tiny", "--temperature", "0", "--max-tokens", "6"], { stdin: "hello\nhello\n", env: env() });
    const [a, b] = two.stdout.split("\n").filter(Boolean);
    expect(a).toBeDefined();
    expect(b).not.toBe(a);
  });

  test("unknown model and a bad flag value are error exits", async () => {
    const r = await runCli(["chat", "nope"], { stdin: "hi\n", env: env() });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("nope");
    const bad = await runCli(["chat", "tiny", "--temperature", "hot"], { stdin: "hi\n", env: env() });
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain("--temperature");
  });
});

describe.skipIf(!Bun.which("script"))("shimmy chat (pseudo-terminal)", () => {
  test("streams an answer; Ctrl-C stops it without leaving; /exit leaves", async () => {
    const cmd = `bun ${MAIN} chat tiny --temperature 0 --max-tokens 3000`;
    const proc = Bun.spawn(["script", "-qfec", cmd, "/dev/null"], {
      env: { ...process.env, SHIMMY_THREADS: "1", SHIMMY_GPU: "cpu", SHIMMY_DEMO_MODEL: "0", ...env() },
      stdin: "pipe",
      stdout: "pipe",
      stderr: "pipe",
    });
    let out = "";
    const decoder = new TextDecoder();
    const reading = (async () => {
      for await (const c of proc.stdout as ReadableStream<Uint8Array>) out += decoder.decode(c);
    })();
    const waitFor = async (pred: () => boolean, what: string) => {
      const deadline = Date.now() + 30_000;
      while (!pred()) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; got: ${JSON.stringify(out.slice(-400))}`);
        await Bun.sleep(25);
      }
    };
    const prompts = () => out.split(">>> ").length - 1;
    await waitFor(() => prompts() >= 1, "the first prompt");
    proc.stdin.write("hello\r");
    proc.stdin.flush();
    const start = out.length;
    await waitFor(() => out.length > start + 200, "streamed tokens");
    proc.stdin.write("\x03");
    proc.stdin.flush();
    await waitFor(() => out.includes(" ^C") && prompts() >= 2, "the answer to stop and a new prompt");
    proc.stdin.write("/exit\r");
    proc.stdin.flush();
    const code = await proc.exited;
    await reading;
    expect(code).toBe(0);
    expect(out).toContain("chatting with tiny");
  });
});
