/**
 * Builds single-file executables with `bun build --compile`, each carrying its platform's llama.cpp
 * native libraries.
 *
 *   bun run build                      the host platform's default artifact into dist/
 *   bun run build --all                every artifact in TARGETS, then dist/SHA256SUMS
 *   bun run build --target linux-x64-cpu [--target ...]
 *   options: --outdir DIR (default dist), --packages-dir DIR (take @node-llama-cpp/* packages from
 *   DIR/<name>/ instead of node_modules or the registry), --no-bytecode
 *
 * How (see ../shared/facts.md "Single-file executable"):
 * - node-llama-cpp's JavaScript is bundled; its `import.meta.url` (used to find its own files) is
 *   rewritten to `globalThis.__shimmyNativeUrl(<package-relative path>)`.
 * - The native files (the target's `@node-llama-cpp/*` packages at exactly node-llama-cpp's version,
 *   plus node-llama-cpp's package.json, llama/*.json and grammars) go into one gzip tar built
 *   from sorted in-memory entries, so identical inputs give an identical archive and hash. It is
 *   embedded with `with { type: "file" }` and extracted at first run (src/engine/runtime.ts).
 * - Platform packages come from node_modules when installed at the right version, else from the npm
 *   registry (`npm pack`, cached in .build-cache/). Never from GitHub. A missing package or a
 *   version mismatch fails the build.
 */
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";

const ROOT = import.meta.dir;
const CACHE = path.join(ROOT, ".build-cache");
const NLC_DIR = path.join(ROOT, "node_modules", "node-llama-cpp");
const NLC_VERSION: string = JSON.parse(readFileSync(path.join(NLC_DIR, "package.json"), "utf8")).version;
const SHIMMY_VERSION: string = JSON.parse(readFileSync(path.join(ROOT, "package.json"), "utf8")).version;

export interface Target {
  /** Bun's compile target. */
  bun: string;
  /** `@node-llama-cpp/<name>` packages embedded (CPU first). */
  packages: string[];
  /** Backends those packages provide. */
  backends: string[];
  /** Expected executable format and architecture, checked after the build. */
  format: "elf" | "macho" | "pe";
  arch: "x64" | "arm64";
}

/**
 * Artifacts. The default linux/windows x64 builds carry Vulkan (works on NVIDIA, AMD and Intel GPUs
 * and adds ~80 MB); CUDA (+ its runtime libraries, ~500 MB) is a separate `-cuda` artifact so the
 * default download stays small. `linux-x64-cpu` is the small CPU-only host build.
 */
export const TARGETS: Record<string, Target> = {
  "linux-x64": { bun: "bun-linux-x64", packages: ["linux-x64", "linux-x64-vulkan"], backends: ["cpu", "vulkan"], format: "elf", arch: "x64" },
  "linux-x64-cuda": { bun: "bun-linux-x64", packages: ["linux-x64", "linux-x64-cuda", "linux-x64-cuda-ext"], backends: ["cpu", "cuda"], format: "elf", arch: "x64" },
  "linux-x64-baseline": { bun: "bun-linux-x64-baseline", packages: ["linux-x64", "linux-x64-vulkan"], backends: ["cpu", "vulkan"], format: "elf", arch: "x64" },
  "linux-x64-cpu": { bun: "bun-linux-x64", packages: ["linux-x64"], backends: ["cpu"], format: "elf", arch: "x64" },
  "linux-arm64": { bun: "bun-linux-arm64", packages: ["linux-arm64"], backends: ["cpu"], format: "elf", arch: "arm64" },
  "darwin-arm64": { bun: "bun-darwin-arm64", packages: ["mac-arm64-metal"], backends: ["cpu", "metal"], format: "macho", arch: "arm64" },
  "darwin-x64": { bun: "bun-darwin-x64", packages: ["mac-x64"], backends: ["cpu"], format: "macho", arch: "x64" },
  "windows-x64": { bun: "bun-windows-x64", packages: ["win-x64", "win-x64-vulkan"], backends: ["cpu", "vulkan"], format: "pe", arch: "x64" },
  "windows-x64-cuda": { bun: "bun-windows-x64", packages: ["win-x64", "win-x64-cuda", "win-x64-cuda-ext"], backends: ["cpu", "cuda"], format: "pe", arch: "x64" },
};

/** Every `@node-llama-cpp/*` package node-llama-cpp may import; those not embedded stay external. */
const ALL_PACKAGES = [
  "mac-arm64-metal", "mac-x64", "linux-x64", "linux-x64-cuda", "linux-x64-cuda-ext", "linux-x64-vulkan", "linux-arm64",
  "linux-armv7l", "linux-riscv64", "win-x64", "win-x64-cuda", "win-x64-cuda-ext", "win-x64-vulkan", "win-arm64",
];

export function artifactName(target: string): string {
  return `shimmy-${target}${TARGETS[target]!.format === "pe" ? ".exe" : ""}`;
}

export function hostTarget(): string {
  const os = process.platform === "win32" ? "windows" : process.platform;
  return `${os}-${process.arch}`;
}

class BuildError extends Error {}

function sh(cmd: string[], cwd: string): string {
  const r = Bun.spawnSync(cmd, { cwd, stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new BuildError(`${cmd.join(" ")} failed (exit ${r.exitCode}): ${r.stderr.toString().trim()}`);
  return r.stdout.toString();
}

/** Directory of `@node-llama-cpp/<name>` at NLC_VERSION: --packages-dir, node_modules, or npm pack. */
function packageDir(name: string, packagesDir?: string): string {
  let dir: string;
  if (packagesDir) dir = path.join(packagesDir, name);
  else {
    const installed = path.join(ROOT, "node_modules", "@node-llama-cpp", name);
    if (existsSync(path.join(installed, "package.json")) && JSON.parse(readFileSync(path.join(installed, "package.json"), "utf8")).version === NLC_VERSION) dir = installed;
    else {
      dir = path.join(CACHE, "packages", `${name}-${NLC_VERSION}`);
      if (!existsSync(path.join(dir, "package.json"))) {
        const tgzDir = path.join(CACHE, "tgz");
        mkdirSync(tgzDir, { recursive: true });
        const spec = `@node-llama-cpp/${name}@${NLC_VERSION}`;
        console.error(`fetching ${spec} from the npm registry`);
        const tgz = sh(["npm", "pack", spec, "--pack-destination", tgzDir, "--silent"], tgzDir).trim().split("\n").pop()!;
        const tmp = `${dir}.tmp-${process.pid}`;
        rmSync(tmp, { recursive: true, force: true });
        mkdirSync(tmp, { recursive: true });
        sh(["tar", "-xzf", path.join(tgzDir, tgz), "-C", tmp, "--strip-components=1"], ROOT);
        rmSync(dir, { recursive: true, force: true });
        require("node:fs").renameSync(tmp, dir);
      }
    }
  }
  const pj = path.join(dir, "package.json");
  if (!existsSync(pj)) throw new BuildError(`platform package @node-llama-cpp/${name} is missing (looked in ${dir})`);
  const pkg = JSON.parse(readFileSync(pj, "utf8"));
  if (pkg.name !== `@node-llama-cpp/${name}` || pkg.version !== NLC_VERSION)
    throw new BuildError(`platform package in ${dir} is ${pkg.name}@${pkg.version}; node-llama-cpp needs @node-llama-cpp/${name}@${NLC_VERSION} exactly`);
  if (!existsSync(path.join(dir, "bins"))) throw new BuildError(`platform package @node-llama-cpp/${name} in ${dir} has no bins/ directory`);
  return dir;
}

function walk(dir: string, rel = ""): string[] {
  const out: string[] = [];
  for (const name of readdirSync(path.join(dir, rel)).sort()) {
    const r = rel ? `${rel}/${name}` : name;
    if (statSync(path.join(dir, r)).isDirectory()) out.push(...walk(dir, r));
    else out.push(r);
  }
  return out;
}

export interface RuntimeArchive {
  bytes: Uint8Array;
  hash: string;
  files: Array<{ path: string; size: number }>;
}

/** The embedded runtime: sorted entries, gzip, no timestamps from the host: same inputs, same bytes. */
export async function buildRuntimeArchive(packageDirs: Record<string, string>): Promise<RuntimeArchive> {
  const entries: Array<[string, string]> = [];
  for (const rel of ["package.json", "llama/binariesGithubRelease.json", "llama/llama.cpp.info.json", ...walk(path.join(NLC_DIR, "llama", "grammars")).map((f) => `llama/grammars/${f}`)])
    entries.push([`node-llama-cpp/${rel}`, path.join(NLC_DIR, rel)]);
  for (const [name, dir] of Object.entries(packageDirs)) {
    entries.push([`@node-llama-cpp/${name}/package.json`, path.join(dir, "package.json")]);
    for (const f of walk(path.join(dir, "bins"))) entries.push([`@node-llama-cpp/${name}/bins/${f}`, path.join(dir, "bins", f)]);
  }
  entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const map: Record<string, Uint8Array> = {};
  const files: RuntimeArchive["files"] = [];
  for (const [rel, abs] of entries) {
    const data = new Uint8Array(readFileSync(abs));
    map[rel] = data;
    files.push({ path: rel, size: data.byteLength });
  }
  const bytes = Bun.gzipSync(ustar(map) as Uint8Array<ArrayBuffer>, { level: 9 });
  return { bytes, hash: createHash("sha256").update(Buffer.from(bytes)).digest("hex").slice(0, 16), files };
}

/**
 * A POSIX ustar archive of regular files with fixed mode, owner and mtime (0), in the given order.
 * (Bun.Archive stamps the current time into every entry, which would change the hash every build.)
 */
export function ustar(entries: Record<string, Uint8Array>): Uint8Array {
  const enc = new TextEncoder();
  const blocks: Uint8Array[] = [];
  const field = (h: Uint8Array, offset: number, length: number, value: string) => h.set(enc.encode(value).subarray(0, length), offset);
  const octal = (n: number, width: number) => n.toString(8).padStart(width - 1, "0") + "\0";
  for (const [name, data] of Object.entries(entries)) {
    const h = new Uint8Array(512);
    let prefix = "";
    let base = name;
    if (enc.encode(name).length > 100) {
      const cut = name.lastIndexOf("/");
      prefix = name.slice(0, cut);
      base = name.slice(cut + 1);
      if (enc.encode(base).length > 100 || enc.encode(prefix).length > 155) throw new BuildError(`path too long for ustar: ${name}`);
    }
    field(h, 0, 100, base);
    field(h, 100, 8, octal(0o644, 8));
    field(h, 108, 8, octal(0, 8));
    field(h, 116, 8, octal(0, 8));
    field(h, 124, 12, octal(data.byteLength, 12));
    field(h, 136, 12, octal(0, 12));
    field(h, 148, 8, "        ");
    field(h, 156, 1, "0");
    field(h, 257, 8, "ustar\x0000");
    field(h, 345, 155, prefix);
    const sum = h.reduce((a, b) => a + b, 0);
    field(h, 148, 8, sum.toString(8).padStart(6, "0") + "\0 ");
    blocks.push(h, data);
    const pad = (512 - (data.byteLength % 512)) % 512;
    if (pad) blocks.push(new Uint8Array(pad));
  }
  blocks.push(new Uint8Array(1024));
  const out = new Uint8Array(blocks.reduce((n, b) => n + b.byteLength, 0));
  let at = 0;
  for (const b of blocks) {
    out.set(b, at);
    at += b.byteLength;
  }
  return out;
}

/** Bun.build plugin: resolve the target's platform packages, keep the others external, rewrite import.meta.url. */
function nativePlugin(packageDirs: Record<string, string>): import("bun").BunPlugin {
  const roots: Array<[string, string]> = [[path.join(NLC_DIR) + path.sep, "node-llama-cpp/"]];
  for (const [name, dir] of Object.entries(packageDirs)) roots.push([path.resolve(dir) + path.sep, `@node-llama-cpp/${name}/`]);
  return {
    name: "shimmy-native",
    setup(build) {
      build.onResolve({ filter: /^@node-llama-cpp\// }, (args) => {
        const name = args.path.slice("@node-llama-cpp/".length);
        const dir = packageDirs[name];
        if (dir) return { path: path.join(dir, "dist", "index.js") };
        if (ALL_PACKAGES.includes(name)) return { path: args.path, external: true };
        return undefined;
      });
      build.onLoad({ filter: /\.js$/ }, async (args) => {
        const root = roots.find(([abs]) => args.path.startsWith(abs));
        if (!root) return undefined;
        let text = await Bun.file(args.path).text();
        const rel = root[1] + path.relative(root[0], args.path).split(path.sep).join("/");
        if (rel === "node-llama-cpp/dist/bindings/utils/testBindingBinary.js") {
          // The binary self-test child starts answering the parent while the bundle is still being
          // evaluated, racing the bundle's own initialisation. Make it a function that the
          // executable calls once everything is loaded (src/main.ts).
          const start = 'if (process.env.TEST_BINDING_CP === "true" && (process.parentPort != null || process.send != null)) {';
          if (!text.includes(start)) throw new BuildError(`${args.path}: binding self-test entry not found; node-llama-cpp changed, update build.ts`);
          text = text.replace(start, "globalThis.__shimmyBindingTestChild = function () {");
        }
        if (text.includes("import.meta.url")) text = text.replaceAll("import.meta.url", `globalThis.__shimmyNativeUrl(${JSON.stringify(rel)})`);
        return { contents: text, loader: "js" };
      });
    },
  };
}

/** Reads the executable header: ELF / Mach-O / PE and the machine type. */
export function inspectExecutable(file: string): { format: "elf" | "macho" | "pe" | "unknown"; arch: "x64" | "arm64" | "unknown" } {
  const b = readFileSync(file).subarray(0, 4096);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (b[0] === 0x7f && b[1] === 0x45 && b[2] === 0x4c && b[3] === 0x46) {
    const machine = dv.getUint16(18, true);
    return { format: "elf", arch: machine === 0x3e ? "x64" : machine === 0xb7 ? "arm64" : "unknown" };
  }
  if (dv.getUint32(0, true) === 0xfeedfacf) {
    const cpu = dv.getUint32(4, true);
    return { format: "macho", arch: cpu === 0x01000007 ? "x64" : cpu === 0x0100000c ? "arm64" : "unknown" };
  }
  if (b[0] === 0x4d && b[1] === 0x5a) {
    const pe = dv.getUint32(0x3c, true);
    const machine = dv.getUint16(pe + 4, true);
    return { format: "pe", arch: machine === 0x8664 ? "x64" : machine === 0xaa64 ? "arm64" : "unknown" };
  }
  return { format: "unknown", arch: "unknown" };
}

export async function buildTarget(target: string, opts: { outdir: string; packagesDir?: string; bytecode?: boolean }): Promise<{ file: string; bytes: number; archiveHash: string; seconds: number }> {
  const t = TARGETS[target];
  if (!t) throw new BuildError(`unknown target '${target}'; known: ${Object.keys(TARGETS).join(", ")}`);
  const t0 = performance.now();
  const packageDirs: Record<string, string> = {};
  for (const name of t.packages) packageDirs[name] = packageDir(name, opts.packagesDir);
  const archive = await buildRuntimeArchive(packageDirs);
  const llamaCppRelease: string = JSON.parse(readFileSync(path.join(NLC_DIR, "llama", "binariesGithubRelease.json"), "utf8")).release;

  const work = path.join(CACHE, "entry", target);
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  writeFileSync(path.join(work, "runtime.tar.gz"), archive.bytes);
  const manifest = { hash: archive.hash, target, packages: t.packages.map((p) => `@node-llama-cpp/${p}`), backends: t.backends, llamaCppRelease, nodeLlamaCppVersion: NLC_VERSION, files: archive.files };
  writeFileSync(path.join(work, "manifest.json"), JSON.stringify(manifest));
  writeFileSync(
    path.join(work, "entry.ts"),
    [
      `// Generated by build.ts for ${target}.`,
      `import archive from "./runtime.tar.gz" with { type: "file" };`,
      `import manifest from "./manifest.json" with { type: "json" };`,
      `globalThis.__shimmyEmbedded = { ...manifest, archive };`,
      `await import(${JSON.stringify(path.join(ROOT, "src", "main.ts"))});`,
      "",
    ].join("\n"),
  );

  mkdirSync(opts.outdir, { recursive: true });
  const outfile = path.join(opts.outdir, artifactName(target));
  const result = await Bun.build({
    entrypoints: [path.join(work, "entry.ts")],
    compile: { target: t.bun as any, outfile },
    format: "esm",
    minify: true,
    bytecode: opts.bytecode ?? true,
    plugins: [nativePlugin(packageDirs)],
    // Optional imports node-llama-cpp only makes in other environments (Electron, model downloads).
    external: ["electron"],
    define: { "process.env.NODE_ENV": '"production"' },
  } as any);
  if (!result.success) throw new BuildError(`bun build failed for ${target}:\n${result.logs.map(String).join("\n")}`);
  const header = inspectExecutable(outfile);
  if (header.format !== t.format || header.arch !== t.arch) throw new BuildError(`${outfile} is ${header.format}/${header.arch}, expected ${t.format}/${t.arch}`);
  return { file: outfile, bytes: statSync(outfile).size, archiveHash: archive.hash, seconds: (performance.now() - t0) / 1000 };
}

/** Entries of a ustar archive: path and size. */
export function listUstar(tar: Uint8Array): Array<{ path: string; size: number }> {
  const dec = new TextDecoder();
  const str = (a: number, n: number) => dec.decode(tar.subarray(a, a + n)).replace(/\0.*$/s, "");
  const out: Array<{ path: string; size: number }> = [];
  for (let at = 0; at + 512 <= tar.length; ) {
    const name = str(at, 100);
    if (!name) break;
    const prefix = str(at + 345, 155);
    const size = parseInt(str(at + 124, 12).trim() || "0", 8);
    out.push({ path: prefix ? `${prefix}/${name}` : name, size });
    at += 512 + Math.ceil(size / 512) * 512;
  }
  return out;
}

/**
 * Finds the runtime archive embedded in an executable (any platform) and lists it: scans for our
 * gzip header, inflates, and keeps the stream that is a ustar of node-llama-cpp files.
 */
export function embeddedArchive(file: string): Array<{ path: string; size: number }> | undefined {
  const zlib = require("node:zlib") as typeof import("node:zlib");
  const bin = readFileSync(file);
  const magic = Buffer.from([0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03]);
  for (let at = bin.indexOf(magic); at >= 0; at = bin.indexOf(magic, at + 1)) {
    let tar: Uint8Array;
    try {
      tar = zlib.inflateRawSync(bin.subarray(at + magic.length));
    } catch {
      continue;
    }
    const entries = listUstar(tar);
    if (entries.length && entries.every((e) => e.path.startsWith("node-llama-cpp/") || e.path.startsWith("@node-llama-cpp/"))) return entries;
  }
  return undefined;
}

/** Checks an artifact: format and architecture, and that it embeds its platform's native libraries. */
export function inspectArtifact(file: string): { ok: boolean; lines: string[] } {
  const target = Object.keys(TARGETS).find((t) => path.basename(file) === artifactName(t));
  const lines: string[] = [];
  const problems: string[] = [];
  if (!target) return { ok: false, lines: [`${file}: not a shimmy artifact name (${Object.keys(TARGETS).map(artifactName).join(", ")})`] };
  const t = TARGETS[target]!;
  const header = inspectExecutable(file);
  if (header.format !== t.format || header.arch !== t.arch) problems.push(`is ${header.format}/${header.arch}, expected ${t.format}/${t.arch}`);
  const entries = embeddedArchive(file);
  if (!entries) problems.push("no embedded native runtime found");
  const libExt = t.format === "elf" ? /\.so(\.|$)/ : t.format === "macho" ? /\.dylib$/ : /\.dll$/;
  const packages = [...new Set((entries ?? []).filter((e) => e.path.startsWith("@node-llama-cpp/")).map((e) => e.path.split("/")[1]!))].sort();
  for (const p of t.packages) {
    const files = (entries ?? []).filter((e) => e.path.startsWith(`@node-llama-cpp/${p}/bins/`));
    const libs = files.filter((e) => libExt.test(e.path));
    const addon = files.find((e) => e.path.endsWith("llama-addon.node"));
    const needsAddon = !p.endsWith("-ext");
    if (!libs.length || (needsAddon && !addon)) problems.push(`@node-llama-cpp/${p}: ${libs.length} native libraries${needsAddon && !addon ? ", no llama-addon.node" : ""}`);
    lines.push(`  @node-llama-cpp/${p}: ${files.length} files, ${libs.length} ${libExt.source.replace(/\\|\(.*|\$/g, "")} libraries, ${(files.reduce((n, e) => n + e.size, 0) / 1048576).toFixed(1)} MiB`);
  }
  const extra = packages.filter((p) => !t.packages.includes(p));
  if (extra.length) problems.push(`unexpected packages embedded: ${extra.join(", ")}`);
  lines.unshift(`${path.basename(file)}: ${header.format} ${header.arch}, ${(statSync(file).size / 1048576).toFixed(1)} MiB, ${entries?.length ?? 0} embedded files${problems.length ? `; PROBLEMS: ${problems.join("; ")}` : ""}`);
  return { ok: problems.length === 0, lines };
}

/** dist/SHA256SUMS for every shimmy-* artifact in outdir (sha256sum format). */
export function writeChecksums(outdir: string): string {
  const lines = readdirSync(outdir)
    .filter((f) => f.startsWith("shimmy-"))
    .sort()
    .map((f) => `${createHash("sha256").update(readFileSync(path.join(outdir, f))).digest("hex")}  ${f}`);
  const file = path.join(outdir, "SHA256SUMS");
  writeFileSync(file, lines.join("\n") + "\n");
  return file;
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({
    options: {
      all: { type: "boolean" },
      target: { type: "string", multiple: true },
      outdir: { type: "string" },
      "packages-dir": { type: "string" },
      "no-bytecode": { type: "boolean" },
      inspect: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
    allowPositionals: true,
  });
  if (values.inspect) {
    // bun build.ts --inspect [FILES...]: check artifacts (default: every shimmy-* in the outdir).
    const dir = path.resolve(values.outdir ?? path.join(ROOT, "dist"));
    const files = positionals.length ? positionals : readdirSync(dir).filter((f) => f.startsWith("shimmy-")).sort().map((f) => path.join(dir, f));
    let ok = true;
    for (const f of files) {
      const r = inspectArtifact(f);
      ok &&= r.ok;
      console.log(r.lines.join("\n"));
    }
    process.exit(ok ? 0 : 1);
  }
  if (values.help) {
    console.log(`usage: bun build.ts [--all | --target NAME ...] [--outdir DIR] [--packages-dir DIR] [--no-bytecode]\n       bun build.ts --inspect [FILES...]   check artifacts' format, architecture and embedded libraries\ntargets: ${Object.keys(TARGETS).join(", ")} (default: ${hostTarget()})`);
    process.exit(0);
  }
  const outdir = path.resolve(values.outdir ?? path.join(ROOT, "dist"));
  const targets = values.all ? Object.keys(TARGETS) : (values.target ?? [hostTarget()]);
  try {
    for (const target of targets) {
      const r = await buildTarget(target, { outdir, packagesDir: values["packages-dir"], bytecode: !values["no-bytecode"] });
      console.log(`${path.relative(process.cwd(), r.file)}  ${(r.bytes / 1048576).toFixed(1)} MiB  runtime ${r.archiveHash}  ${r.seconds.toFixed(1)} s`);
    }
    console.log(`${path.relative(process.cwd(), writeChecksums(outdir))} written (shimmy ${SHIMMY_VERSION})`);
  } catch (err) {
    console.error(`build failed: ${err instanceof BuildError ? err.message : (err as Error).stack}`);
    process.exit(1);
  }
}
