/**
 * Which models exist and under which names. Sources, first name wins: SHIMMY_BASE_GGUF (+ LoRA),
 * `serve --model-path`, then every `*.gguf` in ./models and the model dirs. Directories are re-read
 * on each lookup so files added or removed while serving show up; a missing file is never listed.
 */
import { existsSync, readdirSync, statSync } from "node:fs";
import path from "node:path";
import type { Config } from "../config.ts";
import type { LoraAdapter, ModelEntry, ModelSource } from "./types.ts";

/** `Phi-3_mini 4k.Q4.gguf` -> `phi-3-mini-4k.q4`. */
export function modelNameFromPath(file: string): string {
  return path
    .basename(file)
    .replace(/\.gguf$/i, "")
    .toLowerCase()
    .replace(/[_\s]+/g, "-");
}

/** A requested name as registry names are spelled: `My_Model.gguf` -> `my-model`. */
export function normalizeModelName(name: string): string {
  return name.trim().toLowerCase().replace(/[_\s]+/g, "-").replace(/\.gguf$/, "");
}

function isFile(p: string): boolean {
  try {
    return statSync(p).isFile();
  } catch {
    return false;
  }
}

/** Skip adapter files (`lora` / `adapter` as a word of the name) and split-model parts other than the first. */
function looksLikeBaseModel(file: string): boolean {
  const base = path.basename(file).toLowerCase();
  if (/(^|[-_. ])(lora|adapter)([-_. ]|$)/.test(base)) return false;
  const split = base.match(/-(\d{5})-of-(\d{5})\.gguf$/);
  return !split || split[1] === "00001";
}

export class ModelRegistry {
  private readonly fixed: ModelEntry[] = [];
  private readonly dirs: string[];

  constructor(config: Pick<Config, "baseGguf" | "modelPath" | "modelDirs"> & { loras?: Config["loras"] }, cwd = process.cwd()) {
    // The LoRA adapters apply to `--model-path` when given, else to SHIMMY_BASE_GGUF.
    const loras = (config.loras ?? []).map((l) => ({ path: path.resolve(cwd, l.path), scale: l.scale }));
    if (config.baseGguf) this.addFile(path.resolve(cwd, config.baseGguf), "env", config.modelPath ? undefined : loras);
    if (config.modelPath) this.addFile(path.resolve(cwd, config.modelPath), "model-path", loras);
    this.dirs = [...new Set([path.resolve(cwd, "models"), ...config.modelDirs.map((d) => path.resolve(cwd, d))])];
  }

  /** Registers one file under its stem name (or `name`). Later sources never shadow it. */
  addFile(file: string, source: ModelSource, loras?: LoraAdapter[], name = modelNameFromPath(file)): ModelEntry {
    const entry: ModelEntry = { name, path: path.resolve(file), source, ...(loras?.length ? { loras } : {}) };
    this.fixed.push(entry);
    return entry;
  }

  /** Models whose files exist now, deduplicated by name (first wins). */
  list(): ModelEntry[] {
    const seen = new Set<string>();
    const out: ModelEntry[] = [];
    const push = (e: ModelEntry) => {
      if (seen.has(e.name) || !isFile(e.path)) return;
      seen.add(e.name);
      out.push(e);
    };
    this.fixed.forEach(push);
    for (const dir of this.dirs) {
      if (!existsSync(dir)) continue;
      let names: string[];
      try {
        names = readdirSync(dir).sort();
      } catch {
        continue;
      }
      for (const n of names) {
        if (!n.toLowerCase().endsWith(".gguf") || !looksLikeBaseModel(n)) continue;
        push({ name: modelNameFromPath(n), path: path.join(dir, n), source: "dir" });
      }
    }
    return out;
  }

  get(name: string): ModelEntry | undefined {
    const wanted = normalizeModelName(name);
    return this.list().find((e) => e.name === wanted);
  }
}
