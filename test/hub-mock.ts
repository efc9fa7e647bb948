/**
 * A local stand-in for Hugging Face, for `shimmy pull` tests. Two loopback servers, like the real
 * thing: the hub (Bun.serve) answers the tree API (`/api/models/{repo}/tree/{rev}`, paged with
 * `Link: rel="next"`, LFS entries with `lfs.oid` = sha256), the model-info API
 * (`/api/models/{repo}/revision/{rev}?blobs=true`, `siblings` with `lfs.sha256`) and the resolve route (302 to the CDN with
 * `X-Linked-Size` / `X-Linked-Etag`; small non-LFS files served directly); the CDN (a raw TCP server,
 * so a test can cut a response after N bytes) serves blobs and plain files with Range (206/416) and
 * If-Range. Every request is recorded; faults are armed per path.
 */
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { kv, writeGguf, type GgufValue } from "../src/gguf/writer.ts";
import { tinyModelSpec, writeTinyModel } from "../src/gguf/presets.ts";

export const TOKEN = "hf_test_token_123";

export interface MockFile {
  /** Path in the repository. */
  path: string;
  data: Uint8Array;
  /** Stored in LFS (sha256 published, resolve redirects to the CDN). Default: `.gguf` files. */
  lfs?: boolean;
  /** The sha256 the tree API publishes instead of the real one (a corrupt upload). */
  publishedSha256?: string;
}

export interface MockRepo {
  files: MockFile[];
  /** Needs `Authorization: Bearer TOKEN`; without it the hub answers 401 RepoNotFound, as huggingface.co does. */
  private?: boolean;
  /** Terms not accepted: 401 GatedRepo without a token, 403 GatedRepo with one. */
  gated?: boolean;
}

export interface PlainFile {
  data: Uint8Array;
  /** Answer HEAD with 405 (size unknown until the GET). */
  noHead?: boolean;
}

export interface Recorded {
  server: "hub" | "cdn";
  method: string;
  path: string;
  range?: string;
  ifRange?: string;
  authorization?: string;
}

/** A fault for the next GET of a CDN path: `drop` closes the connection after `afterBytes` body bytes (short of its Content-Length); `stall` sends them and then nothing. */
export interface Fault {
  kind: "drop" | "stall";
  afterBytes: number;
  /** How many GETs it hits. Default 1. */
  times?: number;
}

export const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const gitOid = (b: Uint8Array) => createHash("sha1").update(`blob ${b.length}\0`).update(b).digest("hex");

export class HubMock {
  readonly repos = new Map<string, MockRepo>();
  readonly plain = new Map<string, PlainFile>();
  readonly requests: Recorded[] = [];
  readonly faults = new Map<string, Fault>();
  /** Answer every Range request with 200 and the whole file (a server without resume). */
  ignoreRange = false;
  /** Entries per tree page. */
  pageSize = 3;
  /** Answer the tree API with a bare 404, like a mirror that only has the model-info API. */
  noTreeApi = false;
  private hub!: ReturnType<typeof Bun.serve>;
  private cdn!: net.Server;
  private readonly sockets = new Set<net.Socket>();
  private blobs = new Map<string, Uint8Array>();

  get endpoint(): string {
    return `http://127.0.0.1:${this.hub.port}`;
  }

  get cdnOrigin(): string {
    return `http://127.0.0.1:${(this.cdn.address() as net.AddressInfo).port}`;
  }

  /** The URL of a plain file on the CDN server. */
  fileUrl(name: string): string {
    return `${this.cdnOrigin}/files/${name}`;
  }

  addRepo(name: string, repo: MockRepo): void {
    this.repos.set(name, repo);
    for (const f of repo.files) this.blobs.set(sha256(f.data), f.data);
  }

  /** Requests seen by one server (optionally only those whose path contains `part`). */
  seen(server: "hub" | "cdn", part = ""): Recorded[] {
    return this.requests.filter((r) => r.server === server && r.path.includes(part));
  }

  async start(): Promise<this> {
    this.hub = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: (req) => this.handleHub(req) });
    this.cdn = net.createServer((socket) => this.handleCdn(socket));
    await new Promise<void>((resolve) => this.cdn.listen(0, "127.0.0.1", resolve));
    return this;
  }

  async stop(): Promise<void> {
    this.hub.stop(true);
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.cdn.close(() => resolve()));
  }

  private authorized(repo: MockRepo, req: Request): boolean {
    return !repo.private || req.headers.get("authorization") === `Bearer ${TOKEN}`;
  }

  private hubError(status: number, code: string, message: string): Response {
    return Response.json({ error: message }, { status, headers: { "x-error-code": code, "x-error-message": message } });
  }

  private handleHub(req: Request): Response {
    const url = new URL(req.url);
    this.requests.push({ server: "hub", method: req.method, path: url.pathname + url.search, authorization: req.headers.get("authorization") ?? undefined });
    const tree = url.pathname.match(/^\/api\/models\/([^/]+\/[^/]+)\/tree\/([^/]+)\/?$/);
    const info = url.pathname.match(/^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/);
    const resolve = url.pathname.match(/^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/);
    if (tree && this.noTreeApi) return new Response("Not Found", { status: 404 });
    const repoName = tree?.[1] ?? info?.[1] ?? resolve?.[1];
    if (!repoName) return new Response("not found", { status: 404 });
    const repo = this.repos.get(repoName);
    const hasAuth = req.headers.has("authorization");
    if (repo?.gated) return this.hubError(hasAuth ? 403 : 401, "GatedRepo", `Access to model ${repoName} is restricted.`);
    if (!repo || !this.authorized(repo, req)) return this.hubError(hasAuth && !repo ? 404 : 401, "RepoNotFound", "Repository not found");
    const revision = decodeURIComponent((tree ?? info ?? resolve)![2]!);
    if (revision !== "main") return this.hubError(404, "RevisionNotFound", `Invalid rev id: ${revision}`);
    if (info) {
      const blobs = url.searchParams.get("blobs") === "true";
      const siblings = repo.files.map((f) => {
        const lfs = f.lfs ?? f.path.endsWith(".gguf");
        return { rfilename: f.path, ...(blobs ? { blobId: gitOid(f.data), size: f.data.length, ...(lfs ? { lfs: { sha256: f.publishedSha256 ?? sha256(f.data), size: f.data.length, pointerSize: 134 } } : {}) } : {}) };
      });
      return Response.json({ id: repoName, sha: "0".repeat(40), private: !!repo.private, siblings });
    }
    if (tree) {
      const dirs = new Set<string>();
      for (const f of repo.files) f.path.split("/").slice(0, -1).forEach((_, i, a) => dirs.add(a.slice(0, i + 1).join("/")));
      const recursive = url.searchParams.get("recursive") === "true";
      const entries = [
        ...[...dirs].map((d) => ({ type: "directory", oid: gitOid(new TextEncoder().encode(d)), size: 0, path: d })),
        ...repo.files.map((f) => {
          const lfs = f.lfs ?? f.path.endsWith(".gguf");
          return { type: "file", oid: gitOid(f.data), size: f.data.length, path: f.path, ...(lfs ? { lfs: { oid: f.publishedSha256 ?? sha256(f.data), size: f.data.length, pointerSize: 134 } } : {}) };
        }),
      ].filter((e) => recursive || !e.path.includes("/"));
      const cursor = Number(url.searchParams.get("cursor") ?? 0);
      const page = entries.slice(cursor, cursor + this.pageSize);
      const headers: Record<string, string> = {};
      if (cursor + this.pageSize < entries.length) {
        const next = new URL(url);
        next.searchParams.set("cursor", String(cursor + this.pageSize));
        headers.link = `<${next.href}>; rel="next"`;
      }
      return Response.json(page, { headers });
    }
    const file = repo.files.find((f) => f.path === decodeURIComponent(resolve![3]!));
    if (!file) return this.hubError(404, "EntryNotFound", `${resolve![3]} does not exist on "main"`);
    const lfs = file.lfs ?? file.path.endsWith(".gguf");
    if (!lfs) return new Response(req.method === "HEAD" ? null : file.data, { headers: { etag: `"${gitOid(file.data)}"`, "content-length": String(file.data.length), "x-repo-commit": "0".repeat(40) } });
    const sha = sha256(file.data);
    return new Response(null, {
      status: 302,
      headers: {
        location: `${this.cdnOrigin}/blobs/${sha}?X-Amz-Expires=3600&X-Amz-Signature=mock`,
        "x-linked-size": String(file.data.length),
        "x-linked-etag": `"${file.publishedSha256 ?? sha}"`,
        "x-repo-commit": "0".repeat(40),
        etag: `"${file.publishedSha256 ?? sha}"`,
      },
    });
  }

  private handleCdn(socket: net.Socket): void {
    this.sockets.add(socket);
    socket.on("close", () => this.sockets.delete(socket));
    socket.on("error", () => {});
    let buf = "";
    socket.on("data", (chunk) => {
      buf += chunk.toString("latin1");
      const end = buf.indexOf("\r\n\r\n");
      if (end < 0) return;
      const [line, ...lines] = buf.slice(0, end).split("\r\n");
      buf = "";
      const [method = "GET", target = "/"] = line!.split(" ");
      const headers = new Map(lines.map((l) => [l.slice(0, l.indexOf(":")).trim().toLowerCase(), l.slice(l.indexOf(":") + 1).trim()]));
      const pathname = target.split("?")[0]!;
      this.requests.push({ server: "cdn", method, path: target, range: headers.get("range"), ifRange: headers.get("if-range"), authorization: headers.get("authorization") });
      this.serveCdn(socket, method, pathname, headers);
    });
  }

  private serveCdn(socket: net.Socket, method: string, pathname: string, headers: Map<string, string>): void {
    const respond = (status: string, head: Record<string, string | number>, body?: Uint8Array) => {
      const lines = [`HTTP/1.1 ${status}`, "connection: close", ...Object.entries(head).map(([k, v]) => `${k}: ${v}`)];
      socket.write(`${lines.join("\r\n")}\r\n\r\n`);
      if (!body || method === "HEAD") return void socket.end();
      const fault = this.faults.get(pathname);
      if (fault && method === "GET") {
        fault.times = (fault.times ?? 1) - 1;
        if (fault.times <= 0) this.faults.delete(pathname);
        socket.write(body.subarray(0, Math.min(fault.afterBytes, body.length)), () => {
          // Close a moment later: Bun's fetch drops bytes still unread when the connection ends early.
          if (fault.kind === "drop") setTimeout(() => socket.end(), 300);
        });
        return;
      }
      socket.end(body);
    };
    const blob = pathname.match(/^\/blobs\/([0-9a-f]{64})$/);
    const plainName = pathname.match(/^\/files\/(.+)$/)?.[1];
    const plain = plainName ? this.plain.get(decodeURIComponent(plainName)) : undefined;
    const data = blob ? this.blobs.get(blob[1]!) : plain?.data;
    if (!data) return respond("404 Not Found", { "content-length": 9 }, new TextEncoder().encode("not found"));
    if (method === "HEAD" && plain?.noHead) return respond("405 Method Not Allowed", { "content-length": 0 });
    const etag = `"${sha256(data)}"`;
    const base = { "accept-ranges": "bytes", etag, "content-type": "application/octet-stream" };
    const range = headers.get("range")?.match(/^bytes=(\d+)-(\d*)$/);
    const ifRange = headers.get("if-range");
    if (range && !this.ignoreRange && (!ifRange || ifRange === etag)) {
      const start = Number(range[1]);
      const last = range[2] ? Math.min(Number(range[2]), data.length - 1) : data.length - 1;
      if (start >= data.length) return respond("416 Range Not Satisfiable", { ...base, "content-range": `bytes */${data.length}`, "content-length": 0 });
      return respond("206 Partial Content", { ...base, "content-range": `bytes ${start}-${last}/${data.length}`, "content-length": last - start + 1 }, data.subarray(start, last + 1));
    }
    return respond("200 OK", { ...base, "content-length": data.length }, data);
  }
}

/** The bytes of a generated tiny model (a real, loadable GGUF). */
export async function tinyModelBytes(seed: number, name = `tiny-${seed}`): Promise<Uint8Array> {
  const dir = mkdtempSync(path.join(os.tmpdir(), "shimmy-hubmock-"));
  try {
    const file = path.join(dir, "m.gguf");
    await writeTinyModel(file, { seed, name });
    return new Uint8Array(readFileSync(file));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * The bytes of a real 2-part llama.cpp split model (as discovery.test.ts builds it): every part carries
 * `split.no` (u16, 0-based), `split.count` (u16) and `split.tensors.count` (i32); the first part has all
 * the metadata, the tensors are divided between the parts.
 */
export async function splitModelBytes(seed: number): Promise<[Uint8Array, Uint8Array]> {
  const dir = mkdtempSync(path.join(os.tmpdir(), "shimmy-hubmock-"));
  try {
    const spec = tinyModelSpec({ seed, name: `split-${seed}` });
    const half = Math.ceil(spec.tensors.length / 2);
    const parts = [spec.tensors.slice(0, half), spec.tensors.slice(half)];
    const out: Uint8Array[] = [];
    for (let i = 0; i < 2; i++) {
      const split: Array<[string, GgufValue]> = [
        ["split.no", kv.u16(i)],
        ["split.count", kv.u16(2)],
        ["split.tensors.count", kv.i32(spec.tensors.length)],
      ];
      const file = path.join(dir, `p${i}.gguf`);
      await writeGguf(file, { kv: i === 0 ? [...(spec.kv as ReadonlyArray<readonly [string, GgufValue]>), ...split] : split, tensors: parts[i]! });
      out.push(new Uint8Array(readFileSync(file)));
    }
    return [out[0]!, out[1]!];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
