/**
 * `shimmy pull`: resolves a source to the files of one model, skips the ones already in place,
 * downloads the rest into partials (downloads folder), verifies every one, and only then moves them
 * all into the models folder, so a listing never sees a half file or half a split set.
 */
import { existsSync, statfsSync, statSync } from "node:fs";
import path from "node:path";
import { splitPart } from "../engine/discovery.ts";
import { UsageError } from "../errors.ts";
import { log } from "../log.ts";
import { download, ensureWritableDir, hashFile, install, lockPartial, partPaths, type Downloaded, type RemoteFile } from "./download.ts";
import { DiskError, PullError, SourceAuthError, SourceNotFoundError } from "./errors.ts";
import { HubClient, missingParts, pickChoice } from "./hf.ts";
import { humanBytes, type ProgressSink } from "./progress.ts";
import { isInsecureUrl, type PullSource } from "./source.ts";

export interface PullOptions {
  /** Folder the model lands in. */
  dir: string;
  /** Folder for partial downloads; must not be `dir`. */
  downloadsDir: string;
  /** Hugging Face endpoint, no trailing slash. */
  endpoint: string;
  /** Hugging Face token (sent to the endpoint's origin only). */
  token?: string;
  /** Hub revision: branch, tag or commit. Default `main`. */
  revision?: string;
  /** Expected sha256 of each file of a URL source, in part order. */
  sha256?: string[];
  /** Replace a file that exists in `dir` and differs from the source. Default false. */
  force?: boolean;
  /** Failed attempts in a row tolerated per file. Default 5. */
  retries?: number;
  /** Wait before the first retry, ms (doubles). Default 500. */
  retryDelayMs?: number;
  progress: ProgressSink;
  signal?: AbortSignal;
}

export interface PullResult {
  /** The model's file: the single `.gguf`, or the first part of a split set (what llama.cpp loads). */
  path: string;
  /** Every file of the model, in part order. */
  files: string[];
  sizeBytes: number;
  /** sha256 of each file, in part order. */
  sha256: string[];
  /** True when every file was already in place and identical: nothing was downloaded. */
  alreadyPresent: boolean;
  /** What was pulled: `hf:org/repo/path@revision` or the URL. */
  source: string;
}

/** The files a source names, with their published sizes and checksums. */
export async function resolveSource(source: PullSource, o: Pick<PullOptions, "endpoint" | "token" | "revision" | "sha256" | "signal">, hub = new HubClient(o.endpoint, o.token)): Promise<{ files: RemoteFile[]; source: string }> {
  const revision = (source.kind === "hf" ? source.revision : undefined) ?? o.revision ?? "main";
  if (source.kind === "hf") {
    if (o.sha256?.length) throw new UsageError("--sha256 is for URL sources: the hub publishes the sha256 of every file, and each is checked");
    const listing = await hub.listFiles(source.repo, revision, o.signal);
    const choice = pickChoice(source.repo, listing, source.tag);
    const missing = missingParts(choice);
    if (missing.length) throw new SourceNotFoundError(`${source.repo} has an incomplete split set: part${missing.length > 1 ? "s" : ""} ${missing.join(", ")} of ${choice.files[0]!.path} missing`);
    const files = choice.files.map((f) => ({
      url: hub.resolveUrl(source.repo, revision, f.path),
      name: path.posix.basename(f.path),
      label: `${source.repo}/${f.path}`,
      size: f.size,
      ...(f.sha256 ? { sha256: f.sha256 } : {}),
      ...(f.gitOid ? { gitOid: f.gitOid } : {}),
    }));
    return { files, source: `hf:${source.repo}/${choice.files[0]!.path}${revision === "main" ? "" : `@${revision}`}` };
  }
  const url = source.url;
  if (isInsecureUrl(url)) log.warn(`${url.host} is reached over plain http: the download is not encrypted${o.sha256?.length ? "" : " (pass --sha256 to check what arrives)"}`);
  const name = decodeURIComponent(path.posix.basename(url.pathname));
  if (!/\.gguf$/i.test(name) || name.startsWith(".")) throw new UsageError(`the URL must end in a .gguf file name (shimmy lists *.gguf files), got '${name || url.pathname}'`);
  const part = splitPart(name);
  const urls = part
    ? [...Array(part.total)].map((_, i) => {
        const u = new URL(url);
        u.pathname = url.pathname.replace(/-\d{5}-of-(\d{5})\.gguf$/i, (_m, total) => `-${String(i + 1).padStart(5, "0")}-of-${total}.gguf`);
        return u;
      })
    : [url];
  const shas = o.sha256 ?? [];
  if (shas.length && shas.length !== urls.length) throw new UsageError(`--sha256 gives ${shas.length} checksum${shas.length > 1 ? "s" : ""} for ${urls.length} file${urls.length > 1 ? "s" : ""} (a split set takes one per part, comma separated, in part order)`);
  const files: RemoteFile[] = [];
  for (const [i, u] of urls.entries()) {
    const file: RemoteFile = { url: u, name: decodeURIComponent(path.posix.basename(u.pathname)), label: u.href, ...(shas[i] ? { sha256: shas[i] } : {}) };
    Object.assign(file, await probeUrl(u, hub, o.signal));
    files.push(file);
  }
  return { files, source: url.href };
}

/** Size and ETag from a HEAD request; a server that refuses HEAD just leaves them unknown. */
async function probeUrl(url: URL, hub: HubClient, signal?: AbortSignal): Promise<Partial<RemoteFile>> {
  let res: Response;
  try {
    res = await fetch(url, { method: "HEAD", headers: { ...hub.headersFor(url), "accept-encoding": "identity" }, signal: signal ? AbortSignal.any([signal, AbortSignal.timeout(30_000)]) : AbortSignal.timeout(30_000) });
  } catch {
    return {}; // the GET retries and reports connection problems
  }
  if (res.status === 404 || res.status === 410) throw new SourceNotFoundError(`${url.href}: not found (HTTP ${res.status})`);
  if (res.status === 401 || res.status === 403) throw urlAuthError(url, res.status, hub);
  if (!res.ok) return {};
  const len = Number(res.headers.get("content-length") ?? NaN);
  const enc = res.headers.get("content-encoding");
  return { ...(Number.isFinite(len) && len > 0 && (!enc || enc === "identity") ? { size: len } : {}), ...(res.headers.get("etag") ? { etag: res.headers.get("etag")! } : {}) };
}

function urlAuthError(url: URL, status: number, hub: HubClient): PullError {
  const toHub = !!hub.headersFor(url).authorization || url.origin === new URL(hub.endpoint).origin;
  return new SourceAuthError(`${url.href}: access refused (HTTP ${status})${toHub ? ": set HF_TOKEN to a token with read access" : " (HF_TOKEN is only sent to the Hugging Face endpoint)"}`);
}

/** Whether `dest` already holds exactly `file`: "same", "differs", or "unknown" (no size or checksum to compare). */
async function compareExisting(dest: string, file: RemoteFile, progress: ProgressSink): Promise<"same" | "differs" | "unknown"> {
  const size = statSync(dest).size;
  if (file.size !== undefined && size !== file.size) return "differs";
  if (file.sha256) {
    progress.note(`checking ${dest} (${humanBytes(size)})`);
    return (await hashFile(dest)).digest("hex") === file.sha256 ? "same" : "differs";
  }
  return file.size !== undefined ? "same" : "unknown";
}

/** Free bytes where `dir` lives, or undefined when the platform does not say. */
function freeBytes(dir: string): number | undefined {
  try {
    const s = statfsSync(dir);
    return Number(s.bavail) * Number(s.bsize);
  } catch {
    return undefined;
  }
}

/** Pulls one model (all parts of a split set). Blocks until every file is in place and verified. */
export async function pull(source: PullSource, o: PullOptions): Promise<PullResult> {
  const hub = new HubClient(o.endpoint, o.token);
  const resolved = await resolveSource(source, o, hub);
  const files = resolved.files;
  for (const f of files) if (f.name.includes("/") || f.name.includes("\\") || f.name.startsWith(".")) throw new PullError(`refusing the file name '${f.name}'`);
  if (path.resolve(o.dir) === path.resolve(o.downloadsDir)) throw new UsageError(`--dir must not be the downloads folder ${o.downloadsDir}`);
  ensureWritableDir(o.dir);
  ensureWritableDir(o.downloadsDir);

  const dests = files.map((f) => path.join(o.dir, f.name));
  const todo: number[] = [];
  const shas: string[] = files.map((f) => f.sha256 ?? "");
  for (const [i, f] of files.entries()) {
    if (!existsSync(dests[i]!)) {
      todo.push(i);
      continue;
    }
    const same = await compareExisting(dests[i]!, f, o.progress);
    if (same === "same") {
      if (!shas[i]) shas[i] = (await hashFile(dests[i]!)).digest("hex");
      continue;
    }
    if (!o.force) {
      throw new UsageError(
        same === "differs"
          ? `${dests[i]} already exists and differs from ${f.label}: pass --force to replace it`
          : `${dests[i]} already exists and ${f.label} publishes no size or checksum to compare it with: pass --force to download it again, or --sha256 to check it`,
      );
    }
    todo.push(i);
  }
  const result = (alreadyPresent: boolean): PullResult => ({
    path: dests[0]!,
    files: dests,
    sizeBytes: dests.reduce((n, d) => n + statSync(d).size, 0),
    sha256: shas,
    alreadyPresent,
    source: resolved.source,
  });
  if (todo.length === 0) return result(true);

  const need = todo.reduce((n, i) => n + Math.max(0, (files[i]!.size ?? 0) - partSize(o.downloadsDir, files[i]!.name)), 0);
  const free = freeBytes(o.downloadsDir);
  if (free !== undefined && need > free) throw new DiskError(`not enough space in ${o.downloadsDir}: the download needs ${humanBytes(need)}, ${humanBytes(free)} are free`);

  const releases: Array<() => void> = [];
  try {
    for (const i of todo) releases.push(lockPartial(o.downloadsDir, files[i]!.name));
    const done: Array<{ d: Downloaded; i: number }> = [];
    for (const i of todo) {
      const d = await download(files[i]!, {
        downloadsDir: o.downloadsDir,
        headersFor: (u) => hub.headersFor(u),
        errorFor: (res, f) =>
          source.kind === "hf" && f.url.origin === new URL(o.endpoint).origin
            ? hub.errorFor(res, source.repo, source.revision ?? o.revision ?? "main", f.label.slice(source.repo.length + 1))
            : res.status === 401 || res.status === 403
              ? urlAuthError(f.url, res.status, hub)
              : new SourceNotFoundError(`${f.label}: not found (HTTP ${res.status})`),
        progress: o.progress,
        position: files.length > 1 ? `[${i + 1}/${files.length}] ` : "",
        retries: o.retries,
        retryDelayMs: o.retryDelayMs,
        signal: o.signal,
      });
      shas[i] = d.sha256;
      done.push({ d, i });
    }
    // The first part last: llama.cpp opens a split set at its first part, so that part never appears without the others.
    for (const { d, i } of done.sort((a, b) => b.i - a.i)) install(d, dests[i]!);
  } finally {
    for (const release of releases) release();
  }
  return result(false);
}

function partSize(downloadsDir: string, name: string): number {
  try {
    return statSync(partPaths(downloadsDir, name).part).size;
  } catch {
    return 0;
  }
}
