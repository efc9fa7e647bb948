/**
 * The HTTP application: one Elysia plugin per API family and one error table. `createApp` never
 * listens, so tests drive it with `app.handle(new Request(...))`; `listen` in ./listen.ts binds it.
 */
import type { TSchema } from "@sinclair/typebox";
import { Elysia } from "elysia";
import { BadRequestError, ShimmyError } from "../errors.ts";
import { log } from "../log.ts";
import { annotate, errorJson, type RequestNote, requestNote, type ServingEngine } from "./http.ts";
import { DEFAULT_SECURITY, guard, requestId, type SecurityOptions } from "./security.ts";
import { nativeRoutes } from "./routes/native.ts";
import { openaiErrorResponse, openaiRoutes } from "./routes/openai.ts";
import { Metrics } from "./metrics.ts";
import { violationMessage } from "./validation.ts";
import { opsRoutes } from "./routes/ops.ts";
import { ollamaRoutes } from "./routes/ollama.ts";
import { anthropicErrorResponse, anthropicRoutes } from "./routes/anthropic.ts";
import { playgroundRoutes } from "./routes/playground.ts";

export interface AppDeps {
  engine: ServingEngine;
  /** Guards (keys, CORS, Host check, body limit); defaults: none of the optional ones, 10 MB bodies. */
  security?: Partial<SecurityOptions>;
  /** One log line per request; off unless given. `prompts` adds the prompt text. */
  requestLog?: { format: "text" | "json"; prompts: boolean };
  /** Serve the browser playground at `/` (default true). */
  playground?: boolean;
}

/** Routes answered in Anthropic's error shape (checked before OpenAI's). */
const ANTHROPIC_PATHS = /^\/v1\/messages(\/|$)/;

/** Routes answered in OpenAI's error shape. */
const OPENAI_PATHS = /^\/(v1\/|tokenize$|detokenize$)/;

class RouteNotFoundError extends ShimmyError {
  override readonly status = 404;
  override readonly type = "not_found";
}

class InternalError extends ShimmyError {}

/** The field a schema violation is about, dotted (`messages.0.role`). */
function validationParam(error: unknown): string | undefined {
  const p = (error as { all?: Array<{ path?: string }> }).all?.[0]?.path;
  return p ? p.replace(/^\//, "").replace(/\//g, ".") : undefined;
}

/** Names the offending field of a schema violation: `invalid field 'temperature': expected a number from 0 to 5, got "hot"`. */
function validationMessage(error: unknown): string {
  const e = error as { all?: Array<{ path?: string; value?: unknown; message?: string }>; validator?: { schema?: TSchema } };
  const first = e.all?.[0];
  const root = e.validator?.schema;
  if (!first) return "invalid request body";
  if (root) return violationMessage(root, first.path ?? "", first.value);
  const field = (first.path ?? "").replace(/^\//, "").replace(/\//g, ".");
  return field ? `invalid field '${field}': ${first.message}` : `invalid request body: ${first.message}`;
}

/** An error as the route's API answers it. */
function errorFor(path: string, e: ShimmyError): Response {
  if (ANTHROPIC_PATHS.test(path)) return anthropicErrorResponse(e);
  return OPENAI_PATHS.test(path) ? openaiErrorResponse(e) : errorJson(e);
}

/** One request log line (text or JSON); the prompt only when asked for. */
function logRequest(format: "text" | "json", prompts: boolean, method: string, path: string, status: number, note: RequestNote): void {
  const t = note.timings;
  const ms = note.t0 === undefined ? undefined : Math.round((performance.now() - note.t0) * 10) / 10;
  const fields = {
    id: note.id,
    method,
    path,
    status,
    ms,
    ...(note.model ? { model: note.model } : {}),
    ...(t ? { prompt_n: t.promptTokens, cache_n: t.cachedTokens, predicted_n: t.generatedTokens, ttft_ms: Math.round(t.ttftMs), tok_s: Math.round(t.tokensPerSecond * 10) / 10 } : {}),
    ...(note.finishReason ? { finish: note.finishReason } : {}),
    ...(prompts && note.prompt !== undefined ? { prompt: note.prompt.length > 500 ? `${note.prompt.slice(0, 500)}...` : note.prompt } : {}),
  };
  if (format === "json") process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), ...fields })}\n`);
  else log.info(Object.entries(fields).map(([k, v]) => (k === "prompt" ? `${k}=${JSON.stringify(v)}` : `${k}=${v}`)).join(" "));
}

export function createApp({ engine, security, requestLog, playground = true }: AppDeps) {
  const metrics = new Metrics(engine);
  const guards: SecurityOptions = { ...DEFAULT_SECURITY, ...security };
  return new Elysia({ name: "shimmy" })
    .onRequest(({ request, set }) => {
      const id = requestId(request);
      annotate(request, { id, t0: performance.now() });
      set.headers["x-request-id"] = id;
      const g = guard(request, guards);
      Object.assign(set.headers, g.headers);
      if (g.preflight) return new Response(null, { status: 204, headers: { ...g.preflight, "X-Request-Id": id } });
      if (g.error) {
        const path = new URL(request.url).pathname;
        const res = errorFor(path, g.error);
        for (const [k, v] of Object.entries({ ...g.headers, "X-Request-Id": id })) res.headers.set(k, v);
        // Refused before routing: after-response hooks do not run, so count and log here.
        metrics.countRequest(request.method, "refused", res.status);
        if (requestLog) logRequest(requestLog.format, requestLog.prompts, request.method, path, res.status, requestNote(request));
        return res;
      }
    })
    .onAfterResponse(({ request, route, set, responseValue }) => {
      const status = responseValue instanceof Response ? responseValue.status : typeof set.status === "number" ? set.status : 200;
      metrics.countRequest(request.method, route || "unmatched", status);
      if (requestLog) {
        const line = () => logRequest(requestLog.format, requestLog.prompts, request.method, new URL(request.url).pathname, status, requestNote(request));
        const note = requestNote(request);
        // A stream's response goes out before its tokens: log when the generation has ended.
        if (note.streaming) annotate(request, { whenSettled: line });
        else line();
      }
    })
    .onError(({ code, error, request, set }) => {
      // One table: every failure becomes a ShimmyError, answered in the shape of the route's API.
      const path = new URL(request.url).pathname;
      const cause = (error as { cause?: unknown }).cause;
      let e: ShimmyError;
      if (code === "PARSE" && cause instanceof ShimmyError) e = cause;
      else if (error instanceof ShimmyError) e = error;
      else if (code === "VALIDATION") e = new BadRequestError(validationMessage(error), { param: validationParam(error) });
      else if (code === "PARSE") e = new BadRequestError(`malformed request body: ${(cause as Error)?.message ?? (error as Error).message}`);
      else if (code === "NOT_FOUND") e = new RouteNotFoundError(`no route for ${request.method} ${path}`);
      else {
        log.error(`unhandled error on ${request.method} ${request.url}: ${(error as Error)?.stack ?? error}`);
        e = new InternalError((error as Error)?.message ?? "internal error");
      }
      set.status = e.status; // what the metrics and the request log see
      return errorFor(path, e);
    })
    .use(opsRoutes(engine, metrics))
    .use(nativeRoutes(engine))
    .use(ollamaRoutes(engine))
    .use(openaiRoutes(engine))
    .use(anthropicRoutes(engine))
    .use(playground ? playgroundRoutes() : new Elysia({ name: "playground-off" }));
}

export type App = ReturnType<typeof createApp>;
