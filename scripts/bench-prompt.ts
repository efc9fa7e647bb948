/** Shared by the benchmark scripts: the prompt, an SSE reader, and the model file's page-cache state. */
import { openSync, closeSync, readSync } from "node:fs";
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
