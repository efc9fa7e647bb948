/**
 * Prometheus metrics (prom-client) for GET /metrics: requests by route and status, tokens, time to
 * first token, inter-token latency, queue depth, busy slots, loaded models and their memory, model
 * load time. Generation figures come from the engine's observer hooks; gauges are read at scrape time.
 */
import client from "prom-client";
import type { ServingEngine } from "./http.ts";

export class Metrics {
  readonly registry = new client.Registry();
  private readonly requests: client.Counter<"method" | "route" | "status">;

  constructor(engine: ServingEngine) {
    const registers = [this.registry];
    this.requests = new client.Counter({ name: "shimmy_http_requests_total", help: "HTTP requests by method, route and status", labelNames: ["method", "route", "status"], registers });
    const promptTokens = new client.Counter({ name: "shimmy_prompt_tokens_total", help: "Prompt tokens of finished generations", labelNames: ["model"], registers });
    const cachedTokens = new client.Counter({ name: "shimmy_prompt_tokens_cached_total", help: "Prompt tokens reused from the KV cache", labelNames: ["model"], registers });
    const generatedTokens = new client.Counter({ name: "shimmy_generated_tokens_total", help: "Tokens generated", labelNames: ["model"], registers });
    const generations = new client.Counter({ name: "shimmy_generations_total", help: "Finished generations by finish reason", labelNames: ["model", "finish_reason"], registers });
    const ttft = new client.Histogram({ name: "shimmy_time_to_first_token_seconds", help: "From request to first token (model load included)", labelNames: ["model"], buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], registers });
    const itl = new client.Histogram({ name: "shimmy_inter_token_latency_seconds", help: "Time between two streamed tokens", labelNames: ["model"], buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1], registers });
    const loadTime = new client.Histogram({ name: "shimmy_model_load_seconds", help: "Model load time", labelNames: ["model"], buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60], registers });
    new client.Gauge({
      name: "shimmy_queue_depth",
      help: "Requests waiting for a slot",
      labelNames: ["model"],
      registers,
      collect() {
        this.reset();
        for (const m of engine.ps()) this.set({ model: m.name }, m.queued);
      },
    });
    new client.Gauge({
      name: "shimmy_busy_slots",
      help: "Slots generating now",
      labelNames: ["model"],
      registers,
      collect() {
        this.reset();
        for (const m of engine.ps()) this.set({ model: m.name }, m.active);
      },
    });
    new client.Gauge({
      name: "shimmy_slots",
      help: "Parallel slots of each loaded model",
      labelNames: ["model"],
      registers,
      collect() {
        this.reset();
        for (const m of engine.ps()) this.set({ model: m.name }, m.slots);
      },
    });
    new client.Gauge({
      name: "shimmy_loaded_models",
      help: "Models loaded (or loading)",
      registers,
      collect() {
        this.set(engine.ps().length);
      },
    });
    new client.Gauge({
      name: "shimmy_model_memory_bytes",
      help: "Memory of each loaded model's weights",
      labelNames: ["model"],
      registers,
      collect() {
        this.reset();
        for (const m of engine.ps()) if (m.sizeBytes !== undefined) this.set({ model: m.name }, m.sizeBytes);
      },
    });
    engine.observer = {
      onLoad: (model, ms) => loadTime.observe({ model }, ms / 1000),
      onTokenGap: (model, ms) => itl.observe({ model }, ms / 1000),
      onDone: (model, t, finishReason) => {
        promptTokens.inc({ model }, t.promptTokens);
        cachedTokens.inc({ model }, t.cachedTokens);
        generatedTokens.inc({ model }, t.generatedTokens);
        generations.inc({ model, finish_reason: finishReason });
        if (t.generatedTokens > 0) ttft.observe({ model }, t.ttftMs / 1000);
      },
    };
  }

  /** Counts one answered request; `route` is the route pattern (`/api/models/:name/load`), never the raw path. */
  countRequest(method: string, route: string, status: number): void {
    this.requests.inc({ method, route, status: String(status) });
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  render(): Promise<string> {
    return this.registry.metrics();
  }
}
