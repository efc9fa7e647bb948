/**
 * Wire schemas of shimmy's native API (`/api/generate`, `/ws/generate`, ops routes). Each schema and
 * its type share one name. A leaf: imports nothing from src.
 */
import { t } from "elysia";

export const ChatMessage = t.Object({
  role: t.Union([t.Literal("system"), t.Literal("user"), t.Literal("assistant")], { description: "system | user | assistant" }),
  content: t.String(),
});
export type ChatMessage = typeof ChatMessage.static;

export const GenerateRequest = t.Object({
  /** Registered model name (see GET /api/models). */
  model: t.String({ minLength: 1 }),
  /** Raw completion text; ignored when `messages` is given. */
  prompt: t.Optional(t.String()),
  /** Chat messages, rendered with the model's chat template. Take precedence over `prompt`. */
  messages: t.Optional(t.Array(ChatMessage)),
  /** System prompt; with `prompt` alone, the prompt becomes a user message of a chat. */
  system: t.Optional(t.String()),
  /** Default 0.8; 0 = greedy. */
  temperature: t.Optional(t.Number({ minimum: 0, maximum: 5 })),
  /** Default 0.95. */
  top_p: t.Optional(t.Number({ minimum: 0, maximum: 1 })),
  /** Default 40; 0 disables. */
  top_k: t.Optional(t.Integer({ minimum: 0, maximum: 1_000_000 })),
  /** Default 0.05; 0 disables. */
  min_p: t.Optional(t.Number({ minimum: 0, maximum: 1 })),
  /** Default 1.0 (off). */
  repeat_penalty: t.Optional(t.Number({ minimum: 0, maximum: 10 })),
  /** Sampling seed; default random. */
  seed: t.Optional(t.Integer({ minimum: -2147483648, maximum: 4294967295 })),
  /** Default: until end of generation or the context is full. */
  max_tokens: t.Optional(t.Integer({ minimum: 1, maximum: 1_048_576 })),
  /** Stop sequences (at most 16); their text is never sent. */
  stop: t.Optional(t.Union([t.String(), t.Array(t.String(), { maxItems: 16 })])),
  /** Default true: SSE. false: one JSON object. */
  stream: t.Optional(t.Boolean()),
  /** How long the model stays loaded after this request: "5m", seconds, 0 (unload now), -1 (forever). */
  keep_alive: t.Optional(t.Union([t.String(), t.Number()])),
  /** Chat template override: auto (the GGUF's own) | chatml | llama3 | openchat. */
  chat_template: t.Optional(t.Union([t.Literal("auto"), t.Literal("chatml"), t.Literal("llama3"), t.Literal("openchat")])),
});
export type GenerateRequest = typeof GenerateRequest.static;

export const Timings = t.Object({
  prompt_n: t.Integer(),
  cache_n: t.Integer(),
  prompt_ms: t.Number(),
  prompt_per_second: t.Number(),
  predicted_n: t.Integer(),
  predicted_ms: t.Number(),
  predicted_per_second: t.Number(),
  ttft_ms: t.Number(),
  queue_ms: t.Number(),
  total_ms: t.Number(),
});
export type Timings = typeof Timings.static;

export const FinishReason = t.Union([t.Literal("stop"), t.Literal("length"), t.Literal("abort")]);

export const GenerateResponse = t.Object({
  response: t.String(),
  model: t.String(),
  finish_reason: FinishReason,
  timings: Timings,
});
export type GenerateResponse = typeof GenerateResponse.static;

/** WebSocket: the last frame of a generation. */
export const WsDone = t.Object({ done: t.Literal(true), finish_reason: FinishReason, timings: Timings });
export type WsDone = typeof WsDone.static;

/** WebSocket: a client frame that cancels the running generation. */
export const WsStop = t.Object({ stop: t.Literal(true) });

export const ErrorBody = t.Object({ error: t.String() });
export type ErrorBody = typeof ErrorBody.static;

export const ModelSummary = t.Object({
  name: t.String(),
  path: t.String(),
  loras: t.Optional(t.Array(t.Object({ path: t.String(), scale: t.Number() }))),
  source: t.String(),
  size_bytes: t.Integer(),
  loaded: t.Boolean(),
  architecture: t.Optional(t.String()),
  parameters: t.Optional(t.Integer()),
  quantization: t.Optional(t.String()),
  context_length: t.Optional(t.Integer()),
  chat_template: t.Optional(t.Boolean()),
  shards: t.Optional(t.Array(t.String())),
  /** Why this model cannot be loaded (broken file, incomplete split set). */
  error: t.Optional(t.String()),
});
export type ModelSummary = typeof ModelSummary.static;

export const ModelsResponse = t.Object({ models: t.Array(ModelSummary) });
export type ModelsResponse = typeof ModelsResponse.static;

export const HealthResponse = t.Object({
  /** ready: serving; loading: a model is loading; draining: shutting down (answered with 503). */
  status: t.Union([t.Literal("ready"), t.Literal("loading"), t.Literal("draining")]),
  version: t.String(),
  models: t.Integer({ description: "models registered" }),
  loaded: t.Array(t.String()),
  /** Lifecycle state of each model loaded or loading. */
  model_states: t.Array(t.Object({ name: t.String(), state: t.String(), active: t.Integer(), queued: t.Integer() })),
  uptime: t.Integer({ description: "seconds since start" }),
});
export type HealthResponse = typeof HealthResponse.static;

export const DiagResponse = t.Object({
  version: t.String(),
  os: t.Object({ platform: t.String(), release: t.String(), arch: t.String() }),
  cpus: t.Object({ model: t.String(), logical: t.Integer(), physical: t.Integer() }),
  memory: t.Object({ total_bytes: t.Integer(), free_bytes: t.Integer(), rss_bytes: t.Integer() }),
  backend: t.String({ description: "cpu | cuda | vulkan | metal | not started" }),
  threads: t.Integer(),
  ctx_size: t.Integer(),
  gpu_mode: t.String(),
  llama_cpp: t.Optional(t.String()),
  runtime: t.String(),
});
export type DiagResponse = typeof DiagResponse.static;
