/**
 * Progress you can see: the model-load progress reporter (a bar on a terminal, one line otherwise)
 * and `shimmy serve`'s start-up banner, checked on a real server process.
 */
import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { loadProgress } from "../src/cli/args.ts";
import { banner } from "../src/cli/commands/serve.ts";
import type { ModelInfo } from "../src/engine/types.ts";
import { writeTinyModel } from "../src/gguf/presets.ts";
import { MAIN } from "./helpers.ts";

setDefaultTimeout(60_000);

const dir = mkdtempSync(path.join(os.tmpdir(), "shimmy-progress-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function fakeStream(isTTY: boolean) {
  const out: string[] = [];
  return { out, stream: { isTTY, write: (s: string) => (out.push(s), true) } as unknown as NodeJS.WriteStream };
}

describe("load progress", () => {
  test("on a terminal: a redrawn bar, then one 'loaded' line", () => {
    const { out, stream } = fakeStream(true);
    const report = loadProgress(stream);
    for (const f of [0, 0.25, 0.5, 1, 1]) report("m", f);
    expect(out[1]).toContain("loading m [########......................] 25%");
    expect(out.every((l) => l.startsWith("\r\x1b[2K"))).toBe(true);
    expect(out.at(-1)).toMatch(/^\r\x1b\[2Kloaded m in \d+\.\d s\n$/);
    expect(out.filter((l) => l.includes("\n"))).toHaveLength(1);
  });

  test("not a terminal: a single 'loading NAME' line per load", () => {
    const { out, stream } = fakeStream(false);
    const lines: string[] = [];
    const write = process.stderr.write;
    process.stderr.write = ((s: string) => (lines.push(s), true)) as typeof process.stderr.write;
    try {
      const report = loadProgress(stream);
      for (const f of [0, 0.5, 1, 1]) report("m", f);
      for (const f of [0, 1]) report("m", f); // loaded again later
    } finally {
      process.stderr.write = write;
    }
    expect(out).toEqual([]);
    expect(lines).toEqual(["loading m\n", "loading m\n"]);
  });
});

describe("serve banner", () => {
  test("names version, URL, backend, models and where, every API's path, and auth", () => {
    const models = [
      { name: "a", path: "/m/a.gguf", source: "dir", sizeBytes: 1, loaded: false },
      { name: "b", path: "/other/b.gguf", source: "dir", sizeBytes: 1, loaded: false, problem: "truncated" },
    ] as ModelInfo[];
    const text = banner({ url: "http://0.0.0.0:9", models, backend: { backend: "cuda", threads: 4, gpuOffloading: true, llamaCppRelease: "b1", threadpool: "persistent" }, threads: 4, ctxSize: 2048, keys: 2, loopback: false });
    expect(text).toMatch(/^shimmy \d+\.\d+\.\d+/);
    expect(text).toContain("cuda (GPU offload)");
    expect(text).toContain("threads 4 (persistent pool), ctx 2048");
    expect(text).toMatch(/models +a$/m);
    expect(text).toContain("b (truncated)");
    expect(text).toContain("/m");
    expect(text).toContain("/other");
    for (const p of ["/api/generate", "ws://0.0.0.0:9/ws/generate", "http://0.0.0.0:9/v1", "/api/chat", "/v1/messages"]) expect(text).toContain(p);
    expect(text).toContain("API key required (2 keys)");
    expect(text).toMatch(/playground http:\/\/0\.0\.0\.0:9\//);
    expect(banner({ url: "http://x:9", models: [], backend: undefined, threads: 1, ctxSize: 1, keys: 0, loopback: true, playground: false })).not.toContain("playground");
    expect(banner({ url: "http://0.0.0.0:9", models: [], backend: undefined, threads: 1, ctxSize: 1, keys: 0, loopback: false })).toContain("NONE on a non-loopback address");
  });

  test("a real `shimmy serve` prints the banner on stderr and the URL on stdout; a public bind without a key warns", async () => {
    await writeTinyModel(path.join(dir, "tiny.gguf"), { seed: 1 });
    const proc = Bun.spawn(["bun", MAIN, "serve", "--bind", "0.0.0.0:0"], {
      env: { ...process.env, SHIMMY_THREADS: "1", SHIMMY_GPU: "cpu", SHIMMY_DEMO_MODEL: "0", SHIMMY_MODEL_PATHS: dir },
      stdout: "pipe",
      stderr: "pipe",
    });
    try {
      let err = "";
      const decoder = new TextDecoder();
      for await (const chunk of proc.stderr as ReadableStream<Uint8Array>) {
        err += decoder.decode(chunk);
        if (/^ {2}auth .*$/m.test(err)) break;
      }
      expect(err).toContain("not loopback) with no API key");
      expect(err).toMatch(/backend +cpu/);
      expect(err).toMatch(/models +tiny$/m);
      expect(err).toContain(dir);
      expect(err).toContain("NONE on a non-loopback address");
      expect(err).toMatch(/playground http:\/\/0\.0\.0\.0:\d+\//);
      const first = await (proc.stdout as ReadableStream<Uint8Array>).getReader().read();
      expect(decoder.decode(first.value)).toMatch(/^shimmy listening on http:\/\/0\.0\.0\.0:\d+/);
    } finally {
      proc.kill();
      await proc.exited;
    }
  });
});
