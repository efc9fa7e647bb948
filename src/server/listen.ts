/** Binds the app to an address. `auto`: 127.0.0.1:11435, else the first free port in 11435-11535, else an ephemeral port. */
import type { App } from "./app.ts";
import { UsageError } from "../errors.ts";

export interface Listening {
  url: string;
  hostname: string;
  port: number;
  stop(): Promise<void>;
}

/** Splits `HOST:PORT` / `[v6]:PORT` / `:PORT`; throws UsageError on anything else. */
export function parseBind(bind: string): { hostname: string; port: number } {
  const m = bind.match(/^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new UsageError(`invalid bind address '${bind}': expected auto or HOST:PORT (e.g. 127.0.0.1:11435)`);
  return { hostname: m[1] ?? (m[2] || "127.0.0.1"), port };
}

/** Whether a bind host is loopback only (127.0.0.0/8, ::1, localhost). */
export function isLoopbackHost(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

interface ListenOptions {
  /** Bodies larger than this are refused by the socket layer (413), chunked ones included. */
  maxBodyBytes?: number;
}

function tryListen(app: App, hostname: string, port: number, opts: ListenOptions): Listening | undefined {
  try {
    // idleTimeout: seconds a connection may stay silent (Bun's maximum); a stalled client is dropped.
    // The body limit proper is checked per request (a 413 in the API's error shape); the socket layer
    // refuses only bodies well past it (chunked ones included), as a backstop.
    // WebSocket limits are server-wide in Bun: a frame over 1 MB closes the socket (1009), a silent one
    // closes after 120 s.
    app.listen({
      hostname,
      port,
      idleTimeout: 255,
      reusePort: false,
      websocket: { maxPayloadLength: 1024 * 1024, idleTimeout: 120 },
      ...(opts.maxBodyBytes ? { maxRequestBodySize: opts.maxBodyBytes + 1024 * 1024 } : {}),
    } as Parameters<App["listen"]>[0]);
  } catch (err) {
    if (/EADDRINUSE|in use|Failed to start server/i.test(String((err as Error).message ?? err))) return undefined;
    throw err;
  }
  const server = app.server!;
  const host = hostname.includes(":") ? `[${hostname}]` : hostname;
  return { url: `http://${host}:${server.port}`, hostname, port: server.port!, stop: async () => void (await app.stop(true)) };
}

export function listen(app: App, bind: string, opts: ListenOptions = {}): Listening {
  if (bind !== "auto") {
    const { hostname, port } = parseBind(bind);
    const l = tryListen(app, hostname, port, opts);
    if (!l) throw new UsageError(`cannot bind ${bind}: address in use`);
    return l;
  }
  for (let port = 11435; port <= 11535; port++) {
    const l = tryListen(app, "127.0.0.1", port, opts);
    if (l) return l;
  }
  const l = tryListen(app, "127.0.0.1", 0, opts);
  if (!l) throw new UsageError("cannot bind any port on 127.0.0.1");
  return l;
}
