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

function tryListen(app: App, hostname: string, port: number): Listening | undefined {
  try {
    app.listen({ hostname, port, idleTimeout: 255, reusePort: false });
  } catch (err) {
    if (/EADDRINUSE|in use|Failed to start server/i.test(String((err as Error).message ?? err))) return undefined;
    throw err;
  }
  const server = app.server!;
  const host = hostname.includes(":") ? `[${hostname}]` : hostname;
  return { url: `http://${host}:${server.port}`, hostname, port: server.port!, stop: async () => void (await app.stop(true)) };
}

export function listen(app: App, bind: string): Listening {
  if (bind !== "auto") {
    const { hostname, port } = parseBind(bind);
    const l = tryListen(app, hostname, port);
    if (!l) throw new UsageError(`cannot bind ${bind}: address in use`);
    return l;
  }
  for (let port = 11435; port <= 11535; port++) {
    const l = tryListen(app, "127.0.0.1", port);
    if (l) return l;
  }
  const l = tryListen(app, "127.0.0.1", 0);
  if (!l) throw new UsageError("cannot bind any port on 127.0.0.1");
  return l;
}
