/**
 * One file from a URL into `<downloadsDir>/<name>.part`, resumable, then verified and moved into the
 * models folder in one rename. A sidecar `<name>.part.json` records what the partial belongs to (URL,
 * size, checksum, ETag); a partial that belongs to something else is started over. A dropped or stalled
 * connection is retried with `Range: bytes=<have>-` (and `If-Range` on a strong ETag); a server that
 * answers 200 to a Range request is restarted from zero; 416 means the partial is complete (or wrong).
 */
import { createHash, type Hash } from "node:crypto";
import { createReadStream, existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, copyFileSync, truncateSync, writeFileSync } from "node:fs";
import { open } from "node:fs/promises";
import path from "node:path";
import { ShimmyError } from "../errors.ts";
import { ChecksumError, DiskError, NetworkError, PullError } from "./errors.ts";
import { humanBytes, type ProgressSink } from "./progress.ts";

/** A file to fetch and what its source publishes about it. */
export interface RemoteFile {
  url: URL;
  /** File name in the models folder. */
  name: string;
  /** How messages name it: `org/repo/path` or the URL. */
  label: string;
  /** Size the source publishes; undefined until a response says. */
  size?: number;
  /** sha256 the source publishes (or `--sha256`), lower-case hex. */
  sha256?: string;
  /** Git blob SHA-1 (a hub file stored without LFS). */
  gitOid?: string;
  /** The server's ETag, when a HEAD request gave one. */
  etag?: string;
}

export interface DownloadOptions {
  /** Where `.part` files and their sidecars live. */
  downloadsDir: string;
  /** Request headers for a URL (the hub adds its token only for its own origin). */
  headersFor(url: URL): Record<string, string>;
  /** The error for a 401/403/404 answer (never retried). */
  errorFor(res: Response, file: RemoteFile): Error;
  progress: ProgressSink;
  /** Prefix of the progress label (`[2/3] `). Default none. */
  position?: string;
  /** Consecutive failed attempts (without a byte received) tolerated before giving up. Default 5. */
  retries?: number;
  /** Wait before the first retry, ms; doubles each time, at most 30 s. Default 500. */
  retryDelayMs?: number;
  /** A response that sends nothing for this long is dropped and retried, ms. Default 60000. */
  stallTimeoutMs?: number;
  signal?: AbortSignal;
}

/** A complete, verified partial, ready to be moved into place. */
export interface Downloaded {
  file: RemoteFile;
  partPath: string;
  size: number;
  sha256: string;
  /** Which published value the content was checked against. */
  verified: "sha256" | "git" | "size" | "none";
}

interface Sidecar {
  url: string;
  size?: number;
  sha256?: string;
  gitOid?: string;
  etag?: string;
}

/** A failure worth another attempt: a dropped, stalled or refused connection, a 429 or 5xx. */
class RetryableError extends Error {}

const DISK_CODES = new Set(["ENOSPC", "EDQUOT", "EACCES", "EPERM", "EROFS", "ENOTDIR", "EISDIR", "EEXIST", "EMFILE", "ENAMETOOLONG", "EIO"]);

/** A file-system failure as a DiskError naming what was being done; other errors as they are. */
export function diskError(err: unknown, what: string): Error {
  const code = (err as NodeJS.ErrnoException)?.code;
  if (!code || !DISK_CODES.has(code)) return err as Error;
  const why =
    code === "ENOSPC" || code === "EDQUOT" ? "no space left on the device" : code === "EACCES" || code === "EPERM" ? "permission denied" : code === "EROFS" ? "read-only file system" : code === "ENOTDIR" ? "a path component is not a directory" : (err as Error).message;
  return new DiskError(`cannot ${what}: ${why} (${code})`, { cause: err });
}

/** Creates a folder (and its parents) and checks that it is writable; DiskError otherwise. */
export function ensureWritableDir(dir: string): void {
  try {
    mkdirSync(dir, { recursive: true });
    const probe = path.join(dir, `.shimmy-write-test-${process.pid}`);
    writeFileSync(probe, "");
    rmSync(probe, { force: true });
  } catch (err) {
    const e = diskError(err, `write to ${dir}`);
    throw e instanceof ShimmyError ? e : new DiskError(`cannot write to ${dir}: ${(err as Error).message}`, { cause: err });
  }
}

export function partPaths(downloadsDir: string, name: string): { part: string; meta: string; lock: string } {
  const part = path.join(downloadsDir, `${name}.part`);
  return { part, meta: `${part}.json`, lock: `${part}.lock` };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * Claims the partial of `name` for this process (a `.lock` file holding the pid), so two pulls of one
 * file never write the same partial; a lock whose process is gone is taken over. Returns the release.
 */
export function lockPartial(downloadsDir: string, name: string): () => void {
  const { lock } = partPaths(downloadsDir, name);
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      writeFileSync(lock, String(process.pid), { flag: "wx" });
      return () => rmSync(lock, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw diskError(err, `write ${lock}`);
    }
    let pid = 0;
    try {
      pid = Number(readFileSync(lock, "utf8").trim());
    } catch {}
    if (Number.isSafeInteger(pid) && pid > 0 && pid !== process.pid && alive(pid)) throw new PullError(`another shimmy pull (pid ${pid}) is downloading ${name}: wait for it to finish (or remove ${lock} if that process is not shimmy)`);
    rmSync(lock, { force: true });
  }
  throw new PullError(`cannot lock ${lock}`);
}

/** sha256 of the first `upTo` bytes of a file (all of it when undefined; none when 0 or missing). */
export async function hashFile(file: string, upTo?: number): Promise<Hash> {
  const hash = createHash("sha256");
  if (upTo === 0 || !existsSync(file)) return hash;
  for await (const chunk of createReadStream(file, upTo === undefined ? {} : { end: upTo - 1 })) hash.update(chunk as Buffer);
  return hash;
}

function readSidecar(file: string): Sidecar | undefined {
  try {
    const s = JSON.parse(readFileSync(file, "utf8")) as Sidecar;
    return typeof s?.url === "string" ? s : undefined;
  } catch {
    return undefined;
  }
}

function sizeOf(file: string): number {
  try {
    return statSync(file).size;
  } catch {
    return 0;
  }
}

/** Content-Range `bytes 100-199/1000` gives {start: 100, total: 1000}; the unsatisfied form a 416 carries (a star instead of the range) gives {total}. */
function contentRange(value: string | null): { start?: number; total?: number } {
  const m = value?.match(/^bytes\s+(?:(\d+)-\d+|\*)\/(\d+|\*)$/i);
  if (!m) return {};
  return { start: m[1] === undefined ? undefined : Number(m[1]), total: m[2] === "*" ? undefined : Number(m[2]) };
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => (clearTimeout(t), reject(signal.reason)), { once: true });
  });

/**
 * Downloads `file` into its partial, resuming what an earlier run left, retrying dropped connections,
 * and verifies it against the published size and checksum. A checksum mismatch deletes the partial
 * (ChecksumError); any other failure keeps it for the next run. Blocks until the file is complete.
 */
export async function download(file: RemoteFile, o: DownloadOptions): Promise<Downloaded> {
  const retries = o.retries ?? 5;
  const { part, meta } = partPaths(o.downloadsDir, file.name);
  const discard = () => {
    rmSync(part, { force: true });
    rmSync(meta, { force: true });
  };
  let side = readSidecar(meta);
  const belongs =
    side &&
    side.url === file.url.href &&
    (file.size === undefined || side.size === undefined || side.size === file.size) &&
    (!file.sha256 || !side.sha256 || side.sha256 === file.sha256) &&
    (!file.gitOid || !side.gitOid || side.gitOid === file.gitOid);
  if (!belongs) {
    discard();
    side = { url: file.url.href };
  }
  side = { ...side!, ...(file.size !== undefined ? { size: file.size } : {}), ...(file.sha256 ? { sha256: file.sha256 } : {}), ...(file.gitOid ? { gitOid: file.gitOid } : {}), ...(!side!.etag && file.etag ? { etag: file.etag } : {}) };
  const save = () => {
    try {
      writeFileSync(meta, JSON.stringify(side));
    } catch (err) {
      throw diskError(err, `write ${meta}`);
    }
  };
  save();

  const label = `${o.position ?? ""}${file.name}`;
  let have = sizeOf(part);
  let hash = createHash("sha256");
  const restart = () => {
    try {
      if (existsSync(part)) truncateSync(part, 0);
    } catch (err) {
      throw diskError(err, `truncate ${part}`);
    }
    have = 0;
    hash = createHash("sha256");
  };
  if (side.size !== undefined && have > side.size) restart();
  if (have > 256 * 1024 * 1024) o.progress.note(`${label}: checking the ${humanBytes(have)} downloaded before`);
  if (have > 0) hash = await hashFile(part, have);
  o.progress.start(label, side.size, have);

  let failures = 0;
  for (;;) {
    if (side.size !== undefined && have === side.size) break;
    const headers: Record<string, string> = { ...o.headersFor(file.url), "accept-encoding": "identity" };
    if (have > 0) {
      headers.range = `bytes=${have}-`;
      if (side.etag && !side.etag.startsWith("W/")) headers["if-range"] = side.etag;
    }
    const stall = new AbortController();
    let stallTimer: ReturnType<typeof setTimeout> | undefined;
    const armStall = () => {
      clearTimeout(stallTimer);
      stallTimer = setTimeout(() => stall.abort(new RetryableError(`no data for ${Math.round((o.stallTimeoutMs ?? 60_000) / 1000)} s`)), o.stallTimeoutMs ?? 60_000);
    };
    let received = 0;
    try {
      armStall();
      const res = await fetch(file.url, { headers, signal: o.signal ? AbortSignal.any([stall.signal, o.signal]) : stall.signal, redirect: "follow" });
      if (res.status === 416) {
        await res.body?.cancel().catch(() => {});
        const { total } = contentRange(res.headers.get("content-range"));
        if (total !== undefined && total === have && (side.size === undefined || side.size === total)) {
          side.size = total;
          break;
        }
        o.progress.note(`${label}: the server cannot resume at ${humanBytes(have)} (HTTP 416): starting over`);
        restart();
        throw new RetryableError("HTTP 416");
      }
      if (res.status === 401 || res.status === 403 || res.status === 404 || res.status === 410) {
        await res.body?.cancel().catch(() => {});
        throw o.errorFor(res, file);
      }
      if (res.status === 408 || res.status === 429 || res.status >= 500) {
        await res.body?.cancel().catch(() => {});
        throw new RetryableError(`HTTP ${res.status}`);
      }
      if (res.status !== 200 && res.status !== 206) {
        await res.body?.cancel().catch(() => {});
        throw new PullError(`${file.label}: the server answered HTTP ${res.status}`);
      }
      let start = 0;
      let total: number | undefined;
      if (res.status === 206) ({ start = 0, total } = contentRange(res.headers.get("content-range")));
      else if (!res.headers.get("content-encoding") || res.headers.get("content-encoding") === "identity") {
        const len = Number(res.headers.get("content-length") ?? NaN);
        total = Number.isFinite(len) ? len : undefined;
      }
      if (start !== have) {
        if (have > 0) o.progress.note(`${label}: the server sent the whole file instead of resuming at ${humanBytes(have)}: starting over`);
        restart();
        if (start !== 0) throw new RetryableError(`the server resumed at byte ${start}, not ${have}`);
      }
      if (total !== undefined) {
        if (side.size !== undefined && total !== side.size) {
          await res.body?.cancel().catch(() => {});
          discard();
          throw new ChecksumError(`${file.label}: the source publishes ${side.size} bytes but the server sends ${total}; nothing was kept`);
        }
        side.size = total;
      }
      const etag = res.headers.get("etag");
      if (etag) side.etag = etag;
      save();
      o.progress.update(have, side.size);
      if (!res.body) throw new RetryableError("empty response");
      let fh: Awaited<ReturnType<typeof open>>;
      try {
        fh = await open(part, "a");
      } catch (err) {
        throw diskError(err, `write ${part}`);
      }
      try {
        for await (const chunk of res.body) {
          armStall();
          try {
            await fh.write(chunk);
          } catch (err) {
            throw diskError(err, `write ${part}`);
          }
          hash.update(chunk);
          have += chunk.length;
          received += chunk.length;
          if (side.size !== undefined && have > side.size) {
            discard();
            throw new ChecksumError(`${file.label}: the server sent more than the ${side.size} bytes published; nothing was kept`);
          }
          o.progress.update(have);
        }
      } finally {
        await fh.close().catch(() => {});
      }
      if (side.size === undefined) {
        side.size = have;
        save();
        break;
      }
      if (have < side.size) throw new RetryableError(`the connection closed at ${humanBytes(have)} of ${humanBytes(side.size)}`);
    } catch (err) {
      if (o.signal?.aborted) throw o.signal.reason ?? err;
      if (err instanceof ShimmyError) throw err;
      if (received > 0) failures = 0;
      failures++;
      const reason = stall.signal.aborted ? (stall.signal.reason as Error).message : why(err);
      if (failures > retries) {
        if (have === 0) discard();
        throw new NetworkError(`${file.label}: download failed after ${failures} attempt${failures > 1 ? "s" : ""}: ${reason}; ${have > 0 ? `${humanBytes(have)} are kept in ${part}: run the same pull again to resume` : "nothing was downloaded"}`, { cause: err });
      }
      const delay = Math.min(30_000, (o.retryDelayMs ?? 500) * 2 ** (failures - 1));
      o.progress.note(`warn: ${label}: ${reason}${have > 0 ? ` at ${humanBytes(have)}` : ""}; retrying in ${(delay / 1000).toFixed(1)} s (attempt ${failures + 1} of ${retries + 1})`);
      await sleep(delay, o.signal);
    } finally {
      clearTimeout(stallTimer);
    }
  }

  const sha256 = hash.digest("hex");
  const size = have;
  const mismatch = (what: string, want: string, got: string) => {
    discard();
    return new ChecksumError(`${file.label}: ${what} mismatch: the source publishes ${want}, the download has ${got}; the partial download was deleted`);
  };
  if (file.size !== undefined && size !== file.size) throw mismatch("size", `${file.size} bytes`, `${size} bytes`);
  let verified: Downloaded["verified"] = file.size !== undefined ? "size" : "none";
  if (file.sha256) {
    if (sha256 !== file.sha256) throw mismatch("sha256", file.sha256, sha256);
    verified = "sha256";
  } else if (file.gitOid) {
    // A git blob id is sha1("blob <size>\0" + content); the header comes first, so hash again.
    const git = createHash("sha1").update(`blob ${size}\0`);
    for await (const chunk of createReadStream(part)) git.update(chunk as Buffer);
    const oid = git.digest("hex");
    if (oid !== file.gitOid) throw mismatch("git blob id", file.gitOid, oid);
    verified = "git";
  }
  o.progress.finish(verified === "sha256" ? "sha256 verified" : verified === "git" ? "git checksum verified" : verified === "size" ? "size verified (no checksum published)" : "not verified (no size or checksum published)");
  return { file, partPath: part, size, sha256, verified };
}

const NETWORK_CODES: Record<string, string> = {
  ECONNRESET: "the connection was reset",
  ECONNREFUSED: "connection refused",
  ConnectionRefused: "connection refused",
  ConnectionClosed: "the connection closed",
  FailedToOpenSocket: "cannot open a connection",
  ETIMEDOUT: "the connection timed out",
  ENOTFOUND: "host not found",
  EAI_AGAIN: "host name lookup failed",
};

/** A short reason for a failed attempt (Bun's fetch messages carry a long hint about `verbose`). */
function why(err: unknown): string {
  const code = (err as { code?: string })?.code;
  if (code && NETWORK_CODES[code]) return `${NETWORK_CODES[code]} (${code})`;
  return ((err as Error)?.message ?? String(err)).replace(/\s*For more information, pass `verbose: true`.*$/s, "");
}

/**
 * Moves a verified partial to `dest` in one rename (through a hidden temp file in the same folder when
 * the partial is on another file system), then drops its sidecar. A model already loaded from `dest`
 * keeps its old inode, so a server using it never sees a half-written file.
 */
export function install(d: Downloaded, dest: string): void {
  try {
    mkdirSync(path.dirname(dest), { recursive: true });
    try {
      renameSync(d.partPath, dest);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EXDEV") throw err;
      const tmp = path.join(path.dirname(dest), `.${path.basename(dest)}.pulling-${process.pid}`);
      try {
        copyFileSync(d.partPath, tmp);
        renameSync(tmp, dest);
      } finally {
        rmSync(tmp, { force: true });
      }
      rmSync(d.partPath, { force: true });
    }
    rmSync(`${d.partPath}.json`, { force: true });
  } catch (err) {
    const e = diskError(err, `move ${d.partPath} to ${dest}`);
    throw e instanceof ShimmyError ? e : new DiskError(`cannot move ${d.partPath} to ${dest}: ${(err as Error).message}`, { cause: err });
  }
}
