/**
 * Deterministic fixture models written with the GGUF writer: a tiny "llama" chat model for tests, a
 * TinyLlama-1.1B-shaped Q8_0 model for benchmarks, and a LoRA adapter for the tiny model.
 *
 * Weights are random (seeded), so the models produce nonsense, but real nonsense: the vocabulary is a valid
 * SentencePiece ("llama") vocabulary, the chat template is ChatML, and greedy decoding emits only NORMAL
 * (printable) tokens because the `output.weight` rows of every other token are zero.
 */
import {
    GgmlType,
    Q8_0_BLOCK_BYTES,
    Q8_0_BLOCK_SIZE,
    f32ToF16,
    kv,
    writeGguf,
    type GgmlTypeId,
    type GgufFile,
    type GgufTensor,
    type GgufValue,
    type TensorChunk,
    type WriteGgufResult,
} from "./writer.ts";

/** `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`). */
export const TokenType = {
    NORMAL: 1,
    UNKNOWN: 2,
    CONTROL: 3,
    USER_DEFINED: 4,
    UNUSED: 5,
    BYTE: 6,
} as const;

/** The standard ChatML Jinja template; node-llama-cpp resolves it to its `ChatMLChatWrapper`. */
export const CHATML_TEMPLATE =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}" +
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/** Hyperparameters of a "llama" architecture model. */
export interface LlamaShape {
    readonly vocabSize: number;
    readonly embd: number;
    readonly layers: number;
    readonly heads: number;
    readonly kvHeads: number;
    readonly ff: number;
    readonly contextLength: number;
    readonly ropeFreqBase: number;
    readonly rmsEps: number;
}

/** The tiny test model: vocab 512, embd 64, 2 layers, 4 heads (4 kv), ff 128, ctx 512. */
export const TINY_SHAPE: LlamaShape = {
    vocabSize: 512,
    embd: 64,
    layers: 2,
    heads: 4,
    kvHeads: 4,
    ff: 128,
    contextLength: 512,
    ropeFreqBase: 10000,
    rmsEps: 1e-5,
};

/** TinyLlama-1.1B's shape: vocab 32000, embd 2048, 22 layers, 32 heads / 4 kv heads, ff 5632, ctx 2048. */
export const BENCH_SHAPE: LlamaShape = {
    vocabSize: 32000,
    embd: 2048,
    layers: 22,
    heads: 32,
    kvHeads: 4,
    ff: 5632,
    contextLength: 2048,
    ropeFreqBase: 10000,
    rmsEps: 1e-5,
};

export const UNK_ID = 0;
export const BOS_ID = 1;
export const EOS_ID = 2;
export const IM_START = "<|im_start|>";
export const IM_END = "<|im_end|>";

/** Common English words; each enters the vocabulary as "▁word" together with all its prefixes. */
const WORDS = (
    "the of and to in is it you that he was for on are with as his they be at one have this from or had by not " +
    "but what some we can out other were all there when up use your how said an each she which do their time if " +
    "will way about many then them write would like so these her long make thing see him two has look more day " +
    "could go come did number sound no most people my over know water than call first who may down side been now " +
    "find any new work part take get place made live where after back little only round man year came show every " +
    "good me give our under name very through just form sentence great think say help low line differ turn cause " +
    "much mean before move right boy old too same tell does set three want air well also play small end put home " +
    "read hand port large spell add even land here must big high such follow act why ask men change went light " +
    "kind off need house picture try us again animal point mother world near build self earth father head stand " +
    "own page should country found answer school grow study still learn plant cover food sun four between state " +
    "keep eye never last let thought city tree cross farm hard start might story saw far sea draw left late run " +
    "while press close night real life few north open seem together next white children begin got walk example " +
    "ease paper group always music those both mark often letter until mile river car feet care second book carry " +
    "took science eat room friend began idea fish mountain stop once base hear horse cut sure watch color face wood " +
    "main enough plain girl usual young ready above ever red list though feel talk bird soon body dog family direct " +
    "pose leave song measure door product black short numeral class wind question happen complete ship area half " +
    "rock order fire south problem piece told knew pass since top whole king space heard best hour better true " +
    "during hundred five remember step early hold west ground interest reach fast verb sing listen six table travel " +
    "less morning ten simple several vowel toward war lay against pattern slow center love person money serve " +
    "appear road map rain rule govern pull cold notice voice unit power town fine certain fly fall lead cry dark " +
    "machine note wait plan figure star box noun field rest correct able pound done beauty drive stood contain front " +
    "teach week final gave green quick develop ocean warm free minute strong special mind behind clear tail produce " +
    "fact street inch multiply nothing course stay wheel full force blue object decide surface deep moon island foot " +
    "system busy test record boat common gold possible plane stead dry wonder laugh thousand ago ran check game shape " +
    "equate hot miss brought heat snow tire bring yes distant fill east paint language among"
).split(" ");

export interface SpmVocab {
    readonly tokens: string[];
    readonly scores: Float32Array;
    readonly types: Int32Array;
}

function* paddingPieces(): Generator<string> {
    const lower = "abcdefghijklmnopqrstuvwxyz";
    const upper = lower.toUpperCase();
    const digits = "0123456789";
    for (const c of upper) yield `▁${c}`;
    for (const c of digits) yield `▁${c}`;
    for (const a of lower) for (const b of lower) yield `${a}${b}`;
    for (const a of lower) for (const b of lower) yield `▁${a}${b}`;
    for (const a of upper) for (const b of lower) yield `▁${a}${b}`;
    for (const a of digits) for (const b of digits) yield `${a}${b}`;
    for (const a of lower) for (const b of lower) for (const c of lower) yield `▁${a}${b}${c}`;
    for (const a of lower) for (const b of lower) for (const c of lower) yield `${a}${b}${c}`;
    for (const a of upper) for (const b of lower) for (const c of lower) yield `▁${a}${b}${c}`;
}

/**
 * Builds a SentencePiece ("llama") vocabulary of exactly `size` tokens:
 * `<unk>`, `<s>`, `</s>`, the 256 byte tokens, the ChatML markers, `▁`, printable ASCII, `▁a`..`▁z`,
 * then words (each with every prefix, so SentencePiece's pairwise merges can reach it), then generated
 * printable pieces (again prefix-closed) until the size is reached. Every token is unique.
 */
export function buildSpmVocab(size: number, words: readonly string[] = WORDS): SpmVocab {
    const tokens: string[] = [];
    const types: number[] = [];
    const seen = new Set<string>();
    const add = (text: string, type: number): void => {
        if (seen.has(text)) throw new Error(`duplicate token ${JSON.stringify(text)}`);
        seen.add(text);
        tokens.push(text);
        types.push(type);
    };
    add("<unk>", TokenType.UNKNOWN);
    add("<s>", TokenType.CONTROL);
    add("</s>", TokenType.CONTROL);
    for (let b = 0; b < 256; b++) add(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`, TokenType.BYTE);
    add(IM_START, TokenType.CONTROL);
    add(IM_END, TokenType.CONTROL);
    add("▁", TokenType.NORMAL);
    for (let c = 0x21; c <= 0x7e; c++) add(String.fromCharCode(c), TokenType.NORMAL);
    for (let c = 0x61; c <= 0x7a; c++) add(`▁${String.fromCharCode(c)}`, TokenType.NORMAL);
    if (tokens.length > size) throw new Error(`vocabulary size ${size} is below the ${tokens.length} base tokens`);

    for (const word of words) {
        const piece = `▁${word}`;
        const missing: string[] = [];
        for (let len = 2; len <= piece.length; len++) {
            const prefix = piece.slice(0, len);
            if (!seen.has(prefix)) missing.push(prefix);
        }
        if (tokens.length + missing.length > size) continue;
        for (const p of missing) add(p, TokenType.NORMAL);
    }
    if (tokens.length < size) {
        for (const piece of paddingPieces()) {
            if (tokens.length >= size) break;
            if (!seen.has(piece)) add(piece, TokenType.NORMAL);
        }
    }
    if (tokens.length < size) throw new Error(`cannot generate ${size} unique tokens`);

    const scores = new Float32Array(size);
    for (let i = 0; i < size; i++) scores[i] = types[i] === TokenType.NORMAL ? -i : 0;
    return { tokens, scores, types: Int32Array.from(types) };
}

// ---------------------------------------------------------------------------------------------------------
// Seeded randomness: splitmix32 to derive one 32-bit state per tensor (from the seed and the tensor's name),
// xorshift32 to fill typed arrays quickly.

function splitmix32(x: number): number {
    x = (x + 0x9e3779b9) | 0;
    x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
    x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
    return (x ^ (x >>> 16)) >>> 0;
}

/** A nonzero 32-bit PRNG state derived from a seed and a tensor name. */
export function tensorSeed(seed: number, name: string): number {
    let h = splitmix32(seed >>> 0) ^ 0x811c9dc5;
    for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
    const s = splitmix32(splitmix32(h) ^ Math.floor(seed / 0x100000000));
    return s === 0 ? 0x6d2b79f5 : s;
}

/** Fills `out` with values uniform in [-amp, amp), continuing from `state`; returns the new state. */
function fillUniform(out: Float32Array, state: number, amp: number): number {
    let x = state | 0;
    const k = (2 * amp) / 4294967296;
    for (let i = 0; i < out.length; i++) {
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        out[i] = (x >>> 0) * k - amp;
    }
    return x;
}

function uniformTensor(seed: number, name: string, length: number, amp: number): Float32Array {
    const out = new Float32Array(length);
    fillUniform(out, tensorSeed(seed, name), amp);
    return out;
}

/** Standard deviation -> half-width of a uniform distribution with that deviation. */
const uniformAmp = (std: number): number => std * Math.sqrt(3);

/**
 * Yields random Q8_0 data: `nBlocks` blocks whose int8 quants are uniform in [-128, 127] and whose scale is
 * `d` (so values are uniform in about ±128·d). Rows flagged in `zeroRows` (a row = `blocksPerRow` blocks) are
 * all zero. The chunk buffer is reused between yields: the writer consumes each chunk before asking for more.
 */
function* randomQ8_0(
    nBlocks: number,
    state: number,
    d: number,
    blocksPerRow: number,
    zeroRows?: Uint8Array,
): Generator<Uint8Array> {
    const chunkBlocks = 1 << 17; // 4.25 MiB; multiple of 2 so the byte length is a multiple of 4
    const buf = new Uint8Array(chunkBlocks * Q8_0_BLOCK_BYTES);
    const words = new Uint32Array(buf.buffer);
    const dBits = f32ToF16(d);
    const dLo = dBits & 0xff;
    const dHi = dBits >>> 8;
    let x = state | 0;
    for (let first = 0; first < nBlocks; first += chunkBlocks) {
        const n = Math.min(chunkBlocks, nBlocks - first);
        const nWords = Math.ceil((n * Q8_0_BLOCK_BYTES) / 4);
        for (let i = 0; i < nWords; i++) {
            x ^= x << 13;
            x ^= x >>> 17;
            x ^= x << 5;
            words[i] = x;
        }
        for (let b = 0; b < n; b++) {
            const o = b * Q8_0_BLOCK_BYTES;
            if (zeroRows !== undefined && zeroRows[Math.floor((first + b) / blocksPerRow)] === 1) {
                buf.fill(0, o, o + Q8_0_BLOCK_BYTES);
            } else {
                buf[o] = dLo;
                buf[o + 1] = dHi;
            }
        }
        yield n === chunkBlocks ? buf : buf.subarray(0, n * Q8_0_BLOCK_BYTES);
    }
}

// ---------------------------------------------------------------------------------------------------------

function llamaMetadata(
    shape: LlamaShape,
    vocab: SpmVocab,
    name: string,
    fileType: number,
): Array<[string, GgufValue]> {
    return [
        ["general.architecture", kv.str("llama")],
        ["general.name", kv.str(name)],
        ["general.alignment", kv.u32(32)],
        ["general.file_type", kv.u32(fileType)],
        ["general.quantization_version", kv.u32(2)],
        ["llama.vocab_size", kv.u32(shape.vocabSize)],
        ["llama.context_length", kv.u32(shape.contextLength)],
        ["llama.embedding_length", kv.u32(shape.embd)],
        ["llama.block_count", kv.u32(shape.layers)],
        ["llama.feed_forward_length", kv.u32(shape.ff)],
        ["llama.attention.head_count", kv.u32(shape.heads)],
        ["llama.attention.head_count_kv", kv.u32(shape.kvHeads)],
        ["llama.rope.dimension_count", kv.u32(shape.embd / shape.heads)],
        ["llama.rope.freq_base", kv.f32(shape.ropeFreqBase)],
        ["llama.attention.layer_norm_rms_epsilon", kv.f32(shape.rmsEps)],
        ["tokenizer.ggml.model", kv.str("llama")],
        ["tokenizer.ggml.tokens", kv.strArray(vocab.tokens)],
        ["tokenizer.ggml.scores", kv.f32Array(vocab.scores)],
        ["tokenizer.ggml.token_type", kv.i32Array(vocab.types)],
        ["tokenizer.ggml.bos_token_id", kv.u32(BOS_ID)],
        ["tokenizer.ggml.eos_token_id", kv.u32(EOS_ID)],
        ["tokenizer.ggml.unknown_token_id", kv.u32(UNK_ID)],
        ["tokenizer.ggml.padding_token_id", kv.u32(UNK_ID)],
        ["tokenizer.ggml.add_bos_token", kv.bool(true)],
        ["tokenizer.ggml.add_eos_token", kv.bool(false)],
        ["tokenizer.chat_template", kv.str(CHATML_TEMPLATE)],
    ];
}

interface MatrixSpec {
    readonly name: string;
    /** Input features (ne0). */
    readonly inDim: number;
    /** Output features (ne1). */
    readonly outDim: number;
}

/** The per-layer matrices of a llama block, with ne0 = input features and ne1 = output features. */
function layerMatrices(shape: LlamaShape, layer: number): MatrixSpec[] {
    const kvDim = (shape.embd / shape.heads) * shape.kvHeads;
    const p = `blk.${layer}.`;
    return [
        { name: `${p}attn_q.weight`, inDim: shape.embd, outDim: shape.embd },
        { name: `${p}attn_k.weight`, inDim: shape.embd, outDim: kvDim },
        { name: `${p}attn_v.weight`, inDim: shape.embd, outDim: kvDim },
        { name: `${p}attn_output.weight`, inDim: shape.embd, outDim: shape.embd },
        { name: `${p}ffn_gate.weight`, inDim: shape.embd, outDim: shape.ff },
        { name: `${p}ffn_up.weight`, inDim: shape.embd, outDim: shape.ff },
        { name: `${p}ffn_down.weight`, inDim: shape.ff, outDim: shape.embd },
    ];
}

const ones = (n: number): (() => Iterable<TensorChunk>) => () => [new Float32Array(n).fill(1)];

/**
 * Builds a llama model description. `matrix` produces the data of each 2-D weight (token_embd, output and
 * the per-layer matrices) given its name, shape, type and the rows to zero (output only).
 */
function llamaModel(
    shape: LlamaShape,
    vocab: SpmVocab,
    name: string,
    matrixType: GgmlTypeId,
    fileType: number,
    matrix: (spec: MatrixSpec, std: number, zeroRows?: Uint8Array) => () => Iterable<TensorChunk>,
): GgufFile {
    if (vocab.tokens.length !== shape.vocabSize) throw new Error("vocabulary size mismatch");
    const tensors: GgufTensor[] = [];
    const mat = (spec: MatrixSpec, std: number, zeroRows?: Uint8Array): GgufTensor => ({
        name: spec.name,
        dims: [spec.inDim, spec.outDim],
        type: matrixType,
        data: matrix(spec, std, zeroRows),
    });
    const norm = (n: string, len: number): GgufTensor => ({ name: n, dims: [len], type: GgmlType.F32, data: ones(len) });

    // Non-NORMAL tokens get all-zero output rows: their logit is exactly 0 while the best random logit is
    // positive, so greedy decoding never picks EOS, control or byte tokens.
    const zeroRows = new Uint8Array(shape.vocabSize);
    for (let i = 0; i < shape.vocabSize; i++) zeroRows[i] = vocab.types[i] === TokenType.NORMAL ? 0 : 1;

    tensors.push(mat({ name: "token_embd.weight", inDim: shape.embd, outDim: shape.vocabSize }, 1));
    for (let l = 0; l < shape.layers; l++) {
        tensors.push(norm(`blk.${l}.attn_norm.weight`, shape.embd));
        for (const spec of layerMatrices(shape, l)) {
            // q/k a little larger than 1/sqrt(fan_in) so attention is not uniform and context matters
            const gain = spec.name.endsWith("attn_q.weight") || spec.name.endsWith("attn_k.weight") ? 2 : 1;
            tensors.push(mat(spec, gain / Math.sqrt(spec.inDim)));
            if (spec.name.endsWith("attn_output.weight")) tensors.push(norm(`blk.${l}.ffn_norm.weight`, shape.embd));
        }
    }
    tensors.push(norm("output_norm.weight", shape.embd));
    tensors.push(mat({ name: "output.weight", inDim: shape.embd, outDim: shape.vocabSize }, 1 / Math.sqrt(shape.embd), zeroRows));

    return { kv: llamaMetadata(shape, vocab, name, fileType), tensors };
}

// ---------------------------------------------------------------------------------------------------------
// Tiny model

export interface TinyModelOptions {
    /** PRNG seed; same seed gives a byte-identical file. Default 1. */
    readonly seed?: number;
    /** `general.name`. Default "shimmy-tiny". */
    readonly name?: string;
    /** `llama.context_length` (training context). Default 512. */
    readonly contextLength?: number;
    /** Wider or deeper than TINY_SHAPE (the vocabulary stays): e.g. embd 640 and ff 1792 make a 43 MB file, for code that acts on big buffers only. */
    readonly shape?: Partial<Pick<LlamaShape, "embd" | "ff" | "layers" | "heads" | "kvHeads">>;
}

/** The tiny model's GGUF description (F32; data generated lazily while writing). */
export function tinyModelSpec(opts: TinyModelOptions = {}): GgufFile {
    const seed = opts.seed ?? 1;
    const shape: LlamaShape = { ...TINY_SHAPE, ...opts.shape, contextLength: opts.contextLength ?? TINY_SHAPE.contextLength };
    const vocab = buildSpmVocab(shape.vocabSize);
    return llamaModel(shape, vocab, opts.name ?? "shimmy-tiny", GgmlType.F32, 0, (spec, std, zeroRows) => () => {
        const data = uniformTensor(seed, spec.name, spec.inDim * spec.outDim, uniformAmp(std));
        if (zeroRows) {
            for (let r = 0; r < spec.outDim; r++) if (zeroRows[r] === 1) data.fill(0, r * spec.inDim, (r + 1) * spec.inDim);
        }
        return [data];
    });
}

/**
 * Writes the tiny llama test model (vocab 512, embd 64, 2 layers, 4 heads, ff 128, F32, ChatML template),
 * about 0.6 MB, in milliseconds. Same options give a byte-identical file.
 */
export async function writeTinyModel(path: string, opts: TinyModelOptions = {}): Promise<void> {
    await writeGguf(path, tinyModelSpec(opts));
}

// ---------------------------------------------------------------------------------------------------------
// Bench model

export interface BenchModelOptions {
    /** PRNG seed; same seed gives a byte-identical file. Default 1. */
    readonly seed?: number;
    /**
     * Number of transformer blocks (default 22, TinyLlama's). Fewer gives a smaller model of the same
     * width: 6 layers is about 400 MiB. Used to check figures on a shape the harness does not use.
     */
    readonly layers?: number;
}

/** The bench model's GGUF description (Q8_0 matrices, F32 norms; data generated lazily while writing). */
export function benchModelSpec(opts: BenchModelOptions = {}): GgufFile {
    const seed = opts.seed ?? 1;
    const layers = opts.layers ?? BENCH_SHAPE.layers;
    if (!Number.isInteger(layers) || layers < 1) throw new Error(`bad layer count ${layers}`);
    const shape: LlamaShape = { ...BENCH_SHAPE, layers };
    const vocab = buildSpmVocab(shape.vocabSize);
    const name = layers === BENCH_SHAPE.layers ? "shimmy-bench-tinyllama-1.1b-q8_0" : `shimmy-bench-${layers}l-q8_0`;
    return llamaModel(shape, vocab, name, GgmlType.Q8_0, 7, (spec, std, zeroRows) => () => {
        const blocksPerRow = spec.inDim / Q8_0_BLOCK_SIZE;
        // int8 quants uniform in [-128, 127] have a standard deviation of about 73.9
        return randomQ8_0(blocksPerRow * spec.outDim, tensorSeed(seed, spec.name), std / 73.9, blocksPerRow, zeroRows);
    });
}

/**
 * Writes a TinyLlama-1.1B-shaped model (vocab 32000, embd 2048, 22 layers, 32/4 heads, ff 5632, Q8_0),
 * about 1.1 GiB. Random weights cost the same compute as trained ones, so it is a fair performance fixture.
 */
export async function writeBenchModel(path: string, opts: BenchModelOptions = {}): Promise<void> {
    await writeGguf(path, benchModelSpec(opts));
}

// ---------------------------------------------------------------------------------------------------------
// LoRA adapter for the tiny model

export interface TinyLoraOptions {
    /** PRNG seed; same seed gives a byte-identical file. Default 1. */
    readonly seed?: number;
    /** `adapter.lora.alpha`; llama.cpp scales the update by alpha / rank. Default 8 (= the default rank). */
    readonly alpha?: number;
    /** LoRA rank. Default 8. */
    readonly rank?: number;
}

/**
 * The LoRA adapter's GGUF description: for every layer's attn_q, attn_k, attn_v, attn_output, ffn_gate,
 * ffn_up and ffn_down, `lora_a` with dims [in, rank] and `lora_b` with dims [rank, out] (ne0 first), F32.
 * llama.cpp adds (alpha / rank) · scale · B·A to each weight.
 */
export function tinyLoraSpec(opts: TinyLoraOptions = {}): GgufFile {
    const seed = opts.seed ?? 1;
    const rank = opts.rank ?? 8;
    const alpha = opts.alpha ?? 8;
    if (!Number.isInteger(rank) || rank < 1) throw new Error(`bad LoRA rank ${rank}`);
    const shape = TINY_SHAPE;
    const tensors: GgufTensor[] = [];
    for (let l = 0; l < shape.layers; l++) {
        for (const spec of layerMatrices(shape, l)) {
            const base = spec.name.replace(/\.weight$/, "");
            const aName = `${base}.weight.lora_a`;
            const bName = `${base}.weight.lora_b`;
            // B·A·x has about the magnitude of the base weight's output (std ~1 per unit input), so the
            // adapter clearly changes what the model generates.
            tensors.push({
                name: aName,
                dims: [spec.inDim, rank],
                type: GgmlType.F32,
                data: () => [uniformTensor(seed, aName, spec.inDim * rank, uniformAmp(1 / Math.sqrt(spec.inDim)))],
            });
            tensors.push({
                name: bName,
                dims: [rank, spec.outDim],
                type: GgmlType.F32,
                data: () => [uniformTensor(seed, bName, rank * spec.outDim, uniformAmp(1.5 / Math.sqrt(rank)))],
            });
        }
    }
    return {
        kv: [
            ["general.architecture", kv.str("llama")],
            ["general.type", kv.str("adapter")],
            ["general.name", kv.str("shimmy-tiny-lora")],
            ["general.alignment", kv.u32(32)],
            ["adapter.type", kv.str("lora")],
            ["adapter.lora.alpha", kv.f32(alpha)],
        ],
        tensors,
    };
}

/** Writes a LoRA adapter for the tiny model (see {@link tinyLoraSpec}); it changes greedy output. */
export async function writeTinyLora(path: string, opts: TinyLoraOptions = {}): Promise<void> {
    await writeGguf(path, tinyLoraSpec(opts));
}

export type { WriteGgufResult };
