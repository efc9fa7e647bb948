/** Shared by the benchmark scripts: the prompt, an SSE reader, the model file's page-cache state, the servers' ports, a side's environment, and medians with their confidence interval. */
import { openSync, closeSync, readFileSync, readSync } from "node:fs";
/** The benchmark prompt: a new first word per run, so the prompt is evaluated anew each time (no KV-cache reuse). */
export function benchPrompt(i: number): string {
  return `Run ${i}. The committee met on Tuesday to discuss the harbour, the roads and the new school, and after a long debate about the budget they agreed to meet again next week to decide the order of the works and the people in charge of each one.`;
}

/** Reads an SSE body, calling `onData` per `data:` payload. */
export async function readSse(res: Response, onData: (data: string, event: string) => void) {
  const reader = res.body!.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i: number;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      let event = "message";
      const data: string[] = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      onData(data.join("\n"), event);
    }
  }
}

/**
 * Puts the model file's cached pages in one known state before a run: written back, dropped, then read
 * back from disk. On this project's VM a memory-mapped model decodes at a speed that depends on how
 * its cached pages got there: 4 streams on the bench model took 139 ms per step from the pages a
 * process had just written, and 91 ms from the same file dropped and read back from disk
 * (docs/PERFORMANCE.md). llama-server maps the file, so without this its figures would depend on whether the
 * file was written since the machine started. Reading back gives it its faster case. Returns what was
 * done, for the report. Linux only (it needs coreutils' `sync FILE` and `dd iflag=nocache`).
 */
export function settlePageCache(file: string): string {
  if (process.platform !== "linux") return "page cache left as it was (not Linux)";
  const sync = Bun.spawnSync(["sync", file]);
  const drop = Bun.spawnSync(["dd", `if=${file}`, "iflag=nocache", "count=0", "status=none"]);
  if (!sync.success || !drop.success) return `page cache left as it was (sync/dd failed: ${drop.stderr.toString().trim() || sync.stderr.toString().trim()})`;
  const left = residentMiB(file);
  const fd = openSync(file, "r");
  try {
    const buf = Buffer.allocUnsafe(8 << 20);
    while (readSync(fd, buf, 0, buf.length, null) > 0);
  } finally {
    closeSync(fd);
  }
  return left === undefined
    ? "page cache dropped (dd iflag=nocache) and read back from disk before the servers started"
    : `page cache dropped (${left} MiB still cached after it) and read back from disk before the servers started`;
}

/** MiB of `file` in the page cache (util-linux fincore), or undefined where fincore is missing. */
function residentMiB(file: string): number | undefined {
  const r = Bun.spawnSync(["fincore", "--bytes", "--noheadings", "--output", "RES", file]);
  if (!r.success) return undefined;
  const bytes = Number(r.stdout.toString().trim());
  return Number.isFinite(bytes) ? Math.round(bytes / 2 ** 20) : undefined;
}

const handedOut = new Set<number>();

/**
 * A loopback port for a server a benchmark starts. It lies below the kernel's ephemeral range: the
 * benchmark's own client connections take their local ports there, and a server told to listen on
 * one of those fails to bind (a llama-server did, and ended a bench:compare run partway). It was free when checked, and no other
 * call in this process returns it again.
 */
export function freePort(): number {
  let ephemeral = 32768;
  try {
    ephemeral = Number(readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0]) || ephemeral;
  } catch {
    // not Linux: the IANA range starts higher still
  }
  const low = 10_000;
  const high = Math.max(low + 1000, Math.min(ephemeral, 32768)) - 1;
  for (let i = 0; i < 200; i++) {
    const port = low + Math.floor(Math.random() * (high - low));
    if (handedOut.has(port)) continue;
    try {
      Bun.listen({ hostname: "127.0.0.1", port, socket: { data() {} } }).stop(true);
    } catch {
      continue;
    }
    handedOut.add(port);
    return port;
  }
  throw new Error("no free loopback port found");
}

/** Waits until `url` answers 200, failing at once if the server's process has exited. */
export async function waitForServer(url: string, proc: { exitCode: number | null; signalCode?: unknown }, ms = 120_000): Promise<void> {
  const t0 = Date.now();
  while (Date.now() - t0 < ms) {
    if (await fetch(url).then((r) => r.ok, () => false)) return;
    if (proc.exitCode !== null || proc.signalCode) throw new Error(`${url}: the server exited (${proc.exitCode ?? proc.signalCode}) before it answered`);
    await Bun.sleep(100);
  }
  throw new Error(`${url} did not answer in ${ms / 1000} s`);
}

/** The lines of a byte stream. */
export async function* lines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let buf = "";
  for await (const chunk of stream) {
    buf += decoder.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = buf.indexOf("\n")) >= 0) {
      yield buf.slice(0, nl);
      buf = buf.slice(nl + 1);
    }
  }
}

/** A shimmy side's environment (bench-phases.ts, bench-fresh.ts): this process's, quiet, plus `VAR:VALUE,VAR:VALUE` from `list`. */
export function envFrom(spec: string, list: string): Record<string, string | undefined> {
  const env: Record<string, string | undefined> = { ...process.env, SHIMMY_DEMO_MODEL: "0", SHIMMY_LOG: "warn" };
  for (const kv of list.split(",").filter(Boolean)) {
    const c = kv.indexOf(":");
    if (c < 1) throw new Error(`side ${spec}: ${kv} is not VAR:VALUE`);
    env[kv.slice(0, c)] = kv.slice(c + 1);
  }
  return env;
}

/** The median of the finite values (NaN if there are none). */
export function median(xs: number[]): number {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
  if (!s.length) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/**
 * The distribution-free 95% interval of a median, from sorted values: the k-th smallest and k-th
 * largest of n, k the largest with P(Binomial(n, 1/2) < k) <= 2.5% (n = 20: the 6th and 15th; n = 10:
 * the 2nd and 9th). NaN for fewer than 6 values, where no such k exists.
 */
export function medianInterval(sorted: number[]): [number, number] {
  const n = sorted.length;
  let k = 0;
  let below = 0; // P(X <= i) as i grows
  let term = 0.5 ** n; // P(X = i)
  for (let i = 0; i < n; i++) {
    below += term;
    if (below > 0.025) break;
    k = i + 1;
    term = (term * (n - i)) / (i + 1);
  }
  return k >= 1 ? [sorted[k - 1]!, sorted[n - k]!] : [NaN, NaN];
}
