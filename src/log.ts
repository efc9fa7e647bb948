/**
 * Diagnostics go to stderr, never stdout (stdout belongs to `shimmy generate`'s output and to
 * machine-readable `--json`). Level from `SHIMMY_LOG` via config: error | warn | info | debug.
 */
export type LogLevel = "error" | "warn" | "info" | "debug";
const order: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };
let current: LogLevel = "info";

export function setLogLevel(level: LogLevel): void {
  current = level;
}

export function logLevel(): LogLevel {
  return current;
}

function write(level: LogLevel, message: string): void {
  if (order[level] > order[current]) return;
  process.stderr.write(`${level === "info" ? "" : `${level}: `}${message}\n`);
}

export const log = {
  error: (m: string) => write("error", m),
  warn: (m: string) => write("warn", m),
  info: (m: string) => write("info", m),
  debug: (m: string) => write("debug", m),
};
