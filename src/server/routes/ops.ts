/** Operational routes: GET /health, GET /diag, GET /api/models. */
import os from "node:os";
import { Elysia } from "elysia";
import type { DiagResponse, HealthResponse, ModelsResponse } from "../../api/native.ts";
import { physicalCores } from "../../config.ts";
import { VERSION } from "../../version.ts";
import type { ServingEngine } from "../http.ts";

export const opsRoutes = (engine: ServingEngine, startedAt = Date.now()) =>
  new Elysia({ name: "shimmy.ops" })
    .get(
      "/health",
      (): HealthResponse => ({
        status: "ok",
        version: VERSION,
        models: engine.list().length,
        loaded: engine.loadedNames(),
        uptime: Math.floor((Date.now() - startedAt) / 1000),
      }),
    )
    .get("/api/models", (): ModelsResponse => ({
      models: engine.list().map((m) => ({
        name: m.name,
        path: m.path,
        ...(m.loras ? { loras: m.loras } : {}),
        source: m.source,
        size_bytes: m.sizeBytes,
        loaded: m.loaded,
      })),
    }))
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
