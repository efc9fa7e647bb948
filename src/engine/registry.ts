/**
 * Which models exist and under which names. Sources, in order (first wins on a shared file):
 * SHIMMY_BASE_GGUF (+ LoRA), `--model-path`, then the discovery roots (./models, the base model's
 * folder, model dirs, Ollama, Hugging Face, LM Studio, $XDG_DATA_HOME/shimmy/models). Headers are
 * read (node-llama-cpp's GGUF reader, cached per file version) to tell models from LoRA adapters,
 * pair adapters with their base models and describe each model. Results are cached for a second, so
 * a file dropped into a root shows up at once without rescanning on every request.
 */
import { realpathSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { type Config, discoveryEnv } from "../config.ts";
import { log } from "../log.ts";
import { type Candidate, discoveryRoots, type Root, type RootReport, scanRoot, splitPart } from "./discovery.ts";
import { ensureNativeRuntime } from "./runtime.ts";
import type { LoraAdapter, ModelEntry, ModelMeta, ModelSource } from "./types.ts";

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

const SOURCE_TAG: Record<ModelSource, string> = { env: "env", "model-path": "path", dir: "dir", ollama: "ollama", huggingface: "hf", lmstudio: "lmstudio", demo: "demo" };

/** Reads a GGUF header; throws with the reason when the file is not a usable GGUF. */
export type MetaReader = (file: string) => Promise<ModelMeta>;

/** The outcome of a scan: served entries, adapters, and what each root gave. */
export interface ScanResult {
  models: ModelEntry[];
  adapters: ModelEntry[];
  roots: RootReport[];
}

function realpath(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return path.resolve(p);
  }
}

export class ModelRegistry {
  private readonly fixed: ModelEntry[] = [];
  private readonly roots: Root[];
  private readonly readMeta: MetaReader;
  private readonly metaCache = new Map<string, { meta?: ModelMeta; error?: string }>();
  private cached: { at: number; result: Promise<ScanResult> } | undefined;

  constructor(
    config: Pick<Config, "baseGguf" | "modelPath" | "modelDirs"> & { loras?: Config["loras"]; cacheDir?: string; runtimeDir?: string },
    cwd = process.cwd(),
    opts: {
      /** Environment for the discovery roots (OLLAMA_MODELS, HF_HOME, ...). Default: config's discoveryEnv(). */
      env?: Record<string, string | undefined>;
      /** Only these roots (tests); default: discoveryRoots(). */
      roots?: Root[];
      readMeta?: MetaReader;
      /** How long a scan is reused, ms. Default 1000. */
      ttlMs?: number;
    } = {},
  ) {
    // The LoRA adapters apply to `--model-path` when given, else to SHIMMY_BASE_GGUF.
    const loras = (config.loras ?? []).map((l) => ({ path: path.resolve(cwd, l.path), scale: l.scale }));
    if (config.baseGguf) this.addFile(path.resolve(cwd, config.baseGguf), "env", config.modelPath ? undefined : loras);
    if (config.modelPath) this.addFile(path.resolve(cwd, config.modelPath), "model-path", loras);
    this.roots = opts.roots ?? discoveryRoots({ cwd, baseGguf: config.baseGguf, modelDirs: config.modelDirs, env: opts.env ?? discoveryEnv() });
    this.ttlMs = opts.ttlMs ?? 1000;
    this.readMeta =
      opts.readMeta ??
      (async (file) => {
        await ensureNativeRuntime({ runtimeDir: config.runtimeDir, cacheDir: config.cacheDir ?? os.tmpdir() });
        return (await import("./llama.ts")).readModelMeta(file);
      });
  }
  private readonly ttlMs: number;

  /** Registers one file under its stem name (or `name`). Later sources never shadow it. */
  addFile(file: string, source: ModelSource, loras?: LoraAdapter[], name = modelNameFromPath(file)): ModelEntry {
    const entry: ModelEntry = { name, path: path.resolve(file), source, ...(loras?.length ? { loras } : {}) };
    this.fixed.push(entry);
    this.cached = undefined;
    return entry;
  }

  /** Header facts of a file, cached per (real path, size, mtime); an unreadable file gives `error`. */
  private async describe(file: string): Promise<{ meta?: ModelMeta; error?: string }> {
    let key: string;
    try {
      const st = statSync(file);
      key = `${realpath(file)}|${st.size}|${st.mtimeMs}`;
    } catch (err) {
      return { error: `${file}: ${(err as Error).message}` };
    }
    let hit = this.metaCache.get(key);
    if (!hit) {
      hit = await this.readMeta(file).then(
        (meta) => ({ meta }),
        (err) => ({ error: (err as Error).message }),
      );
      this.metaCache.set(key, hit);
    }
    return hit;
  }

  /** Scans every root (or reuses a scan younger than the TTL). */
  scan(opts: { refresh?: boolean } = {}): Promise<ScanResult> {
    if (!opts.refresh && this.cached && Date.now() - this.cached.at < this.ttlMs) return this.cached.result;
    const result = this.doScan();
    this.cached = { at: Date.now(), result };
    result.catch(() => (this.cached = undefined));
    return result;
  }

  private async doScan(): Promise<ScanResult> {
    const t0 = performance.now();
    const seen = new Set<string>();
    const candidates: Candidate[] = [];
    for (const e of this.fixed) {
      const real = realpath(e.path);
      try {
        if (!statSync(e.path).isFile()) continue;
      } catch {
        continue; // a missing file is never listed
      }
      if (seen.has(real)) continue;
      seen.add(real);
      candidates.push({ file: e.path, source: e.source, root: path.dirname(e.path), name: e.name });
    }
    const roots: RootReport[] = [];
    for (const root of this.roots) {
      const { candidates: found, report } = scanRoot(root);
      roots.push(report);
      for (const c of found) {
        const real = realpath(c.file);
        if (seen.has(real)) continue;
        seen.add(real);
        candidates.push(c);
      }
    }

    // Split sets: one entry per set, at its first part; incomplete sets carry a problem.
    // One ordered list of single files and split sets, in the order they were found (root order).
    const sets = new Map<string, { parts: Map<number, string>; total: number; first: Candidate }>();
    const order: Array<Candidate | string> = [];
    for (const c of candidates) {
      const part = splitPart(c.file);
      if (!part) {
        order.push(c);
        continue;
      }
      const key = `${path.dirname(c.file)}/${part.base}/${part.total}`;
      if (!sets.has(key)) order.push(key);
      const set = sets.get(key) ?? { parts: new Map(), total: part.total, first: c };
      set.parts.set(part.index, c.file);
      if (part.index === 1) set.first = c;
      sets.set(key, set);
    }

    type Item = { c: Candidate; shards?: string[]; problem?: string; meta?: ModelMeta };
    const items: Item[] = [];
    for (const entry of order) {
      if (typeof entry !== "string") {
        items.push({ c: entry });
        continue;
      }
      const set = sets.get(entry)!;
      const shards = [...Array(set.total)].map((_, i) => set.parts.get(i + 1));
      const missing = shards.map((s, i) => (s ? 0 : i + 1)).filter(Boolean);
      const first = set.parts.get(1) ?? set.first.file;
      const c: Candidate = { ...set.first, file: first, name: set.first.name ?? modelNameFromPath(first.replace(/-\d{5}-of-\d{5}\.gguf$/i, ".gguf")) };
      items.push({ c, shards: shards.filter(Boolean) as string[], ...(missing.length ? { problem: `incomplete split model: part${missing.length > 1 ? "s" : ""} ${missing.join(", ")} of ${set.total} missing next to ${first}` } : {}) });
    }
    await Promise.all(
      items.map(async (it) => {
        if (it.problem) return;
        const d = await this.describe(it.c.file);
        if (d.error) it.problem = d.error;
        else it.meta = d.meta;
      }),
    );
    for (const it of items) if (it.meta && it.shards) it.meta = { ...it.meta, sizeBytes: it.shards.reduce((n, s) => n + statSync(s).size, 0) };

    // Adapters pair with the base models of their folder and architecture; never listed as models.
    const adapterItems = items.filter((it) => it.meta?.adapter);
    const modelItems = items.filter((it) => !it.meta?.adapter);
    const fixedByPath = new Map(this.fixed.map((e) => [path.resolve(e.path), e]));
    const names = new Set<string>();
    const uniqueName = (base: string, source: ModelSource) => {
      let name = base;
      if (names.has(name)) name = `${base}@${SOURCE_TAG[source]}`;
      for (let i = 2; names.has(name); i++) name = `${base}@${SOURCE_TAG[source]}-${i}`;
      names.add(name);
      return name;
    };
    const models: ModelEntry[] = modelItems.map((it) => {
      const fixed = fixedByPath.get(path.resolve(it.c.file));
      let loras: LoraAdapter[] = fixed?.loras ?? (it.c.adapters ?? []).map((p) => ({ path: p, scale: 1 }));
      if (!fixed && !it.c.adapters && it.meta) {
        const dir = path.dirname(it.c.file);
        loras = adapterItems.filter((a) => path.dirname(a.c.file) === dir && a.meta!.architecture === it.meta!.architecture).map((a) => ({ path: a.c.file, scale: 1 }));
      }
      return {
        name: uniqueName(it.c.name ?? modelNameFromPath(it.c.file), it.c.source),
        path: path.resolve(it.c.file),
        source: it.c.source,
        ...(loras.length ? { loras } : {}),
        ...(it.shards ? { shards: it.shards.map((s) => path.resolve(s)) } : {}),
        ...(it.meta ? { meta: it.meta } : {}),
        ...(it.problem ? { problem: it.problem } : {}),
      };
    });
    const adapters: ModelEntry[] = adapterItems.map((it) => ({ name: modelNameFromPath(it.c.file), path: path.resolve(it.c.file), source: it.c.source, meta: it.meta }));
    log.debug(`discovery: ${models.length} models, ${adapters.length} adapters from ${roots.filter((r) => r.exists).length} roots in ${(performance.now() - t0).toFixed(0)} ms`);
    return { models, adapters, roots };
  }

  /** Models (including ones that cannot load, with `problem`), in source order. */
  async list(opts: { refresh?: boolean } = {}): Promise<ModelEntry[]> {
    return (await this.scan(opts)).models;
  }

  async get(name: string): Promise<ModelEntry | undefined> {
    const wanted = normalizeModelName(name);
    const find = (list: ModelEntry[]) => list.find((e) => normalizeModelName(e.name) === wanted);
    // A name not seen in the cached scan may be a file just dropped in: rescan once.
    return find(await this.list()) ?? find(await this.list({ refresh: true }));
  }
}
