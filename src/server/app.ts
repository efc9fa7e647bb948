/**
 * The HTTP application: one Elysia plugin per API family and one error table. `createApp` never
 * listens, so tests drive it with `app.handle(new Request(...))`; `listen` in ./listen.ts binds it.
 */
import type { TSchema } from "@sinclair/typebox";
import { Elysia } from "elysia";
import type { Config } from "../config.ts";
import type { ModelRegistry } from "../engine/registry.ts";
import { BadRequestError, ShimmyError } from "../errors.ts";
import { log } from "../log.ts";
import { errorJson, type ServingEngine } from "./http.ts";
import { nativeRoutes } from "./routes/native.ts";
import { openaiErrorResponse, openaiRoutes } from "./routes/openai.ts";
import { Metrics } from "./metrics.ts";
import { violationMessage } from "./validation.ts";
import { opsRoutes } from "./routes/ops.ts";

export interface AppDeps {
  engine: ServingEngine;
  registry?: ModelRegistry;
  config?: Partial<Config>;
}

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

export function createApp({ engine }: AppDeps) {
  const metrics = new Metrics(engine);
  return new Elysia({ name: "shimmy" })
    .onAfterResponse(({ request, route, set, responseValue }) => {
      const status = responseValue instanceof Response ? responseValue.status : typeof set.status === "number" ? set.status : 200;
      metrics.countRequest(request.method, route || "unmatched", status);
    })
    .onError(({ code, error, request }) => {
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
      return OPENAI_PATHS.test(path) ? openaiErrorResponse(e) : errorJson(e);
    })
    .use(opsRoutes(engine, metrics))
    .use(nativeRoutes(engine))
    .use(openaiRoutes(engine));
}

export type App = ReturnType<typeof createApp>;
