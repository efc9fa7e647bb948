/**
 * The HTTP application: one Elysia plugin per API family and one error table. `createApp` never
 * listens, so tests drive it with `app.handle(new Request(...))`; `listen` in ./listen.ts binds it.
 */
import type { TSchema } from "@sinclair/typebox";
import { Elysia } from "elysia";
import type { Config } from "../config.ts";
import type { ModelRegistry } from "../engine/registry.ts";
import { ShimmyError } from "../errors.ts";
import { log } from "../log.ts";
import { errorJson, type ServingEngine } from "./http.ts";
import { nativeRoutes } from "./routes/native.ts";
import { violationMessage } from "./validation.ts";
import { opsRoutes } from "./routes/ops.ts";

export interface AppDeps {
  engine: ServingEngine;
  registry?: ModelRegistry;
  config?: Partial<Config>;
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
  return new Elysia({ name: "shimmy" })
    .onError(({ code, error, request }) => {
      const cause = (error as { cause?: unknown }).cause;
      if (code === "PARSE" && cause instanceof ShimmyError) return errorJson(cause);
      if (error instanceof ShimmyError) return errorJson(error);
      switch (code) {
        case "VALIDATION":
          return Response.json({ error: validationMessage(error) }, { status: 400 });
        case "PARSE":
          return Response.json({ error: `malformed request body: ${(cause as Error)?.message ?? (error as Error).message}` }, { status: 400 });
        case "NOT_FOUND":
          return Response.json({ error: `no route for ${request.method} ${new URL(request.url).pathname}` }, { status: 404 });
        default: {
          const status = typeof (error as { status?: unknown }).status === "number" ? (error as { status: number }).status : 500;
          log.error(`unhandled error on ${request.method} ${request.url}: ${(error as Error)?.stack ?? error}`);
          return Response.json({ error: (error as Error)?.message ?? "internal error" }, { status });
        }
      }
    })
    .use(opsRoutes(engine))
    .use(nativeRoutes(engine));
}

export type App = ReturnType<typeof createApp>;
