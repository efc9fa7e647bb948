import { afterAll, beforeAll, describe, expect, test, setDefaultTimeout } from "bun:test";
import { createHash } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
    ChatMLChatWrapper,
    getLlama,
    LlamaChatSession,
    LlamaLogLevel,
    readGgufFileInfo,
    type Llama,
    type LlamaModel,
    type Token,
} from "node-llama-cpp";
import {
    BENCH_SHAPE,
    TINY_SHAPE,
    TokenType,
    benchModelSpec,
    buildSpmVocab,
    tinyLoraSpec,
    writeTinyLora,
    writeTinyModel,
} from "../src/gguf/presets.ts";
import { GgmlType, f16ToF32, f32ToF16, layoutGguf, quantizeQ8_0, tensorByteSize, writeGguf } from "../src/gguf/writer.ts";

// Loads models or spawns the CLI on 2 shared cores: allow 60 s per test (bun's default is 5 s).
setDefaultTimeout(60_000);

const PRINTABLE = /^[\x20-\x7e]+$/;

let dir: string;
beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "shimmy-gguf-test-"));
});
afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
});

const sha256 = (path: string): string => createHash("sha256").update(readFileSync(path)).digest("hex");

/** Checks that every multi-character token is reachable by SentencePiece's pairwise merges via its prefixes. */
function expectPrefixClosed(tokens: readonly string[], types: ArrayLike<number>): void {
    const normal = new Set(tokens.filter((_, i) => types[i] === TokenType.NORMAL));
    for (const t of normal) {
        for (let len = 1; len < t.length; len++) {
            const prefix = t.slice(0, len);
            if (!normal.has(prefix)) throw new Error(`token ${JSON.stringify(t)} lacks prefix ${JSON.stringify(prefix)}`);
        }
    }
}

describe("gguf writer", () => {
    test("f16 conversion and Q8_0 quantization", () => {
        for (const v of [0, 1, -2, 0.5, 65504, 1e-7, 3.14159, -0.0001]) {
            expect(Math.abs(f16ToF32(f32ToF16(v)) - v)).toBeLessThanOrEqual(Math.abs(v) * 1e-3 + 6e-8);
        }
        expect(f32ToF16(1)).toBe(0x3c00);
        expect(f32ToF16(-2)).toBe(0xc000);
        expect(f32ToF16(1e6)).toBe(0x7c00);
        const src = Float32Array.from({ length: 64 }, (_, i) => Math.sin(i) * (i < 32 ? 1 : 100));
        const q = quantizeQ8_0(src);
        expect(q.length).toBe(2 * 34);
        const view = new DataView(q.buffer);
        for (let b = 0; b < 2; b++) {
            const d = f16ToF32(view.getUint16(b * 34, true));
            for (let j = 0; j < 32; j++) {
                const value = d * view.getInt8(b * 34 + 2 + j);
                expect(Math.abs(value - src[b * 32 + j]!)).toBeLessThanOrEqual(d * 0.51 + 1e-6);
            }
        }
        expect(() => quantizeQ8_0(new Float32Array(33))).toThrow();
        expect(tensorByteSize(GgmlType.Q8_0, [64, 3])).toBe(6 * 34);
        expect(() => tensorByteSize(GgmlType.Q8_0, [48, 3])).toThrow();
    });

    test("layout: aligned data section and offsets; wrong data size fails and leaves no temp file", async () => {
        const file = {
            kv: [["general.alignment", { type: "u32", value: 32 }]] as const,
            tensors: [
                { name: "a", dims: [3], type: GgmlType.F32, data: new Float32Array(3) },
                { name: "b", dims: [32, 2], type: GgmlType.Q8_0, data: new Float32Array(64) },
                { name: "c", dims: [5], type: GgmlType.F16, data: new Float32Array(5) },
            ],
        };
        const layout = layoutGguf(file);
        expect(layout.header.length % 32).toBe(0);
        expect(layout.offsets).toEqual([0, 32, 128]);
        const sub = mkdtempSync(join(dir, "bad-"));
        const path = join(sub, "bad.gguf");
        writeFileSync(path, "old");
        const bad = { ...file, tensors: [{ name: "a", dims: [4], type: GgmlType.F32, data: new Float32Array(3) }] };
        await expect(writeGguf(path, bad)).rejects.toThrow(/expected 16/);
        expect(readdirSync(sub)).toEqual(["bad.gguf"]);
        expect(readFileSync(path, "utf8")).toBe("old");
    });

    test("tiny: same seed is byte-identical, another seed differs, under 1 MB", async () => {
        const a = join(dir, "a", "tiny.gguf");
        const b = join(dir, "b", "tiny.gguf");
        const c = join(dir, "c", "tiny.gguf");
        await writeTinyModel(a, { seed: 7 });
        await writeTinyModel(b, { seed: 7 });
        await writeTinyModel(c, { seed: 8 });
        expect(sha256(a)).toBe(sha256(b));
        expect(sha256(a)).not.toBe(sha256(c));
        expect(statSync(a).size).toBeLessThan(1_000_000);
        const l1 = join(dir, "a", "lora.gguf");
        const l2 = join(dir, "b", "lora.gguf");
        await writeTinyLora(l1, { seed: 3 });
        await writeTinyLora(l2, { seed: 3 });
        expect(sha256(l1)).toBe(sha256(l2));
    });

    test("tiny: header parses with node-llama-cpp's reader", async () => {
        const path = join(dir, "parse", "tiny.gguf");
        await writeTinyModel(path, { seed: 1, name: "parse-me", contextLength: 256 });
        const info = await readGgufFileInfo(path, { logWarnings: false });
        expect(info.version).toBe(3);
        const md = info.metadata as unknown as Record<string, Record<string, unknown>>;
        expect(md.general!.architecture).toBe("llama");
        expect(md.general!.name).toBe("parse-me");
        expect(md.general!.alignment).toBe(32);
        expect(md.llama!.context_length).toBe(256);
        expect(md.llama!.embedding_length).toBe(TINY_SHAPE.embd);
        const tokenizer = md.tokenizer as { ggml: { tokens: string[]; token_type: number[] }; chat_template: string };
        expect(tokenizer.ggml.tokens.length).toBe(512);
        expect(new Set(tokenizer.ggml.tokens).size).toBe(512);
        expect(tokenizer.ggml.tokens.slice(0, 4)).toEqual(["<unk>", "<s>", "</s>", "<0x00>"]);
        expect(tokenizer.chat_template).toContain("<|im_start|>");
        expectPrefixClosed(tokenizer.ggml.tokens, tokenizer.ggml.token_type);
        expect(info.tensorInfo!.length).toBe(3 + 9 * TINY_SHAPE.layers);
        for (const t of info.tensorInfo!) expect(Number(t.offset) % 32).toBe(0);
    });

    test("bench: metadata and layout without generating the weights", async () => {
        const spec = benchModelSpec({ seed: 1 });
        const layout = layoutGguf(spec); // header only; tensor data functions are never called
        expect(layout.fileSize).toBeGreaterThan(1.1e9);
        expect(layout.fileSize).toBeLessThan(1.2e9);
        const path = join(dir, "bench-header.gguf");
        writeFileSync(path, layout.header);
        const info = await readGgufFileInfo(path, { logWarnings: false });
        const md = info.metadata as unknown as Record<string, Record<string, unknown>>;
        expect(md.general!.file_type).toBe(7);
        expect(md.llama!.block_count).toBe(BENCH_SHAPE.layers);
        expect(md.llama!.attention).toMatchObject({ head_count: 32, head_count_kv: 4 });
        const tokens = (md.tokenizer as { ggml: { tokens: string[] } }).ggml.tokens;
        expect(tokens.length).toBe(32000);
        expect(new Set(tokens).size).toBe(32000);
        const vocab = buildSpmVocab(32000);
        expect(vocab.tokens).toEqual(tokens);
        expectPrefixClosed(vocab.tokens, vocab.types);
        for (let i = 0; i < vocab.tokens.length; i++) {
            if (vocab.types[i] === TokenType.NORMAL) expect(vocab.tokens[i]!.replaceAll("▁", " ")).toMatch(PRINTABLE);
        }
        const tensors = info.tensorInfo!;
        expect(tensors.length).toBe(3 + 9 * BENCH_SHAPE.layers);
        for (const t of tensors) {
            expect(Number(t.offset) % 32).toBe(0);
            expect(t.ggmlType as number).toBe(t.name.endsWith("norm.weight") ? GgmlType.F32 : GgmlType.Q8_0);
        }
        expect(tensors.find((t) => t.name === "blk.0.ffn_down.weight")!.dimensions.map(Number)).toEqual([5632, 2048]);
    });

    test("bench --layers: fewer blocks of the same width, its own name; a bad count is refused", () => {
        const spec = benchModelSpec({ seed: 1, layers: 6 });
        expect(spec.tensors.length).toBe(3 + 9 * 6);
        expect(spec.tensors.some((t) => t.name === "blk.5.ffn_down.weight")).toBe(true);
        expect(spec.tensors.some((t) => t.name === "blk.6.ffn_down.weight")).toBe(false);
        const kv = new Map(spec.kv as ReadonlyArray<readonly [string, unknown]>);
        expect(kv.get("llama.block_count")).toMatchObject({ value: 6 });
        expect(kv.get("general.name")).toMatchObject({ value: "shimmy-bench-6l-q8_0" });
        const size = layoutGguf(spec).fileSize;
        expect(size).toBeGreaterThan(380 * 2 ** 20);
        expect(size).toBeLessThan(420 * 2 ** 20);
        for (const layers of [0, 1.5, -2]) expect(() => benchModelSpec({ layers })).toThrow(/bad layer count/);
    });

    test("lora: tensor shapes are [in, rank] / [rank, out]", () => {
        const spec = tinyLoraSpec({ rank: 4 });
        const byName = new Map(spec.tensors.map((t) => [t.name, t.dims]));
        expect(byName.get("blk.0.attn_q.weight.lora_a")).toEqual([64, 4]);
        expect(byName.get("blk.0.attn_q.weight.lora_b")).toEqual([4, 64]);
        expect(byName.get("blk.1.ffn_down.weight.lora_a")).toEqual([128, 4]);
        expect(byName.get("blk.1.ffn_down.weight.lora_b")).toEqual([4, 64]);
    });

    test("cli: writes a preset; bad arguments exit 1", () => {
        const out = join(dir, "cli", "t.gguf");
        const ok = Bun.spawnSync([process.execPath, "scripts/gguf/cli.ts", "--preset", "tiny", "--out", out, "--seed", "7"], {
            cwd: join(import.meta.dir, ".."),
        });
        expect(ok.exitCode).toBe(0);
        expect(ok.stdout.toString()).toContain(out);
        expect(sha256(out)).toBe(sha256(join(dir, "a", "tiny.gguf")));
        for (const args of [["--preset", "huge"], ["--seed", "x"], ["--nope"], ["positional"], ["--preset", "bench", "--layers", "0"], ["--preset", "bench", "--layers", "x"], ["--preset", "bench", "--layers", "65"], ["--preset", "tiny", "--layers", "6"]]) {
            const bad = Bun.spawnSync([process.execPath, "scripts/gguf/cli.ts", ...args], { cwd: join(import.meta.dir, "..") });
            expect(bad.exitCode).toBe(1);
            expect(bad.stderr.toString()).toContain("error:");
        }
    });
});

describe("tiny model through node-llama-cpp", () => {
    let llama: Llama;
    let model: LlamaModel;
    let modelPath: string;
    let loraPath: string;

    beforeAll(async () => {
        modelPath = join(dir, "llm", "tiny.gguf");
        loraPath = join(dir, "llm", "tiny-lora.gguf");
        await writeTinyModel(modelPath, { seed: 1 });
        await writeTinyLora(loraPath, { seed: 1 });
        llama = await getLlama({ gpu: false, build: "never", skipDownload: true, logLevel: LlamaLogLevel.error });
        model = await llama.loadModel({ modelPath });
    });
    afterAll(async () => {
        await model?.dispose();
        await llama?.dispose();
    });

    async function greedy(m: LlamaModel, lora?: string, n = 32): Promise<{ text: string; distinct: number }> {
        const context = await m.createContext({
            threads: 1,
            contextSize: 256,
            ...(lora ? { lora: { adapters: [{ filePath: lora }] } } : {}),
        });
        try {
            const out: Token[] = [];
            for await (const token of context.getSequence().evaluate(m.tokenize("The cat"), { temperature: 0 })) {
                out.push(token);
                if (out.length >= n) break;
            }
            return { text: m.detokenize(out), distinct: new Set(out).size };
        } finally {
            await context.dispose();
        }
    }

    test("greedy output is printable, varied and deterministic", async () => {
        const a = await greedy(model);
        const b = await greedy(model);
        expect(a.text).toBe(b.text);
        expect(a.text).toMatch(PRINTABLE);
        expect(a.text.length).toBeGreaterThan(32);
        expect(a.distinct).toBeGreaterThanOrEqual(8);
    });

    test("another seed gives other output", async () => {
        const otherPath = join(dir, "llm", "tiny-seed2.gguf");
        await writeTinyModel(otherPath, { seed: 2 });
        const other = await llama.loadModel({ modelPath: otherPath });
        try {
            expect((await greedy(other)).text).not.toBe((await greedy(model)).text);
        } finally {
            await other.dispose();
        }
    });

    test("ChatML wrapper is selected and a chat turn stays printable", async () => {
        const context = await model.createContext({ threads: 1, contextSize: 512 });
        try {
            const session = new LlamaChatSession({ contextSequence: context.getSequence() });
            expect(session.chatWrapper).toBeInstanceOf(ChatMLChatWrapper);
            const reply = await session.prompt("Hello there", { maxTokens: 16, temperature: 0 });
            expect(reply.trim()).toMatch(PRINTABLE);
        } finally {
            await context.dispose();
        }
    });

    test("LoRA adapter loads and changes greedy output", async () => {
        const info = await readGgufFileInfo(loraPath, { logWarnings: false });
        const md = info.metadata as unknown as Record<string, Record<string, unknown>>;
        expect(md.general!.type).toBe("adapter");
        expect(md.adapter).toMatchObject({ type: "lora", lora: { alpha: 8 } });
        const base = await greedy(model);
        const adapted = await greedy(model, loraPath);
        expect(adapted.text).toMatch(PRINTABLE);
        expect(adapted.text).not.toBe(base.text);
        expect((await greedy(model, loraPath)).text).toBe(adapted.text);
    });

    test("rewriting a loaded model replaces the file (new inode) and the loaded model keeps working", async () => {
        const before = await greedy(model);
        const inode = statSync(modelPath).ino;
        await writeTinyModel(modelPath, { seed: 5 });
        expect(statSync(modelPath).ino).not.toBe(inode);
        expect((await greedy(model)).text).toBe(before.text);
    });
});
