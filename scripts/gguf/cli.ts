#!/usr/bin/env bun
/**
 * Writes a deterministic fixture model.
 *
 *   bun scripts/gguf/cli.ts [--preset tiny|bench|lora] [--out PATH] [--seed N] [--layers N]
 *
 * Defaults: preset tiny; out <os tmpdir>/shimmy-fixtures/{tiny.gguf, bench-tinyllama-q8.gguf, tiny-lora.gguf};
 * seed 1. Prints the path written, its size and the time taken.
 */
import { statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { writeBenchModel, writeTinyLora, writeTinyModel } from "../../src/gguf/presets.ts";

const PRESETS = {
    tiny: { file: "tiny.gguf", write: writeTinyModel },
    bench: { file: "bench-tinyllama-q8.gguf", write: writeBenchModel },
    lora: { file: "tiny-lora.gguf", write: writeTinyLora },
} as const;
type PresetName = keyof typeof PRESETS;

const USAGE = `usage: bun scripts/gguf/cli.ts [--preset tiny|bench|lora] [--out PATH] [--seed N]

  --preset  tiny (default): tiny llama chat model, ~0.6 MB
            bench: TinyLlama-1.1B-shaped Q8_0 model, ~1.1 GiB
            lora: LoRA adapter for the tiny model
  --out     output path (default: <tmpdir>/shimmy-fixtures/<preset file>)
  --seed    non-negative integer PRNG seed (default 1)
  --layers  bench only: transformer blocks (default 22); 6 gives a ~400 MiB model of the same width
            (default out: bench-<N>l-q8.gguf)`;

function fail(message: string): never {
    console.error(`error: ${message}\n\n${USAGE}`);
    process.exit(1);
}

function formatSize(bytes: number): string {
    if (bytes >= 1024 ** 3) return `${(bytes / 1024 ** 3).toFixed(2)} GiB`;
    if (bytes >= 1024 ** 2) return `${(bytes / 1024 ** 2).toFixed(2)} MiB`;
    if (bytes >= 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
    return `${bytes} B`;
}

async function main(argv: string[]): Promise<void> {
    let values: { preset?: string; out?: string; seed?: string; layers?: string; help?: boolean };
    try {
        ({ values } = parseArgs({
            args: argv,
            options: {
                preset: { type: "string", short: "p" },
                out: { type: "string", short: "o" },
                seed: { type: "string", short: "s" },
                layers: { type: "string" },
                help: { type: "boolean", short: "h" },
            },
            strict: true,
            allowPositionals: false,
        }));
    } catch (err) {
        fail(err instanceof Error ? err.message : String(err));
    }
    if (values.help) {
        console.log(USAGE);
        return;
    }

    const presetName = values.preset ?? "tiny";
    if (!Object.hasOwn(PRESETS, presetName)) fail(`unknown preset "${presetName}" (expected tiny, bench or lora)`);
    const preset = PRESETS[presetName as PresetName];

    let seed = 1;
    if (values.seed !== undefined) {
        if (!/^\d+$/.test(values.seed) || !Number.isSafeInteger(Number(values.seed))) {
            fail(`--seed must be a non-negative integer, got "${values.seed}"`);
        }
        seed = Number(values.seed);
    }
    let layers: number | undefined;
    if (values.layers !== undefined) {
        if (presetName !== "bench") fail("--layers applies to --preset bench only");
        if (!/^\d+$/.test(values.layers) || Number(values.layers) < 1 || Number(values.layers) > 64) {
            fail(`--layers must be an integer from 1 to 64, got "${values.layers}"`);
        }
        layers = Number(values.layers);
    }
    if (values.out === "") fail("--out must not be empty");
    const file = layers === undefined ? preset.file : `bench-${layers}l-q8.gguf`;
    const out = resolve(values.out ?? join(tmpdir(), "shimmy-fixtures", file));

    const started = performance.now();
    await preset.write(out, layers === undefined ? { seed } : { seed, layers });
    const seconds = (performance.now() - started) / 1000;
    const size = statSync(out).size;
    console.log(`${out}\n${presetName}: ${size} bytes (${formatSize(size)}) written in ${seconds.toFixed(2)} s`);
}

await main(process.argv.slice(2)).catch((err: unknown) => {
    console.error(`error: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
});
