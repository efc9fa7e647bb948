/**
 * The Hugging Face hub, as huggingface_hub and llama.cpp's `-hf` use it: the file list comes from
 * `GET {endpoint}/api/models/{repo}/tree/{revision}?recursive=true` (paged by `Link: rel="next"`;
 * LFS files carry `lfs.oid`, their sha256, and `lfs.size`; a mirror without that route is asked
 * `/api/models/{repo}/revision/{revision}?blobs=true` instead), and files download from
 * `{endpoint}/{repo}/resolve/{revision}/{path}`, which redirects LFS files to a CDN.
 */
import path from "node:path";
import { splitPart } from "../engine/discovery.ts";
import { VERSION } from "../version.ts";
import { AmbiguousSourceError, NoGgufError, PullError, SourceAuthError, SourceNotFoundError } from "./errors.ts";
import { humanBytes } from "./progress.ts";

/** A file of a repository, with what the hub publishes about it. */
export interface RepoFile {
  /** Path inside the repository (`Q4_K_M/model-Q4_K_M-00001-of-00002.gguf`). */
  path: string;
  /** Bytes; undefined when the listing does not say. */
  size?: number;
  /** sha256 of the content (LFS files). */
  sha256?: string;
  /** Git blob SHA-1 (files stored in git itself, without LFS). */
  gitOid?: string;
}

/** One pullable model: a single `.gguf`, or every part of a split set in part order. */
export interface Choice {
  files: RepoFile[];
  /** Quantisation read from the file name (`Q4_K_M`), upper case. */
  quant?: string;
}

/**
 * The quantisation picked when none is asked for: the first of these the repository has. Q4_K_M is
 * the usual size/quality balance (Ollama's and LM Studio's default); then the other 4-5 bit K-quants,
 * the legacy 4-bit, then larger ones. Full-precision files (F16, BF16, F32) are never a default.
 */
export const DEFAULT_QUANTS = ["Q4_K_M", "Q4_K_S", "Q5_K_M", "Q5_K_S", "Q4_0", "Q6_K", "Q8_0", "IQ4_XS", "IQ4_NL"] as const;

const QUANT = /(?:^|[-_.])(I?Q[1-8](?:_[0-9A-Z]+)*|T?Q[12]_0|MXFP4(?:_MOE)?|BF16|F16|F32)(?=$|[-_.])/gi;

/** The last quantisation token of a file name (`Model-7B.Q4_K_M.gguf` -> `Q4_K_M`). */
export function quantOf(file: string): string | undefined {
  const stem = path.posix.basename(file).replace(/(?:-\d{5}-of-\d{5})?\.gguf$/i, "");
  const all = [...stem.matchAll(QUANT)];
  return all.length ? all[all.length - 1]![1]!.toUpperCase() : undefined;
}

/** How a choice is shown in lists: its first file, the number of parts, the size. */
export function describeChoice(c: Choice): string {
  const size = c.files.reduce((n, f) => n + (f.size ?? 0), 0);
  const parts = c.files.length > 1 ? ` (+${c.files.length - 1} more part${c.files.length > 2 ? "s" : ""})` : "";
  return `${c.files[0]!.path}${parts}  ${humanBytes(size)}${c.quant ? `  [${c.quant}]` : ""}`;
}

/** Groups `.gguf` files into choices: split parts of one set together, everything else alone. */
export function groupChoices(files: RepoFile[]): Choice[] {
  const out: Choice[] = [];
  const sets = new Map<string, Choice & { total: number }>();
  for (const f of files.filter((f) => f.path.toLowerCase().endsWith(".gguf"))) {
    const part = splitPart(f.path);
    if (!part) {
      out.push({ files: [f], quant: quantOf(f.path) });
      continue;
    }
    const key = `${path.posix.dirname(f.path)}/${part.base}/${part.total}`;
    let set = sets.get(key);
    if (!set) {
      set = { files: [], quant: quantOf(f.path), total: part.total };
      sets.set(key, set);
      out.push(set);
    }
    set.files.push(f);
  }
  for (const set of sets.values()) set.files.sort((a, b) => splitPart(a.path)!.index - splitPart(b.path)!.index);
  return out.map(({ files, quant }) => ({ files, quant }));
}

/** Missing parts of a split choice (`[2, 3]`), empty for a complete set or a single file. */
export function missingParts(c: Choice): number[] {
  const part = splitPart(c.files[0]!.path);
  if (!part) return [];
  const have = new Set(c.files.map((f) => splitPart(f.path)!.index));
  return [...Array(part.total)].map((_, i) => i + 1).filter((i) => !have.has(i));
}

const isProjector = (c: Choice) => /mmproj/i.test(path.posix.basename(c.files[0]!.path));

/**
 * Picks what to pull from a repository's GGUF files. No tag: the only model file, else the first of
 * DEFAULT_QUANTS present. A tag ending in `.gguf`: that file (a split part brings its whole set). Any
 * other tag: files of that quantisation (case-insensitive), else files whose path holds the tag as a
 * `-`/`.`/`/`-delimited word. Several matches (or no default among several files) is an
 * AmbiguousSourceError listing them; none is a SourceNotFoundError listing what there is.
 */
export function pickChoice(repo: string, files: RepoFile[], tag?: string): Choice {
  const all = groupChoices(files);
  if (all.length === 0) throw new NoGgufError(`${repo} has no .gguf file${files.length ? ` (it holds ${files.length} other file${files.length > 1 ? "s" : ""})` : ""}: shimmy pulls GGUF models only`);
  const models = all.filter((c) => !isProjector(c));
  const listing = (cs: Choice[]) => cs.map(describeChoice);
  const one = (cs: Choice[], what: string): Choice => {
    if (cs.length > 1) throw new AmbiguousSourceError(`${what} matches ${cs.length} files in ${repo}`, listing(cs));
    return cs[0]!;
  };
  if (!tag) {
    if (models.length === 0) throw new NoGgufError(`${repo} holds only multimodal projector files (${all.map((c) => c.files[0]!.path).join(", ")}), no model`);
    if (models.length === 1) return models[0]!;
    for (const q of DEFAULT_QUANTS) {
      const hits = models.filter((c) => c.quant === q);
      if (hits.length) return one(hits, `the default quantisation ${q}`);
    }
    throw new AmbiguousSourceError(`${repo} has ${models.length} GGUF models and none of the default quantisations (${DEFAULT_QUANTS.join(", ")})`, listing(models));
  }
  if (/\.gguf$/i.test(tag)) {
    const wanted = tag.replace(/^\/+/, "");
    const exact = all.filter((c) => c.files.some((f) => f.path === wanted));
    const byName = exact.length ? exact : all.filter((c) => c.files.some((f) => f.path.toLowerCase() === wanted.toLowerCase() || path.posix.basename(f.path).toLowerCase() === wanted.toLowerCase()));
    if (byName.length === 0) throw new SourceNotFoundError(`file '${wanted}' not found in ${repo}; its GGUF files:\n${listing(all).map((l) => `  ${l}`).join("\n")}`);
    return one(byName, `'${wanted}'`);
  }
  const t = tag.toUpperCase();
  const pool = /MMPROJ/.test(t) ? all : models;
  const exact = pool.filter((c) => c.quant === t);
  if (exact.length) return one(exact, `'${tag}'`);
  const word = new RegExp(`(?:^|[-_./ ])${t.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}(?=$|[-./ ])`);
  const loose = pool.filter((c) => word.test(c.files[0]!.path.toUpperCase()));
  if (loose.length) return one(loose, `'${tag}'`);
  throw new SourceNotFoundError(`no GGUF file matching '${tag}' in ${repo}; available:\n${listing(all).map((l) => `  ${l}`).join("\n")}`);
}

/** Talks to one hub endpoint with one (optional) token. */
export class HubClient {
  constructor(
    /** Endpoint without a trailing slash (`https://huggingface.co`). */
    readonly endpoint: string,
    /** Sent as `Authorization: Bearer` to the endpoint's origin only. */
    private readonly token?: string,
  ) {}

  /** Headers for a request to `url`: the token only for the endpoint's origin (a CDN never sees it). */
  headersFor(url: URL): Record<string, string> {
    const headers: Record<string, string> = { "user-agent": `shimmy/${VERSION}` };
    if (this.token && url.origin === new URL(this.endpoint).origin) headers.authorization = `Bearer ${this.token}`;
    return headers;
  }

  /** The download URL of a repository file. */
  resolveUrl(repo: string, revision: string, file: string): URL {
    return new URL(`${this.endpoint}/${repo}/resolve/${encodeURIComponent(revision)}/${file.split("/").map(encodeURIComponent).join("/")}`);
  }

  /** Every file of the repository at `revision` (all pages, all folders). */
  async listFiles(repo: string, revision: string, signal?: AbortSignal): Promise<RepoFile[]> {
    const files: RepoFile[] = [];
    let next: string | undefined = `${this.endpoint}/api/models/${repo}/tree/${encodeURIComponent(revision)}?recursive=true`;
    for (let page = 0; next && page < 1000; page++) {
      const url: URL = new URL(next);
      let res: Response;
      try {
        res = await fetch(url, { headers: this.headersFor(url), signal });
      } catch (err) {
        throw new PullError(`cannot reach ${this.endpoint}: ${(err as Error).message}`, { cause: err });
      }
      if (res.status === 404 && page === 0 && !res.headers.get("x-error-code")) return this.listSiblings(repo, revision, signal);
      if (!res.ok) throw this.errorFor(res, repo, revision);
      let entries: unknown;
      try {
        entries = await res.json();
      } catch (err) {
        throw new PullError(`${this.endpoint} answered the file list of ${repo} with something that is not JSON`, { cause: err });
      }
      if (!Array.isArray(entries)) throw new PullError(`${this.endpoint} answered the file list of ${repo} with an unexpected shape`);
      for (const e of entries as Array<Record<string, any>>) {
        if (e?.type !== "file" || typeof e.path !== "string") continue;
        const sha256 = typeof e.lfs?.oid === "string" && /^[0-9a-f]{64}$/i.test(e.lfs.oid) ? e.lfs.oid.toLowerCase() : undefined;
        const size = Number(e.lfs?.size ?? e.size);
        files.push({ path: e.path, size: Number.isFinite(size) ? size : undefined, ...(sha256 ? { sha256 } : typeof e.oid === "string" && /^[0-9a-f]{40}$/i.test(e.oid) ? { gitOid: e.oid.toLowerCase() } : {}) });
      }
      next = res.headers.get("link")?.match(/<([^>]+)>\s*;\s*rel="?next"?/)?.[1];
      if (next) next = new URL(next, url).href;
    }
    return files;
  }

  /** The file list from the model-info API (`?blobs=true`: `siblings` with `rfilename`, `size`, `lfs.sha256`), for mirrors without the tree API. */
  private async listSiblings(repo: string, revision: string, signal?: AbortSignal): Promise<RepoFile[]> {
    const url = new URL(`${this.endpoint}/api/models/${repo}/revision/${encodeURIComponent(revision)}?blobs=true`);
    let res: Response;
    try {
      res = await fetch(url, { headers: this.headersFor(url), signal });
    } catch (err) {
      throw new PullError(`cannot reach ${this.endpoint}: ${(err as Error).message}`, { cause: err });
    }
    if (!res.ok) throw this.errorFor(res, repo, revision);
    const info = (await res.json().catch(() => undefined)) as { siblings?: Array<Record<string, any>> } | undefined;
    if (!Array.isArray(info?.siblings)) throw new PullError(`${this.endpoint} answered the model info of ${repo} without a file list`);
    return info.siblings
      .filter((s) => typeof s?.rfilename === "string")
      .map((s) => {
        const sha256 = typeof s.lfs?.sha256 === "string" && /^[0-9a-f]{64}$/i.test(s.lfs.sha256) ? s.lfs.sha256.toLowerCase() : undefined;
        const size = Number(s.lfs?.size ?? s.size);
        return { path: s.rfilename as string, size: Number.isFinite(size) ? size : undefined, ...(sha256 ? { sha256 } : typeof s.blobId === "string" && /^[0-9a-f]{40}$/i.test(s.blobId) ? { gitOid: s.blobId.toLowerCase() } : {}) };
      });
  }

  /** The error for a failed hub answer, from its status and `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo). */
  errorFor(res: Response, repo: string, revision: string, file?: string): PullError {
    const code = res.headers.get("x-error-code") ?? "";
    const detail = res.headers.get("x-error-message");
    const where = `${this.endpoint}`;
    const tokenHint = this.token ? "HF_TOKEN is set but was refused: check that it is valid and has read access" : "set HF_TOKEN to a token with read access";
    if (code === "GatedRepo") return new SourceAuthError(`${repo} is gated: accept its terms on ${where}/${repo}, then ${this.token ? "check that HF_TOKEN belongs to that account" : "set HF_TOKEN to a token of that account"}`);
    if (code === "RepoNotFound" || (res.status === 404 && !code && !file)) {
      return new SourceNotFoundError(`repository ${repo} not found on ${where}${res.status === 401 || !this.token ? ` (if it is private or gated, ${tokenHint})` : ""}`);
    }
    if (code === "RevisionNotFound") return new SourceNotFoundError(`revision '${revision}' not found in ${repo} on ${where}`);
    if (code === "EntryNotFound" || res.status === 404) return new SourceNotFoundError(`file '${file ?? "?"}' not found in ${repo} (revision ${revision}) on ${where}`);
    if (res.status === 401 || res.status === 403) return new SourceAuthError(`${where} refused access to ${repo} (HTTP ${res.status}${detail ? `: ${detail}` : ""}): ${tokenHint}`);
    return new PullError(`${where} answered HTTP ${res.status} for ${file ? `${repo}/${file}` : `the file list of ${repo}`}${detail ? `: ${detail}` : ""}`);
  }
}
