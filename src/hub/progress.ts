/**
 * Download progress on stderr. On a terminal one line is redrawn (at most 10 times a second) with
 * bytes, percent, a bar, the rate and the ETA. Otherwise (a pipe, a log file) a few plain lines: the
 * start, 25/50/75%, and a summary, so a log never fills with progress.
 */
import { logLevel } from "../log.ts";

export function humanBytes(n: number): string {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) (n /= 1024), i++;
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

export function humanDuration(s: number): string {
  if (!Number.isFinite(s)) return "?";
  if (s < 60) return `${Math.ceil(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(Math.ceil(s % 60)).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

/** What a download reports while it runs. */
export interface ProgressSink {
  /** A file starts (or resumes at `done` bytes); `total` undefined when the source does not say. */
  start(label: string, total: number | undefined, done: number): void;
  /** Bytes of the file now on disk. */
  update(done: number, total?: number): void;
  /** A message between redraws (a retry, a restart). */
  note(message: string): void;
  /** The file is complete; `summary` ends its line. */
  finish(summary: string): void;
}

interface Writable {
  write(chunk: string): unknown;
  isTTY?: boolean;
}

/** A ProgressSink that writes to `stream` (default stderr); silent when SHIMMY_LOG=error. */
export function createProgress(stream: Writable = process.stderr, now: () => number = () => performance.now()): ProgressSink {
  const tty = !!stream.isTTY;
  let label = "";
  let total: number | undefined;
  let startedAt = 0;
  let resumedFrom = 0;
  let done = 0;
  let lastDraw = 0;
  let nextQuarter = 1;
  const samples: Array<[number, number]> = [];
  const quiet = () => logLevel() === "error";

  /** Bytes per second over the last 5 seconds (since the start when younger). */
  const rate = () => {
    const t = now();
    while (samples.length > 2 && t - samples[0]![0] > 5000) samples.shift();
    const [t0, b0] = samples[0] ?? [startedAt, resumedFrom];
    const dt = (t - t0) / 1000;
    return dt > 0.05 ? (done - b0) / dt : 0;
  };
  const stats = () => {
    const r = rate();
    const eta = total && r > 0 ? humanDuration((total - done) / r) : "?";
    return { r, eta };
  };
  const draw = () => {
    const { r, eta } = stats();
    const width = 24;
    const frac = total ? Math.min(1, done / total) : 0;
    const bar = total ? ` [${"#".repeat(Math.round(frac * width)).padEnd(width, ".")}] ${String(Math.floor(frac * 100)).padStart(3)}%` : "";
    stream.write(`\r\x1b[2K${label}  ${humanBytes(done)}${total ? ` / ${humanBytes(total)}` : ""}${bar}  ${humanBytes(r)}/s  ETA ${eta}`);
  };

  return {
    start(l, t, d) {
      label = l;
      total = t;
      done = resumedFrom = d;
      startedAt = lastDraw = now();
      samples.length = 0;
      samples.push([startedAt, d]);
      nextQuarter = total ? Math.floor((d / total) * 4) + 1 : 4;
      if (quiet()) return;
      if (tty) draw();
      else stream.write(`pulling ${label}${total ? ` (${humanBytes(total)})` : ""}${d > 0 ? `, resuming at ${humanBytes(d)}` : ""}\n`);
    },
    update(d, t) {
      done = d;
      if (t !== undefined) total = t;
      const at = now();
      if (at - (samples[samples.length - 1]?.[0] ?? 0) >= 250) samples.push([at, d]);
      if (quiet()) return;
      if (tty) {
        if (at - lastDraw >= 100) {
          lastDraw = at;
          draw();
        }
        return;
      }
      if (total && nextQuarter < 4 && done >= (total * nextQuarter) / 4) {
        const { r, eta } = stats();
        stream.write(`  ${label}: ${nextQuarter * 25}% (${humanBytes(done)} of ${humanBytes(total)}, ${humanBytes(r)}/s, ETA ${eta})\n`);
        while (nextQuarter < 4 && done >= (total * nextQuarter) / 4) nextQuarter++;
      }
    },
    note(message) {
      if (quiet()) return;
      stream.write(tty ? `\r\x1b[2K${message}\n` : `${message}\n`);
      if (tty && label) draw();
    },
    finish(summary) {
      if (quiet()) return;
      const secs = (now() - startedAt) / 1000;
      const got = done - resumedFrom;
      const speed = secs > 0 ? `, ${humanBytes(got / secs)}/s` : "";
      stream.write(`${tty ? "\r\x1b[2K" : ""}pulled ${label}: ${humanBytes(done)} in ${secs.toFixed(1)} s${speed}${summary ? `, ${summary}` : ""}\n`);
      label = "";
    },
  };
}
