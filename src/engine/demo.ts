/**
 * The built-in demo model: when no model is found anywhere, `serve` generates a tiny random-weights
 * model so every route can be tried at once. Its output is gibberish by design, and its name says so.
 */
import { existsSync, mkdirSync } from "node:fs";
import path from "node:path";
import { writeTinyModel } from "../gguf/presets.ts";

export const DEMO_MODEL_NAME = "shimmy-demo-random-weights";

/** Writes the demo model into `dir` once (same seed, same bytes) and returns its path. */
export async function ensureDemoModel(dir: string): Promise<string> {
  const file = path.join(dir, `${DEMO_MODEL_NAME}.gguf`);
  if (!existsSync(file)) {
    mkdirSync(dir, { recursive: true });
    await writeTinyModel(file, { seed: 42, name: "shimmy demo (random weights, not a trained model)", contextLength: 2048 });
  }
  return file;
}
