/**
 * A small, generic, deterministic GGUF v3 writer.
 *
 * Leaf module: it imports only Node built-ins (no other `src/` module, no node-llama-cpp).
 *
 * File layout written (all integers little-endian):
 *   magic "GGUF" | u32 version = 3 | u64 tensor count | u64 kv count
 *   kv entries:   gguf string key | u32 value type | value
 *   tensor infos: gguf string name | u32 n_dims | u64 dims[n_dims] (ne0 first) | u32 ggml type | u64 offset
 *   padding to `general.alignment` (default 32)
 *   data section: each tensor's bytes at its offset (relative to the data start), each offset a multiple
 *   of the alignment, padded with zeros between tensors.
 *
 * A GGUF string is a u64 byte length followed by UTF-8 bytes (no terminator).
 *
 * The file is written to a temporary file in the destination directory and then renamed over the
 * destination, so a process that has the old file mmapped (llama.cpp does) keeps its old inode intact.
 */
import { randomBytes } from "node:crypto";
import { mkdir, open, rename, unlink } from "node:fs/promises";
import { basename, dirname, join } from "node:path";

export const GGUF_MAGIC = "GGUF";
export const GGUF_VERSION = 3;
/** GGUF's default alignment, also what llama.cpp assumes when `general.alignment` is absent. */
export const GGUF_DEFAULT_ALIGNMENT = 32;

/** GGUF metadata value type ids (`gguf_type`). */
export const GgufValueType = {
    UINT8: 0,
    INT8: 1,
    UINT16: 2,
    INT16: 3,
    UINT32: 4,
    INT32: 5,
    FLOAT32: 6,
    BOOL: 7,
    STRING: 8,
    ARRAY: 9,
    UINT64: 10,
    INT64: 11,
    FLOAT64: 12,
} as const;
export type GgufValueTypeId = (typeof GgufValueType)[keyof typeof GgufValueType];

/** The ggml tensor types this writer can encode. */
export const GgmlType = {
    F32: 0,
    F16: 1,
    Q8_0: 8,
} as const;
export type GgmlTypeId = (typeof GgmlType)[keyof typeof GgmlType];

/** Q8_0: blocks of 32 values, each an f16 scale followed by 32 int8 quants (34 bytes). */
export const Q8_0_BLOCK_SIZE = 32;
export const Q8_0_BLOCK_BYTES = 34;

export type GgufScalarTypeName = "u8" | "i8" | "u16" | "i16" | "u32" | "i32" | "f32" | "f64" | "u64" | "i64" | "bool" | "string";

/** One metadata value. Build these with the {@link kv} helpers. */
export type GgufValue =
    | { readonly type: "u8" | "i8" | "u16" | "i16" | "u32" | "i32" | "f32" | "f64"; readonly value: number }
    | { readonly type: "u64" | "i64"; readonly value: bigint | number }
    | { readonly type: "bool"; readonly value: boolean }
    | { readonly type: "string"; readonly value: string }
    | {
          readonly type: "array";
          readonly itemType: GgufScalarTypeName;
          readonly value: ArrayLike<number | bigint | boolean | string>;
      };

/** Constructors for metadata values. */
export const kv = {
    u8: (value: number): GgufValue => ({ type: "u8", value }),
    i8: (value: number): GgufValue => ({ type: "i8", value }),
    u16: (value: number): GgufValue => ({ type: "u16", value }),
    i16: (value: number): GgufValue => ({ type: "i16", value }),
    u32: (value: number): GgufValue => ({ type: "u32", value }),
    i32: (value: number): GgufValue => ({ type: "i32", value }),
    f32: (value: number): GgufValue => ({ type: "f32", value }),
    f64: (value: number): GgufValue => ({ type: "f64", value }),
    u64: (value: bigint | number): GgufValue => ({ type: "u64", value }),
    i64: (value: bigint | number): GgufValue => ({ type: "i64", value }),
    bool: (value: boolean): GgufValue => ({ type: "bool", value }),
    str: (value: string): GgufValue => ({ type: "string", value }),
    strArray: (value: readonly string[]): GgufValue => ({ type: "array", itemType: "string", value }),
    f32Array: (value: ArrayLike<number>): GgufValue => ({ type: "array", itemType: "f32", value }),
    i32Array: (value: ArrayLike<number>): GgufValue => ({ type: "array", itemType: "i32", value }),
    u32Array: (value: ArrayLike<number>): GgufValue => ({ type: "array", itemType: "u32", value }),
    array: (itemType: GgufScalarTypeName, value: ArrayLike<number | bigint | boolean | string>): GgufValue => ({
        type: "array",
        itemType,
        value,
    }),
};

/**
 * One chunk of a tensor's data, in file order.
 * - `Float32Array`: logical values, encoded to the tensor's type (F32 as is, F16 converted, Q8_0 quantized;
 *   for Q8_0 every Float32Array chunk must hold a multiple of 32 values).
 * - `Uint8Array`: bytes already in the tensor's on-disk encoding, written as they are.
 */
export type TensorChunk = Float32Array | Uint8Array;

/**
 * A tensor's data: one chunk, or a function called only when the tensor is written that yields its chunks
 * in order (so a large model never has to exist in memory all at once). The writer is done with each chunk
 * before it pulls the next one, so a generator may reuse one buffer for all its chunks.
 */
export type TensorData = TensorChunk | (() => Iterable<TensorChunk>);

export interface GgufTensor {
    /** Tensor name, e.g. `blk.0.attn_q.weight`. */
    readonly name: string;
    /** Dimensions with ne0 (the contiguous one) first, like ggml's `ne`. */
    readonly dims: readonly number[];
    /** ggml type of the stored data. */
    readonly type: GgmlTypeId;
    /** The data; its encoded size must equal {@link tensorByteSize}. */
    readonly data: TensorData;
}

export interface GgufFile {
    /** Metadata, written in insertion order. `general.alignment` (u32), when present, sets the alignment. */
    readonly kv: Readonly<Record<string, GgufValue>> | ReadonlyArray<readonly [string, GgufValue]>;
    /** Tensors, written in this order. */
    readonly tensors: readonly GgufTensor[];
}

/** Where each tensor's data goes, as laid out by {@link layoutGguf}. */
export interface GgufLayout {
    /** The encoded header: magic, counts, kv entries, tensor infos and the padding up to the data section. */
    readonly header: Uint8Array;
    /** Alignment used for the data section and tensor offsets. */
    readonly alignment: number;
    /** Offset of each tensor relative to the start of the data section (same order as `tensors`). */
    readonly offsets: readonly number[];
    /** Size in bytes of each tensor's data (same order as `tensors`). */
    readonly sizes: readonly number[];
    /** Total file size in bytes. */
    readonly fileSize: number;
}

export interface WriteGgufResult {
    /** Final path written. */
    readonly path: string;
    /** Total bytes written. */
    readonly bytes: number;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const textEncoder = new TextEncoder();

function entriesOf(kvs: GgufFile["kv"]): ReadonlyArray<readonly [string, GgufValue]> {
    return Array.isArray(kvs) ? (kvs as ReadonlyArray<readonly [string, GgufValue]>) : Object.entries(kvs);
}

function alignUp(n: number, alignment: number): number {
    return Math.ceil(n / alignment) * alignment;
}

/** Bytes one element (or one block, for block types) of a ggml type takes, and its block size. */
function typeTraits(type: GgmlTypeId): { blockSize: number; blockBytes: number } {
    switch (type) {
        case GgmlType.F32:
            return { blockSize: 1, blockBytes: 4 };
        case GgmlType.F16:
            return { blockSize: 1, blockBytes: 2 };
        case GgmlType.Q8_0:
            return { blockSize: Q8_0_BLOCK_SIZE, blockBytes: Q8_0_BLOCK_BYTES };
        default:
            throw new Error(`unsupported ggml type ${String(type)}`);
    }
}

/** Size in bytes of a tensor of this type and shape. Throws if ne0 is not a multiple of the block size. */
export function tensorByteSize(type: GgmlTypeId, dims: readonly number[]): number {
    const { blockSize, blockBytes } = typeTraits(type);
    const ne0 = dims[0] ?? 1;
    if (ne0 % blockSize !== 0) throw new Error(`ne0 = ${ne0} is not a multiple of the block size ${blockSize}`);
    let n = 1;
    for (const d of dims) {
        if (!Number.isSafeInteger(d) || d < 1) throw new Error(`bad tensor dimension ${d}`);
        n *= d;
    }
    return (n / blockSize) * blockBytes;
}

/** Converts a number to IEEE 754 half precision bits (round to nearest even; overflow gives infinity). */
export function f32ToF16(value: number): number {
    f32Scratch[0] = value;
    const x = u32Scratch[0]!;
    const sign = (x >>> 16) & 0x8000;
    const exp = (x >>> 23) & 0xff;
    let mant = x & 0x7fffff;
    if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 : 0); // inf / nan
    const e = exp - 127 + 15;
    if (e >= 0x1f) return sign | 0x7c00; // overflow
    if (e <= 0) {
        // subnormal half (or zero)
        if (e < -10) return sign;
        mant |= 0x800000;
        const shift = 14 - e;
        let half = mant >>> shift;
        const rem = mant & ((1 << shift) - 1);
        const halfway = 1 << (shift - 1);
        if (rem > halfway || (rem === halfway && (half & 1) !== 0)) half++;
        return sign | half;
    }
    let half = (e << 10) | (mant >>> 13);
    const rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem === 0x1000 && (half & 1) !== 0)) half++; // a carry into the exponent is correct
    return sign | half;
}
const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** Converts IEEE 754 half precision bits to a number. */
export function f16ToF32(bits: number): number {
    const sign = bits & 0x8000 ? -1 : 1;
    const exp = (bits >>> 10) & 0x1f;
    const mant = bits & 0x3ff;
    if (exp === 0) return sign * mant * 2 ** -24;
    if (exp === 0x1f) return mant !== 0 ? NaN : sign * Infinity;
    return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** Encodes values as F16 (little-endian u16 bits). */
export function encodeF16(src: Float32Array): Uint8Array {
    const out = new Uint8Array(src.length * 2);
    const view = new DataView(out.buffer);
    for (let i = 0; i < src.length; i++) view.setUint16(i * 2, f32ToF16(src[i]!), true);
    return out;
}

/** Quantizes values to Q8_0 blocks, like ggml's reference `quantize_row_q8_0`. Length must be a multiple of 32. */
export function quantizeQ8_0(src: Float32Array): Uint8Array {
    if (src.length % Q8_0_BLOCK_SIZE !== 0) throw new Error(`Q8_0 data length ${src.length} is not a multiple of 32`);
    const nBlocks = src.length / Q8_0_BLOCK_SIZE;
    const out = new Uint8Array(nBlocks * Q8_0_BLOCK_BYTES);
    const view = new DataView(out.buffer);
    for (let b = 0; b < nBlocks; b++) {
        const base = b * Q8_0_BLOCK_SIZE;
        let amax = 0;
        for (let j = 0; j < Q8_0_BLOCK_SIZE; j++) {
            const a = Math.abs(src[base + j]!);
            if (a > amax) amax = a;
        }
        const d = amax / 127;
        const id = d !== 0 ? 1 / d : 0;
        const o = b * Q8_0_BLOCK_BYTES;
        view.setUint16(o, f32ToF16(d), true);
        for (let j = 0; j < Q8_0_BLOCK_SIZE; j++) {
            // roundf: half away from zero
            const v = src[base + j]! * id;
            const q = v < 0 ? -Math.round(-v) : Math.round(v);
            out[o + 2 + j] = q & 0xff;
        }
    }
    return out;
}

function encodeChunk(type: GgmlTypeId, chunk: TensorChunk): Uint8Array {
    if (chunk instanceof Uint8Array) return chunk;
    switch (type) {
        case GgmlType.F32:
            if (!LITTLE_ENDIAN) throw new Error("big-endian hosts are not supported");
            return new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength);
        case GgmlType.F16:
            return encodeF16(chunk);
        case GgmlType.Q8_0:
            return quantizeQ8_0(chunk);
        default:
            throw new Error(`unsupported ggml type ${String(type)}`);
    }
}

/** A growable little-endian byte buffer for the header. */
class ByteWriter {
    private buf = new Uint8Array(1 << 16);
    private view = new DataView(this.buf.buffer);
    length = 0;

    private ensure(extra: number): void {
        if (this.length + extra <= this.buf.length) return;
        let cap = this.buf.length;
        while (cap < this.length + extra) cap *= 2;
        const next = new Uint8Array(cap);
        next.set(this.buf.subarray(0, this.length));
        this.buf = next;
        this.view = new DataView(next.buffer);
    }
    u8(v: number): void {
        this.ensure(1);
        this.view.setUint8(this.length, v);
        this.length += 1;
    }
    i8(v: number): void {
        this.ensure(1);
        this.view.setInt8(this.length, v);
        this.length += 1;
    }
    u16(v: number): void {
        this.ensure(2);
        this.view.setUint16(this.length, v, true);
        this.length += 2;
    }
    i16(v: number): void {
        this.ensure(2);
        this.view.setInt16(this.length, v, true);
        this.length += 2;
    }
    u32(v: number): void {
        this.ensure(4);
        this.view.setUint32(this.length, v, true);
        this.length += 4;
    }
    i32(v: number): void {
        this.ensure(4);
        this.view.setInt32(this.length, v, true);
        this.length += 4;
    }
    f32(v: number): void {
        this.ensure(4);
        this.view.setFloat32(this.length, v, true);
        this.length += 4;
    }
    f64(v: number): void {
        this.ensure(8);
        this.view.setFloat64(this.length, v, true);
        this.length += 8;
    }
    u64(v: bigint | number): void {
        this.ensure(8);
        this.view.setBigUint64(this.length, BigInt(v), true);
        this.length += 8;
    }
    i64(v: bigint | number): void {
        this.ensure(8);
        this.view.setBigInt64(this.length, BigInt(v), true);
        this.length += 8;
    }
    bytes(b: Uint8Array): void {
        this.ensure(b.length);
        this.buf.set(b, this.length);
        this.length += b.length;
    }
    str(s: string): void {
        const b = textEncoder.encode(s);
        this.u64(b.length);
        this.bytes(b);
    }
    zeros(n: number): void {
        this.ensure(n);
        this.buf.fill(0, this.length, this.length + n);
        this.length += n;
    }
    result(): Uint8Array {
        return this.buf.slice(0, this.length);
    }
}

const SCALAR_TYPE_IDS: Record<GgufScalarTypeName, GgufValueTypeId> = {
    u8: GgufValueType.UINT8,
    i8: GgufValueType.INT8,
    u16: GgufValueType.UINT16,
    i16: GgufValueType.INT16,
    u32: GgufValueType.UINT32,
    i32: GgufValueType.INT32,
    f32: GgufValueType.FLOAT32,
    f64: GgufValueType.FLOAT64,
    u64: GgufValueType.UINT64,
    i64: GgufValueType.INT64,
    bool: GgufValueType.BOOL,
    string: GgufValueType.STRING,
};

function checkInt(key: string, v: number, min: number, max: number): void {
    if (!Number.isInteger(v) || v < min || v > max) throw new Error(`metadata ${key}: ${v} is out of range [${min}, ${max}]`);
}

function writeScalar(w: ByteWriter, key: string, type: GgufScalarTypeName, v: unknown): void {
    switch (type) {
        case "u8":
            checkInt(key, v as number, 0, 0xff);
            return w.u8(v as number);
        case "i8":
            checkInt(key, v as number, -0x80, 0x7f);
            return w.i8(v as number);
        case "u16":
            checkInt(key, v as number, 0, 0xffff);
            return w.u16(v as number);
        case "i16":
            checkInt(key, v as number, -0x8000, 0x7fff);
            return w.i16(v as number);
        case "u32":
            checkInt(key, v as number, 0, 0xffffffff);
            return w.u32(v as number);
        case "i32":
            checkInt(key, v as number, -0x80000000, 0x7fffffff);
            return w.i32(v as number);
        case "f32":
            if (typeof v !== "number") throw new Error(`metadata ${key}: expected a number`);
            return w.f32(v);
        case "f64":
            if (typeof v !== "number") throw new Error(`metadata ${key}: expected a number`);
            return w.f64(v);
        case "u64":
            return w.u64(v as bigint | number);
        case "i64":
            return w.i64(v as bigint | number);
        case "bool":
            if (typeof v !== "boolean") throw new Error(`metadata ${key}: expected a boolean`);
            return w.u8(v ? 1 : 0);
        case "string":
            if (typeof v !== "string") throw new Error(`metadata ${key}: expected a string`);
            return w.str(v);
    }
}

function alignmentOf(entries: ReadonlyArray<readonly [string, GgufValue]>): number {
    const found = entries.find(([k]) => k === "general.alignment");
    if (!found) return GGUF_DEFAULT_ALIGNMENT;
    const v = found[1];
    if (v.type !== "u32" || v.value < 1 || (v.value & (v.value - 1)) !== 0) {
        throw new Error("general.alignment must be a u32 power of two");
    }
    return v.value;
}

/** Encodes the header and computes where every tensor's data goes. Does not touch tensor data. */
export function layoutGguf(file: GgufFile): GgufLayout {
    const entries = entriesOf(file.kv);
    const alignment = alignmentOf(entries);
    const w = new ByteWriter();
    w.bytes(textEncoder.encode(GGUF_MAGIC));
    w.u32(GGUF_VERSION);
    w.u64(file.tensors.length);
    w.u64(entries.length);

    const seenKeys = new Set<string>();
    for (const [key, value] of entries) {
        if (seenKeys.has(key)) throw new Error(`duplicate metadata key ${key}`);
        seenKeys.add(key);
        w.str(key);
        if (value.type === "array") {
            w.u32(GgufValueType.ARRAY);
            w.u32(SCALAR_TYPE_IDS[value.itemType]);
            w.u64(value.value.length);
            for (let i = 0; i < value.value.length; i++) writeScalar(w, key, value.itemType, value.value[i]);
        } else {
            w.u32(SCALAR_TYPE_IDS[value.type]);
            writeScalar(w, key, value.type, value.value);
        }
    }

    const offsets: number[] = [];
    const sizes: number[] = [];
    const seenNames = new Set<string>();
    let offset = 0;
    for (const t of file.tensors) {
        if (seenNames.has(t.name)) throw new Error(`duplicate tensor name ${t.name}`);
        seenNames.add(t.name);
        if (t.dims.length < 1 || t.dims.length > 4) throw new Error(`tensor ${t.name}: 1 to 4 dimensions, got ${t.dims.length}`);
        const size = tensorByteSize(t.type, t.dims);
        w.str(t.name);
        w.u32(t.dims.length);
        for (const d of t.dims) w.u64(d);
        w.u32(t.type);
        w.u64(offset);
        offsets.push(offset);
        sizes.push(size);
        offset = alignUp(offset + size, alignment);
    }
    w.zeros(alignUp(w.length, alignment) - w.length);
    const header = w.result();
    return { header, alignment, offsets, sizes, fileSize: header.length + offset };
}

function* chunksOf(data: TensorData): Iterable<TensorChunk> {
    if (typeof data === "function") yield* data();
    else yield data;
}

/**
 * Writes a GGUF v3 file: to a temporary file beside `path`, then renamed over `path`.
 * Tensor data is produced and written one chunk at a time. Creates the parent directory if needed.
 */
export async function writeGguf(path: string, file: GgufFile): Promise<WriteGgufResult> {
    const layout = layoutGguf(file);
    const dir = dirname(path);
    await mkdir(dir, { recursive: true });
    const tmp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`);
    const fh = await open(tmp, "w");
    let renamed = false;
    try {
        let pos = 0;
        const put = async (b: Uint8Array): Promise<void> => {
            let done = 0;
            while (done < b.length) {
                const { bytesWritten } = await fh.write(b, done, b.length - done, pos);
                done += bytesWritten;
                pos += bytesWritten;
            }
        };
        await put(layout.header);
        const dataStart = layout.header.length;
        for (let i = 0; i < file.tensors.length; i++) {
            const t = file.tensors[i]!;
            const start = dataStart + layout.offsets[i]!;
            if (pos < start) await put(new Uint8Array(start - pos));
            let written = 0;
            for (const chunk of chunksOf(t.data)) {
                const bytes = encodeChunk(t.type, chunk);
                written += bytes.length;
                if (written > layout.sizes[i]!) break;
                await put(bytes);
            }
            if (written !== layout.sizes[i]) {
                throw new Error(`tensor ${t.name}: data is ${written} bytes, expected ${layout.sizes[i]}`);
            }
        }
        if (pos < layout.fileSize) await put(new Uint8Array(layout.fileSize - pos));
        await fh.close();
        await rename(tmp, path);
        renamed = true;
        return { path, bytes: layout.fileSize };
    } finally {
        if (!renamed) {
            await fh.close().catch(() => {});
            await unlink(tmp).catch(() => {});
        }
    }
}
