/** Operational routes: health, diagnostics, metrics, and the model lifecycle (/api/models, /api/ps). */
import os from "node:os";
import { Elysia, t } from "elysia";
import type { DiagResponse, HealthResponse, ModelsResponse } from "../../api/native.ts";
import path from "node:path";
import { parseLoras, physicalCores } from "../../config.ts";
import type { ModelStatus } from "../../engine/engine.ts";
import { BadRequestError } from "../../errors.ts";
import { VERSION } from "../../version.ts";
import { errorJson, keepAliveOption, parseJsonBody, parseJsonObject, type ServingEngine } from "../http.ts";
import type { Metrics } from "../metrics.ts";

/** Wire form of a model's lifecycle state. */
function wireStatus(s: ModelStatus) {
  return {
    name: s.name,
    // Ollama's /api/ps fields, so its clients can read this list too.
    model: s.name,
    size: s.sizeBytes ?? 0,
    size_vram: s.vramBytes ?? 0,
    state: s.state,
    active: s.active,
    queued: s.queued,
    slots: s.slots,
    ...(s.sizeBytes !== undefined ? { size_bytes: s.sizeBytes } : {}),
    ...(s.contextSize !== undefined ? { context_size: s.contextSize } : {}),
    ...(s.loras ? { loras: s.loras } : {}),
    ...(s.loadMs !== undefined ? { load_ms: s.loadMs } : {}),
    ...(s.expiresAt !== undefined ? { expires_at: s.expiresAt } : {}),
  };
}

const LoraRequest = t.Object({
  /** Adapters to apply (none = the bare model): `{path, scale?}`, or "path[:scale]" strings. */
  adapters: t.Array(t.Union([t.String({ minLength: 1 }), t.Object({ path: t.String({ minLength: 1 }), scale: t.Optional(t.Number()) })])),
});

export const opsRoutes = (engine: ServingEngine, metrics: Metrics, startedAt = Date.now()) =>
  new Elysia({ name: "shimmy.ops" })
    .get("/health", async ({ set }): Promise<HealthResponse> => {
      const status = engine.state;
      if (status === "draining") set.status = 503;
      return {
        status,
        version: VERSION,
        models: (await engine.list()).length,
        loaded: engine.loadedNames(),
        model_states: engine.ps().map((m) => ({ name: m.name, state: m.state, active: m.active, queued: m.queued })),
        uptime: Math.floor((Date.now() - startedAt) / 1000),
      };
    })
    .get("/metrics", async () => new Response(await metrics.render(), { headers: { "Content-Type": metrics.contentType } }))
    .get("/api/models", async (): Promise<ModelsResponse> => ({
      models: (await engine.list()).map((m) => ({
        name: m.name,
        path: m.path,
        ...(m.loras ? { loras: m.loras } : {}),
        source: m.source,
        size_bytes: m.sizeBytes,
        loaded: m.loaded,
        ...(m.meta ? { architecture: m.meta.architecture, parameters: m.meta.parameters, quantization: m.meta.fileType, context_length: m.meta.contextLength, chat_template: m.meta.chatTemplate } : {}),
        ...(m.shards ? { shards: m.shards } : {}),
        ...(m.problem ? { error: m.problem } : {}),
      })),
    }))
    .get("/api/ps", () => ({ models: engine.ps().map(wireStatus) }))
    .get("/api/models/:name/status", async ({ params }) => {
      try {
        return wireStatus(await engine.status(params.name));
      } catch (err) {
        return errorJson(err);
      }
    })
    .post("/api/models/:name/load", async ({ params, request }) => {
      try {
        // Optional body {keep_alive}: how long it stays loaded while idle.
        const text = await request.text();
        const body = text.trim() ? parseJsonObject(text) : {};
        const keepAlive = body.keep_alive;
        if (keepAlive !== undefined && typeof keepAlive !== "string" && typeof keepAlive !== "number") throw new BadRequestError("invalid field 'keep_alive': expected a duration such as \"5m\", seconds, 0 or -1", { param: "keep_alive" });
        await engine.load(params.name, keepAliveOption(keepAlive));
        return wireStatus(await engine.status(params.name));
      } catch (err) {
        return errorJson(err);
      }
    })
    .post("/api/models/:name/unload", async ({ params }) => {
      try {
        const was = await engine.unload(params.name);
        return { ...wireStatus(await engine.status(params.name)), was_loaded: was };
      } catch (err) {
        return errorJson(err);
      }
    })
    .post(
      "/api/models/:name/lora",
      async ({ params, body }) => {
        try {
          const adapters = body.adapters.flatMap((a) => (typeof a === "string" ? parseLoras("adapters", a) : [{ path: a.path, scale: a.scale ?? 1 }]));
          return wireStatus(await engine.setLora(params.name, adapters.map((a) => ({ path: path.resolve(a.path), scale: a.scale }))));
        } catch (err) {
          return errorJson(err);
        }
      },
      { body: LoraRequest, parse: parseJsonBody },
    )
    .get("/diag", async (): Promise<DiagResponse> => {
      const info = await engine.backendInfo();
      const cpus = os.cpus();
      return {
        version: VERSION,
        os: { platform: os.platform(), release: os.release(), arch: os.arch() },
        cpus: { model: cpus[0]?.model ?? "unknown", logical: cpus.length, physical: physicalCores() },
        memory: { total_bytes: os.totalmem(), free_bytes: os.freemem(), rss_bytes: process.memoryUsage.rss() },
        backend: info?.backend ?? "not started",
        threads: engine.options.threads,
        ctx_size: engine.options.ctxSize,
        gpu_mode: engine.options.gpu,
        ...(info ? { llama_cpp: info.llamaCppRelease } : {}),
        runtime: `bun ${Bun.version}`,
      };
    });
