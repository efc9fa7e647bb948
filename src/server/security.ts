/**
 * The guards every request passes before any route: request ids, browser safety (CORS and the Host
 * check against DNS rebinding), body size, API keys. Failures are answered in the route's API shape.
 */
import { createHash, randomUUID, timingSafeEqual } from "node:crypto";
import { ForbiddenError, PayloadTooLargeError, type ShimmyError, UnauthorizedError } from "../errors.ts";

export interface SecurityOptions {
  /** Accepted API keys; none = no authentication. */
  apiKeys: string[];
  /** Allowed browser origins; empty = localhost origins only; `*` = any. */
  corsOrigins: string[];
  /** Check the Host header (on when bound to loopback): loopback names plus these. */
  hostCheck: boolean;
  allowHosts: string[];
  /** Largest body by Content-Length; larger is 413. */
  maxBodyBytes: number;
}

export const DEFAULT_SECURITY: SecurityOptions = { apiKeys: [], corsOrigins: [], hostCheck: false, allowHosts: [], maxBodyBytes: 10 * 1024 * 1024 };

const LOOPBACK_NAMES = new Set(["localhost", "127.0.0.1", "::1", "[::1]"]);

function isLoopbackName(host: string): boolean {
  const h = host.toLowerCase();
  return LOOPBACK_NAMES.has(h) || h.endsWith(".localhost") || /^127\.\d+\.\d+\.\d+$/.test(h);
}

/** `Host: example.com:8080` -> `example.com`; `[::1]:80` -> `[::1]`. */
function hostName(host: string): string {
  const m = host.match(/^(\[[^\]]+\]|[^:]+)(?::\d+)?$/);
  return (m?.[1] ?? host).toLowerCase();
}

/** Whether a browser page at `origin` may call. */
export function originAllowed(origin: string, allowed: string[]): boolean {
  if (allowed.includes("*") || allowed.includes(origin)) return true;
  if (allowed.length) return false;
  try {
    return isLoopbackName(new URL(origin).hostname);
  } catch {
    return false;
  }
}

const digest = (s: string) => createHash("sha256").update(s).digest();

/** Constant-time check of a presented key against every configured one. */
export function keyMatches(presented: string, keys: string[]): boolean {
  const p = digest(presented);
  let ok = false;
  for (const k of keys) ok = timingSafeEqual(p, digest(k)) || ok;
  return ok;
}

/** The key a request presents: `Authorization: Bearer`, `x-api-key`, or (WebSocket upgrades only, browsers cannot set headers there) `?api_key=`. */
function presentedKey(request: Request, url: URL): string | undefined {
  const auth = request.headers.get("authorization");
  if (auth?.toLowerCase().startsWith("bearer ")) return auth.slice(7).trim();
  const x = request.headers.get("x-api-key");
  if (x) return x.trim();
  if (request.headers.get("upgrade")?.toLowerCase() === "websocket") return url.searchParams.get("api_key") ?? undefined;
  return undefined;
}

/** A request id: the client's `X-Request-Id` when it is sane, else a new one. */
export function requestId(request: Request): string {
  const given = request.headers.get("x-request-id");
  return given && /^[\w.:-]{1,128}$/.test(given) ? given : randomUUID();
}

export interface GuardResult {
  /** Answer now with this error (the route does not run). */
  error?: ShimmyError;
  /** A CORS preflight to answer with 204 and these headers. */
  preflight?: Record<string, string>;
  /** Headers every answer to this request carries (CORS). */
  headers: Record<string, string>;
}

/** Paths that answer without an API key: the health check and the playground page (which holds no data; it asks for the key). */
const OPEN_PATHS = new Set(["/health", "/", "/playground"]);

/** Whether `origin` is the server's own origin as the request's Host names it. */
function sameOrigin(origin: string, host: string | null): boolean {
  if (!host) return false;
  try {
    return new URL(origin).host.toLowerCase() === host.toLowerCase();
  } catch {
    return false;
  }
}

/** Runs the guards in order: Host, Origin (incl. preflight), body size, API key. */
export function guard(request: Request, opts: SecurityOptions): GuardResult {
  const url = new URL(request.url);
  const headers: Record<string, string> = {};
  if (opts.hostCheck) {
    const host = request.headers.get("host");
    const name = host ? hostName(host) : "";
    if (!host || !(isLoopbackName(name) || opts.allowHosts.map((h) => h.toLowerCase()).includes(name)))
      return { error: new ForbiddenError(`Host '${host ?? ""}' is not allowed: shimmy is bound to loopback and answers only loopback names (allow more with --allow-hosts)`), headers };
  }
  const origin = request.headers.get("origin");
  // A page this server served (the playground) calling it back is same-origin, not cross-origin.
  if (origin && !sameOrigin(origin, request.headers.get("host"))) {
    if (!originAllowed(origin, opts.corsOrigins)) return { error: new ForbiddenError(`cross-origin request from ${origin} refused (allow it with --cors-origins)`), headers };
    headers["Access-Control-Allow-Origin"] = opts.corsOrigins.includes("*") && !opts.apiKeys.length ? "*" : origin;
    headers.Vary = "Origin";
    headers["Access-Control-Expose-Headers"] = "X-Request-Id, Retry-After";
    if (request.method === "OPTIONS" && request.headers.get("access-control-request-method")) {
      return {
        headers,
        preflight: {
          ...headers,
          "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
          "Access-Control-Allow-Headers": request.headers.get("access-control-request-headers") ?? "authorization, content-type, x-api-key, x-request-id",
          "Access-Control-Max-Age": "600",
        },
      };
    }
  }
  const length = Number(request.headers.get("content-length") ?? 0);
  if (length > opts.maxBodyBytes) return { error: new PayloadTooLargeError(`request body of ${length} bytes is over the limit of ${opts.maxBodyBytes} bytes (--max-body)`), headers };
  if (opts.apiKeys.length && !OPEN_PATHS.has(url.pathname)) {
    const key = presentedKey(request, url);
    if (!key || !keyMatches(key, opts.apiKeys)) return { error: new UnauthorizedError(key ? "invalid API key" : "missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'"), headers };
  }
  return { headers };
}
