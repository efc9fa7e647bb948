/**
 * The native runtime of a single-file executable. `build.ts` embeds llama.cpp's native files (the
 * `@node-llama-cpp/<platform>` packages and node-llama-cpp's data files) as one reproducible
 * archive and sets `globalThis.__shimmyEmbedded` before shimmy starts. At first use the archive is
 * extracted into `<runtime dir>/<content hash>` (temp dir + atomic rename, so simultaneous first runs
 * are safe), checked on every start (a truncated or modified file means re-extraction), and other
 * versions are pruned. The bundled node-llama-cpp code asks `globalThis.__shimmyNativeUrl` where
 * its files are (build.ts rewrites its `import.meta.url` to that call).
 *
 * Run from source, none of this applies: node-llama-cpp lives in node_modules.
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { BackendError } from "../errors.ts";
import { log } from "../log.ts";

/** What build.ts embeds (manifest.json plus the archive's path inside the executable). */
export interface EmbeddedRuntime {
  /** Path of the embedded archive inside the executable ($bunfs). */
  archive: string;
  /** First 16 hex digits of the archive's sha256; names the extraction dir. */
  hash: string;
  /** Build target, e.g. `linux-x64`. */
  target: string;
  /** Embedded `@node-llama-cpp/*` package names. */
  packages: string[];
  /** GPU/CPU backends compiled in: cpu, cuda, vulkan, metal. */
  backends: string[];
  llamaCppRelease: string;
  nodeLlamaCppVersion: string;
  /** Every embedded file with its size, for the integrity check. */
  files: Array<{ path: string; size: number }>;
}

declare global {
  var __shimmyEmbedded: EmbeddedRuntime | undefined;
  var __shimmyNativeUrl: ((packageRelativePath: string) => string) | undefined;
  /** In a single-file executable: starts node-llama-cpp's binary self-test child (see build.ts). */
  var __shimmyBindingTestChild: (() => void) | undefined;
}

const STAMP = ".shimmy-runtime.json";

export function embeddedRuntime(): EmbeddedRuntime | undefined {
  return globalThis.__shimmyEmbedded;
}

/** Parent dir of extracted runtimes: `SHIMMY_RUNTIME_DIR`, else the cache dir's `runtime/`. */
export function runtimeBaseDir(runtimeDir: string | undefined, cacheDir: string): string {
  return runtimeDir ?? path.join(cacheDir, "runtime");
}

function writable(dir: string): boolean {
  try {
    mkdirSync(dir, { recursive: true });
    const probe = path.join(dir, `.probe-${process.pid}-${Math.random().toString(36).slice(2)}`);
    writeFileSync(probe, "");
    rmSync(probe);
    return true;
  } catch {
    return false;
  }
}

type Stamp = { hash: string; files: Array<{ path: string; size: number; mtimeMs: number }> };

/** True when `dir` holds exactly what the manifest lists, untouched since extraction. */
function intact(dir: string, rt: EmbeddedRuntime): boolean {
  let stamp: Stamp;
  try {
    stamp = JSON.parse(readFileSync(path.join(dir, STAMP), "utf8"));
  } catch {
    return false;
  }
  if (stamp.hash !== rt.hash || stamp.files.length !== rt.files.length) return false;
  for (const f of stamp.files) {
    try {
      const st = statSync(path.join(dir, f.path));
      if (st.size !== f.size || st.mtimeMs !== f.mtimeMs) return false;
    } catch {
      return false;
    }
  }
  return true;
}

async function extract(rt: EmbeddedRuntime, base: string, target: string): Promise<void> {
  const tmp = path.join(base, `.tmp-${rt.hash}-${process.pid}-${Math.random().toString(36).slice(2)}`);
  try {
    mkdirSync(tmp, { recursive: true });
    const bytes = await Bun.file(rt.archive).bytes();
    await new Bun.Archive(bytes).extract(tmp);
    const files = rt.files.map((f) => {
      const st = statSync(path.join(tmp, f.path));
      if (st.size !== f.size) throw new Error(`embedded file ${f.path} extracted with ${st.size} bytes, expected ${f.size}`);
      return { path: f.path, size: st.size, mtimeMs: st.mtimeMs };
    });
    writeFileSync(path.join(tmp, STAMP), JSON.stringify({ hash: rt.hash, files } satisfies Stamp));
    try {
      renameSync(tmp, target);
    } catch (err) {
      // Another process finished first: use its copy if it is whole.
      if (!intact(target, rt)) throw err;
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

/** Removes other versions' runtimes and leftovers of interrupted extractions (best effort). */
function prune(base: string, keep: string): void {
  const hourAgo = Date.now() - 3600_000;
  for (const name of readdirSync(base)) {
    if (name === keep) continue;
    const p = path.join(base, name);
    try {
      // Leftover temp dirs may belong to a run in progress: only old ones go.
      if (name.startsWith(".tmp-") || name.startsWith(".bad-")) {
        if (statSync(p).mtimeMs < hourAgo) rmSync(p, { recursive: true, force: true });
      } else if (existsSync(path.join(p, STAMP))) rmSync(p, { recursive: true, force: true });
    } catch {}
  }
}

let ready: Promise<string | undefined> | undefined;

/**
 * Makes the embedded native runtime usable and returns its directory (undefined when running from
 * source). Idempotent. Tries the runtime base dir, then the temp dir when that is not writable.
 */
export function ensureNativeRuntime(opts: { runtimeDir?: string; cacheDir: string }): Promise<string | undefined> {
  ready ??= (async () => {
    const rt = embeddedRuntime();
    if (!rt) return undefined;
    const candidates = [runtimeBaseDir(opts.runtimeDir, opts.cacheDir), path.join(os.tmpdir(), `shimmy-runtime-${os.userInfo().uid}`)];
    let lastError: unknown;
    for (const base of candidates) {
      if (!writable(base)) {
        lastError = new Error(`${base} is not writable`);
        continue;
      }
      const dir = path.join(base, rt.hash);
      try {
        if (!intact(dir, rt)) {
          if (existsSync(dir)) {
            log.warn(`native runtime in ${dir} is incomplete or modified: extracting it again`);
            renameSync(dir, path.join(base, `.bad-${rt.hash}-${process.pid}-${Date.now()}`));
          }
          await extract(rt, base, dir);
        }
        prune(base, rt.hash);
        globalThis.__shimmyNativeUrl = (rel: string) => pathToFileURL(path.join(dir, rel)).href;
        return dir;
      } catch (err) {
        lastError = err;
      }
    }
    throw new BackendError(`cannot prepare the native runtime: ${(lastError as Error)?.message ?? lastError}`);
  })();
  ready.catch(() => (ready = undefined));
  return ready;
}

/** llama.cpp release and backends compiled in, without loading native code. */
export function nativeBuildInfo(): { llamaCppRelease: string; nodeLlamaCppVersion: string; backends: string[]; target: string } {
  const rt = embeddedRuntime();
  if (rt) return { llamaCppRelease: rt.llamaCppRelease, nodeLlamaCppVersion: rt.nodeLlamaCppVersion, backends: rt.backends, target: rt.target };
  // From source: read node-llama-cpp's files and see which prebuilt packages are installed.
  let release = "unknown";
  let version = "unknown";
  const backends = new Set<string>();
  try {
    const pkgDir = path.dirname(path.dirname(Bun.resolveSync("node-llama-cpp", import.meta.dir)));
    release = JSON.parse(readFileSync(path.join(pkgDir, "llama", "binariesGithubRelease.json"), "utf8")).release;
    version = JSON.parse(readFileSync(path.join(pkgDir, "package.json"), "utf8")).version;
  } catch {}
  const plat = process.platform === "darwin" ? "mac" : process.platform === "win32" ? "win" : process.platform;
  for (const [suffix, backend] of [["", "cpu"], ["-vulkan", "vulkan"], ["-cuda", "cuda"], ["-metal", "metal"]] as const) {
    try {
      Bun.resolveSync(`@node-llama-cpp/${plat}-${process.arch}${suffix}`, import.meta.dir);
      backends.add(backend === "metal" ? "metal" : backend);
    } catch {}
  }
  if (plat === "mac" && process.arch === "arm64") backends.add("cpu");
  return { llamaCppRelease: release, nodeLlamaCppVersion: version, backends: [...backends], target: `${process.platform}-${process.arch} (from source)` };
}
