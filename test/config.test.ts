/** Needs no model: config, naming, registry, bind parsing, version. */
import { describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { configFrom } from "../src/cli/args.ts";
import { loadConfig, physicalCores } from "../src/config.ts";
import { ModelRegistry, modelNameFromPath } from "../src/engine/registry.ts";
import { parseBind } from "../src/server/listen.ts";
import { sseEvent } from "../src/server/http.ts";
import { VERSION } from "../src/version.ts";
import pkg from "../package.json";

describe("config", () => {
  test("defaults", () => {
    const c = loadConfig({}, {});
    expect(c).toMatchObject({ bind: "auto", ctxSize: 4096, gpu: "auto", chatTemplate: "auto", demoModel: true, modelDirs: [] });
    expect(c.threads).toBe(physicalCores());
    expect(c.threads).toBeGreaterThan(0);
  });

  test("env is read, flags win over env", () => {
    const env = { SHIMMY_THREADS: "3", SHIMMY_CTX_SIZE: "1024", SHIMMY_BIND_ADDRESS: "0.0.0.0:9000", SHIMMY_GPU: "cpu", SHIMMY_MODEL_PATHS: `/a${path.delimiter}/b`, SHIMMY_BASE_GGUF: "/m.gguf", SHIMMY_LORA_GGUF: "/l.gguf", SHIMMY_DEMO_MODEL: "0", SHIMMY_CHAT_TEMPLATE: "llama3" };
    expect(loadConfig({}, env)).toMatchObject({ threads: 3, ctxSize: 1024, bind: "0.0.0.0:9000", gpu: "cpu", modelDirs: ["/a", "/b"], baseGguf: "/m.gguf", loraGguf: "/l.gguf", demoModel: false, chatTemplate: "llama3" });
    expect(loadConfig({ threads: "1", ctxSize: "512", bind: "127.0.0.1:1", modelDirs: ["/c"] }, env)).toMatchObject({ threads: 1, ctxSize: 512, bind: "127.0.0.1:1", modelDirs: ["/c", "/a", "/b"] });
  });

  test("playground and full decode batches: on by default; SHIMMY_PLAYGROUND=0 / --no-playground and SHIMMY_FULL_BATCHES=0 turn them off", () => {
    expect(loadConfig({}, {})).toMatchObject({ playground: true, fullBatches: true });
    expect(loadConfig({}, { SHIMMY_PLAYGROUND: "0", SHIMMY_FULL_BATCHES: "off" })).toMatchObject({ playground: false, fullBatches: false });
    expect(loadConfig({ playground: false }, {})).toMatchObject({ playground: false, fullBatches: true });
    expect(configFrom({ "no-playground": true }).playground).toBe(false);
  });

  test("persistent threadpools: on by default, SHIMMY_THREADPOOL=0 turns them off; SHIMMY_THREADPOOL_POLL is 0..100 (default 0)", () => {
    expect(loadConfig({}, {})).toMatchObject({ threadpool: true, threadpoolPoll: 0, directDecode: true });
    expect(loadConfig({}, { SHIMMY_DIRECT_DECODE: "0" })).toMatchObject({ directDecode: false });
    expect(loadConfig({}, {})).toMatchObject({ syncGreedy: true, mmap: "auto", hugepages: true });
    expect(loadConfig({}, { SHIMMY_HUGEPAGES: "0" })).toMatchObject({ hugepages: false });
    expect(loadConfig({}, {})).toMatchObject({ alignWeights: "auto" });
    expect(loadConfig({}, { SHIMMY_ALIGN_WEIGHTS: "0" })).toMatchObject({ alignWeights: false });
    expect(loadConfig({}, { SHIMMY_ALIGN_WEIGHTS: "1" })).toMatchObject({ alignWeights: true });
    expect(() => loadConfig({}, { SHIMMY_ALIGN_WEIGHTS: "32" })).toThrow("SHIMMY_ALIGN_WEIGHTS must be 0, 1 or auto");
    expect(loadConfig({}, { SHIMMY_MMAP: "0" })).toMatchObject({ mmap: false });
    expect(loadConfig({}, { SHIMMY_MMAP: "1" })).toMatchObject({ mmap: true });
    expect(loadConfig({}, { SHIMMY_MMAP: "auto" })).toMatchObject({ mmap: "auto" });
    expect(loadConfig({ mmap: false }, { SHIMMY_MMAP: "1" })).toMatchObject({ mmap: false });
    expect(() => loadConfig({}, { SHIMMY_MMAP: "sometimes" })).toThrow(/SHIMMY_MMAP must be 0, 1 or auto/);
    expect(loadConfig({}, { SHIMMY_SYNC_GREEDY: "0" })).toMatchObject({ syncGreedy: false });
    expect(loadConfig({}, { SHIMMY_THREADPOOL: "0", SHIMMY_THREADPOOL_POLL: "50" })).toMatchObject({ threadpool: false, threadpoolPoll: 50 });
    expect(() => loadConfig({}, { SHIMMY_THREADPOOL_POLL: "101" })).toThrow(/SHIMMY_THREADPOOL_POLL/);
    expect(() => loadConfig({}, { SHIMMY_THREADPOOL_POLL: "lots" })).toThrow(/SHIMMY_THREADPOOL_POLL/);
    expect(loadConfig({}, {})).toMatchObject({ backgroundNice: 19 });
    expect(loadConfig({}, { SHIMMY_BACKGROUND_NICE: "0" })).toMatchObject({ backgroundNice: 0 });
    expect(loadConfig({}, { SHIMMY_BACKGROUND_NICE: "10" })).toMatchObject({ backgroundNice: 10 });
    expect(() => loadConfig({}, { SHIMMY_BACKGROUND_NICE: "20" })).toThrow("SHIMMY_BACKGROUND_NICE must be an integer from 0 to 19, got '20'");
    expect(() => loadConfig({}, { SHIMMY_BACKGROUND_NICE: "-5" })).toThrow(/SHIMMY_BACKGROUND_NICE/);
    expect(loadConfig({}, {})).toMatchObject({ pinThreads: "auto" });
    expect(loadConfig({}, { SHIMMY_PIN_THREADS: "0" })).toMatchObject({ pinThreads: false });
    expect(loadConfig({}, { SHIMMY_PIN_THREADS: "on" })).toMatchObject({ pinThreads: true });
    expect(() => loadConfig({}, { SHIMMY_PIN_THREADS: "maybe" })).toThrow(/SHIMMY_PIN_THREADS must be 0, 1 or auto/);
    expect(loadConfig({}, {})).toMatchObject({ syncDecode: "auto" });
    expect(loadConfig({}, { SHIMMY_SYNC_DECODE: "off" })).toMatchObject({ syncDecode: false });
    expect(loadConfig({}, { SHIMMY_SYNC_DECODE: "1" })).toMatchObject({ syncDecode: true });
    expect(() => loadConfig({}, { SHIMMY_SYNC_DECODE: "fast" })).toThrow(/SHIMMY_SYNC_DECODE must be 0, 1 or auto/);
    expect(loadConfig({}, {})).toMatchObject({ gatherMs: 2 });
    expect(loadConfig({}, { SHIMMY_GATHER_MS: "0" })).toMatchObject({ gatherMs: 0 });
    expect(loadConfig({}, { SHIMMY_GATHER_MS: "0.5" })).toMatchObject({ gatherMs: 0.5 });
    expect(() => loadConfig({}, { SHIMMY_GATHER_MS: "500" })).toThrow(/SHIMMY_GATHER_MS/);
    expect(() => loadConfig({}, { SHIMMY_GATHER_MS: "soon" })).toThrow(/SHIMMY_GATHER_MS/);
    expect(loadConfig({}, {})).toMatchObject({ streamIntervalMs: 30 });
    expect(loadConfig({}, { SHIMMY_STREAM_INTERVAL_MS: "0" })).toMatchObject({ streamIntervalMs: 0 });
    expect(loadConfig({}, { SHIMMY_STREAM_INTERVAL_MS: "100" })).toMatchObject({ streamIntervalMs: 100 });
    expect(() => loadConfig({}, { SHIMMY_STREAM_INTERVAL_MS: "-1" })).toThrow(/SHIMMY_STREAM_INTERVAL_MS/);
    expect(() => loadConfig({}, { SHIMMY_STREAM_INTERVAL_MS: "5000" })).toThrow(/SHIMMY_STREAM_INTERVAL_MS/);
    expect(() => loadConfig({}, { SHIMMY_STREAM_INTERVAL_MS: "soon" })).toThrow(/SHIMMY_STREAM_INTERVAL_MS/);
  });

  test("chat templates: a default and per-model items; built-in names or Jinja files", () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "shimmy-tpl-"));
    try {
      const file = path.join(dir, "t.jinja");
      writeFileSync(file, "{{ messages }}");
      expect(loadConfig({}, { SHIMMY_CHAT_TEMPLATE: `chatml,Phi-3=llama3,x=${file}` })).toMatchObject({ chatTemplate: "chatml", chatTemplates: { "phi-3": "llama3", x: file } });
      expect(loadConfig({ chatTemplate: file }, {})).toMatchObject({ chatTemplate: file, chatTemplates: {} });
      expect(loadConfig({}, {})).toMatchObject({ chatTemplate: "auto", chatTemplates: {}, maxQueue: 64 });
      expect(() => loadConfig({ chatTemplate: "alpaca" }, {})).toThrow(/--chat-template: 'alpaca' is neither one of auto, chatml, llama3, openchat nor a readable Jinja template file/);
      expect(() => loadConfig({}, { SHIMMY_CHAT_TEMPLATE: "m=/no/such.jinja" })).toThrow(/SHIMMY_CHAT_TEMPLATE/);
      expect(loadConfig({}, { SHIMMY_MAX_QUEUE: "3" }).maxQueue).toBe(3);
      expect(() => loadConfig({}, { SHIMMY_MAX_QUEUE: "-1" })).toThrow(/SHIMMY_MAX_QUEUE/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("serving settings: parallel, queue, keep-alive durations, loaded models, shutdown grace, LoRA list", () => {
    expect(loadConfig({}, {})).toMatchObject({ parallel: 4, maxQueue: 64, keepAliveMs: 300_000, maxLoadedModels: 3, shutdownGraceMs: 10_000, loras: [] });
    const c = loadConfig({}, { SHIMMY_PARALLEL: "2", SHIMMY_KEEP_ALIVE: "30s", SHIMMY_MAX_LOADED_MODELS: "1", SHIMMY_SHUTDOWN_GRACE: "250ms", SHIMMY_LORA_GGUF: "a.gguf,b.gguf:0.5" });
    expect(c).toMatchObject({ parallel: 2, keepAliveMs: 30_000, maxLoadedModels: 1, shutdownGraceMs: 250, loras: [{ path: "a.gguf", scale: 1 }, { path: "b.gguf", scale: 0.5 }] });
    expect(loadConfig({ keepAlive: "-1" }, {}).keepAliveMs).toBe(-1);
    expect(loadConfig({ keepAlive: "0" }, {}).keepAliveMs).toBe(0);
    expect(loadConfig({ keepAlive: "1h" }, {}).keepAliveMs).toBe(3_600_000);
    expect(loadConfig({ keepAlive: "90" }, {}).keepAliveMs).toBe(90_000);
    expect(() => loadConfig({ keepAlive: "soon" }, {})).toThrow(/--keep-alive must be a duration/);
    expect(() => loadConfig({ parallel: "0" }, {})).toThrow(/--parallel must be an integer from 1/);
  });

  test("invalid values are refused with the setting's name", () => {
    expect(() => loadConfig({ threads: "0" }, {})).toThrow(/--threads must be an integer from 1/);
    expect(() => loadConfig({}, { SHIMMY_THREADS: "lots" })).toThrow(/SHIMMY_THREADS/);
    expect(() => loadConfig({ ctxSize: "10" }, {})).toThrow(/--ctx-size/);
    expect(() => loadConfig({}, { SHIMMY_GPU: "tpu" })).toThrow(/SHIMMY_GPU must be one of auto, cpu/);
    expect(() => loadConfig({}, { SHIMMY_CHAT_TEMPLATE: "alpaca" })).toThrow(/SHIMMY_CHAT_TEMPLATE/);
  });
});

describe("model names and registry", () => {
  test("name = file stem, lowercased, _ and spaces to -", () => {
    expect(modelNameFromPath("/x/Phi-3-mini-4k-instruct-q4.gguf")).toBe("phi-3-mini-4k-instruct-q4");
    expect(modelNameFromPath("My_Model v2.Q8_0.GGUF")).toBe("my-model-v2.q8-0");
  });

  test("sources, precedence, naming, collisions, adapters (by header), split sets", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "shimmy-reg-"));
    try {
      const files = ["models/flora-7b.gguf", "models/my_adapter.gguf", "models/A_Model.gguf", "models/notes.txt", "x-lora.gguf", "models/big-00001-of-00002.gguf", "models/big-00002-of-00002.gguf", "models/half-00001-of-00002.gguf", "base.gguf", "extra.gguf", "other/a_model.gguf", "models/broken.gguf"];
      for (const f of files) {
        mkdirSync(path.dirname(path.join(dir, f)), { recursive: true });
        writeFileSync(path.join(dir, f), "x");
      }
      // Header facts without real GGUF files: adapters are the files named so; "broken" fails.
      const readMeta = async (file: string) => {
        if (file.includes("broken")) throw new Error(`${file} is not a readable GGUF file`);
        return { architecture: "llama", parameters: 1, fileType: "F32", chatTemplate: true, adapter: /my_adapter|x-lora/.test(file), sizeBytes: 1 };
      };
      const roots = [{ kind: "dir" as const, path: path.join(dir, "models") }, { kind: "dir" as const, path: path.join(dir, "other") }];
      const reg = new ModelRegistry({ baseGguf: "base.gguf", loras: [{ path: "x-lora.gguf", scale: 1 }], modelPath: "extra.gguf", modelDirs: ["other"] }, dir, { roots, readMeta });
      const list = await reg.list();
      expect(list.map((e) => [e.name, e.source])).toEqual([
        ["base", "env"],
        ["extra", "model-path"],
        ["a-model", "dir"],
        ["big", "dir"],
        ["broken", "dir"],
        ["flora-7b", "dir"],
        ["half", "dir"],
        ["a-model@dir", "dir"],
      ]);
      // my_adapter.gguf is an adapter by its header: not a model; attached to the llama models beside it.
      expect(list.find((e) => e.name === "a-model")!.loras).toEqual([{ path: path.join(dir, "models/my_adapter.gguf"), scale: 1 }]);
      // The configured adapter applies to --model-path when given, else to SHIMMY_BASE_GGUF.
      expect(list[0]!.loras).toBeUndefined();
      expect(list[1]!.loras).toEqual([{ path: path.join(dir, "x-lora.gguf"), scale: 1 }]);
      expect((await new ModelRegistry({ baseGguf: "base.gguf", loras: [{ path: "x-lora.gguf", scale: 0.5 }], modelDirs: [] }, dir, { roots: [], readMeta }).list())[0]!.loras).toEqual([{ path: path.join(dir, "x-lora.gguf"), scale: 0.5 }]);
      // Split sets: one model at the first part; an incomplete set carries a problem.
      const big = list.find((e) => e.name === "big")!;
      expect(big.path).toBe(path.join(dir, "models/big-00001-of-00002.gguf"));
      expect(big.shards).toHaveLength(2);
      expect(big.problem).toBeUndefined();
      expect(list.find((e) => e.name === "half")!.problem).toMatch(/incomplete split model: part 2 of 2 missing/);
      expect(list.find((e) => e.name === "broken")!.problem).toContain("is not a readable GGUF file");
      expect(list.find((e) => e.name === "a-model")!.path).toBe(path.join(dir, "models/A_Model.gguf"));
      expect((await reg.get("A_Model"))?.name).toBe("a-model");
      expect((await reg.get("a-model.gguf"))?.name).toBe("a-model");
      expect(await reg.get("missing")).toBeUndefined();
      rmSync(path.join(dir, "extra.gguf"));
      expect((await reg.list({ refresh: true })).map((e) => e.name)).not.toContain("extra");
      // A file dropped into a root is found by name at once.
      writeFileSync(path.join(dir, "other", "new_one.gguf"), "x");
      expect((await reg.get("new-one"))?.source).toBe("dir");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("wire helpers", () => {
  test("parseBind", () => {
    expect(parseBind("127.0.0.1:8080")).toEqual({ hostname: "127.0.0.1", port: 8080 });
    expect(parseBind(":9")).toEqual({ hostname: "127.0.0.1", port: 9 });
    expect(parseBind("[::1]:80")).toEqual({ hostname: "::1", port: 80 });
    for (const bad of ["garbage", "host:", "host:99999", "1.2.3.4"]) expect(() => parseBind(bad)).toThrow(/invalid bind address/);
  });

  test("SSE events split newlines into data lines", () => {
    expect(sseEvent("a\nb").toSSE()).toBe("data: a\ndata: b\n\n");
    expect(sseEvent("\n").toSSE()).toBe("data: \ndata: \n\n");
    expect(sseEvent("x", "error").toSSE()).toBe("event: error\ndata: x\n\n");
  });

  test("version matches package.json", () => {
    expect(VERSION).toBe(pkg.version);
  });
});
