/**
 * Where models already live on this machine, found without configuration: plain folders, Ollama's
 * store (manifests -> blobs), Hugging Face's hub cache (the snapshot `refs/main` points to) and LM
 * Studio's folders. Walks are synchronous, depth-bounded, follow symlinks without looping, and skip
 * what they cannot read. They only look at names; headers are read later (registry.ts).
 */
import { existsSync, readdirSync, readFileSync, realpathSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { log } from "../log.ts";
import type { ModelSource } from "./types.ts";

export interface Root {
  kind: ModelSource;
  path: string;
}

/** A `.gguf` found in a root, before its header is read. */
export interface Candidate {
  file: string;
  source: ModelSource;
  root: string;
  /** The name its source gives it (Ollama's `model:tag`); else derived from the file name. */
  name?: string;
  /** Adapter layers Ollama's manifest pairs with this model. */
  adapters?: string[];
}

export interface RootReport {
  root: Root;
  exists: boolean;
  files: number;
  error?: string;
}

const MAX_DEPTH = 8;
const MAX_FILES = 200_000;

/**
 * The roots, in order: ./models, SHIMMY_BASE_GGUF's folder, SHIMMY_MODEL_PATHS / --model-dirs,
 * Ollama, Hugging Face, LM Studio, $XDG_DATA_HOME/shimmy/models. Duplicates (by real path) dropped.
 */
export function discoveryRoots(opts: { cwd: string; baseGguf?: string; modelDirs: string[]; env: Record<string, string | undefined>; home?: string }): Root[] {
  const home = opts.home ?? opts.env.HOME ?? os.homedir();
  const env = opts.env;
  const roots: Root[] = [{ kind: "dir", path: path.resolve(opts.cwd, "models") }];
  if (opts.baseGguf) roots.push({ kind: "dir", path: path.dirname(path.resolve(opts.cwd, opts.baseGguf)) });
  for (const d of opts.modelDirs) roots.push({ kind: "dir", path: path.resolve(opts.cwd, d) });
  roots.push({ kind: "ollama", path: env.OLLAMA_MODELS || path.join(home, ".ollama", "models") });
  const hf = env.HF_HUB_CACHE || (env.HF_HOME ? path.join(env.HF_HOME, "hub") : path.join(env.XDG_CACHE_HOME || path.join(home, ".cache"), "huggingface", "hub"));
  roots.push({ kind: "huggingface", path: hf });
  roots.push({ kind: "lmstudio", path: path.join(home, ".lmstudio", "models") });
  roots.push({ kind: "lmstudio", path: path.join(home, ".cache", "lm-studio", "models") });
  roots.push({ kind: "dir", path: path.join(env.XDG_DATA_HOME || path.join(home, ".local", "share"), "shimmy", "models") });
  const seen = new Set<string>();
  return roots.filter((r) => {
    let key = r.path;
    try {
      key = realpathSync(r.path);
    } catch {}
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

/** Every `*.gguf` under `dir`, depth-bounded, symlink loops avoided by real path. */
function walk(dir: string, out: string[], depth = 0, visited = new Set<string>()): void {
  let real: string;
  try {
    real = realpathSync(dir);
  } catch {
    return;
  }
  if (visited.has(real) || depth > MAX_DEPTH || out.length >= MAX_FILES) return;
  visited.add(real);
  const entries = readDir(dir);
  if (!entries) return;
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const e of entries) {
    if (e.name.startsWith(".")) continue;
    const p = path.join(dir, e.name);
    let isDir = e.isDirectory();
    let isFile = e.isFile();
    if (e.isSymbolicLink()) {
      try {
        const st = statSync(p);
        isDir = st.isDirectory();
        isFile = st.isFile();
      } catch {
        continue; // dangling link
      }
    }
    if (isDir) walk(p, out, depth + 1, visited);
    else if (isFile && e.name.toLowerCase().endsWith(".gguf")) out.push(p);
  }
}

/** A folder's entries; undefined (logged at debug) when it cannot be read. */
function readDir(dir: string): import("node:fs").Dirent[] | undefined {
  try {
    return readdirSync(dir, { withFileTypes: true });
  } catch (err) {
    log.debug(`discovery: cannot read ${dir}: ${(err as Error).message}`);
    return undefined;
  }
}

/** Ollama: manifests/<registry>/<namespace>/<model>/<tag> -> the model layer's blob. */
function scanOllama(root: string): Candidate[] {
  const manifests = path.join(root, "manifests");
  const out: Candidate[] = [];
  const files: string[] = [];
  const collect = (dir: string, depth: number) => {
    const entries = readDir(dir);
    if (!entries) return;
    for (const e of entries) {
      const p = path.join(dir, e.name);
      if (e.isDirectory() && depth < 4) collect(p, depth + 1);
      else if (e.isFile() && depth === 3) files.push(p);
    }
  };
  collect(manifests, 0);
  for (const file of files.sort()) {
    const [host, ns, model, tag] = path.relative(manifests, file).split(path.sep) as [string, string, string, string];
    let manifest: unknown;
    try {
      manifest = JSON.parse(readFileSync(file, "utf8"));
    } catch (err) {
      log.debug(`discovery: unreadable Ollama manifest ${file}: ${(err as Error).message}`);
      continue;
    }
    // Keep only well-formed layers: one odd manifest must not hide the others.
    const rawLayers = (manifest as { layers?: unknown } | null)?.layers;
    if (!Array.isArray(rawLayers)) continue;
    const layers = rawLayers.filter((l): l is { mediaType: string; digest: string } => !!l && typeof l === "object" && typeof l.mediaType === "string" && typeof l.digest === "string" && /^sha256[:-][0-9a-f]+$/i.test(l.digest));
    const blob = (digest: string) => path.join(root, "blobs", digest.replace(":", "-"));
    const layer = layers.find((l) => l.mediaType === "application/vnd.ollama.image.model");
    const modelBlob = layer ? blob(layer.digest) : undefined;
    if (!modelBlob || !existsSync(modelBlob)) continue;
    // As `ollama list` shows it: library models as `model:tag`, others with their namespace/host.
    const name = host === "registry.ollama.ai" ? (ns === "library" ? `${model}:${tag}` : `${ns}/${model}:${tag}`) : `${host}/${ns}/${model}:${tag}`;
    const adapters = layers
      .filter((l) => l.mediaType === "application/vnd.ollama.image.adapter")
      .map((l) => blob(l.digest))
      .filter((p) => existsSync(p));
    out.push({ file: modelBlob, source: "ollama", root, name, ...(adapters.length ? { adapters } : {}) });
  }
  return out;
}

/** Hugging Face hub cache: models--org--repo/snapshots/<the revision refs/main names>/**.gguf. */
function scanHuggingFace(root: string): Candidate[] {
  const out: Candidate[] = [];
  let repos: string[];
  try {
    repos = readdirSync(root).filter((d) => d.startsWith("models--")).sort();
  } catch (err) {
    log.debug(`discovery: cannot read ${root}: ${(err as Error).message}`);
    return out;
  }
  for (const repo of repos) {
    const dir = path.join(root, repo);
    let rev: string | undefined;
    try {
      rev = readFileSync(path.join(dir, "refs", "main"), "utf8").trim();
    } catch {}
    let snapshot: string | undefined = rev ? path.join(dir, "snapshots", rev) : undefined;
    if (!snapshot || !existsSync(snapshot)) {
      // No refs/main: the most recently modified snapshot.
      try {
        snapshot = readdirSync(path.join(dir, "snapshots"))
          .map((s) => path.join(dir, "snapshots", s))
          .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs)[0];
      } catch {
        snapshot = undefined;
      }
    }
    if (!snapshot) continue;
    const files: string[] = [];
    walk(snapshot, files);
    for (const f of files) out.push({ file: f, source: "huggingface", root });
  }
  return out;
}

/** Candidates of one root, and what the scan met. */
export function scanRoot(root: Root): { candidates: Candidate[]; report: RootReport } {
  if (!existsSync(root.path)) return { candidates: [], report: { root, exists: false, files: 0 } };
  let candidates: Candidate[];
  try {
    if (root.kind === "ollama") candidates = scanOllama(root.path);
    else if (root.kind === "huggingface") candidates = scanHuggingFace(root.path);
    else {
      const files: string[] = [];
      walk(root.path, files);
      candidates = files.map((file) => ({ file, source: root.kind, root: root.path }));
    }
  } catch (err) {
    return { candidates: [], report: { root, exists: true, files: 0, error: (err as Error).message } };
  }
  return { candidates, report: { root, exists: true, files: candidates.length } };
}

/** `x-00001-of-00003.gguf` -> { base: "x", index: 1, total: 3 }; undefined for other names. */
export function splitPart(file: string): { base: string; index: number; total: number } | undefined {
  const m = path.basename(file).match(/^(.*)-(\d{5})-of-(\d{5})\.gguf$/i);
  return m ? { base: m[1]!, index: Number(m[2]), total: Number(m[3]) } : undefined;
}
