/** Engine-level types: no HTTP, no TypeBox, no citty. */
import type { ChatTemplateName, GpuMode } from "../config.ts";

export interface ToolCall {
  /** Call id (`call_...`), echoed back by the tool's result message. */
  id: string;
  name: string;
  /** Arguments as a JSON text. */
  arguments: string;
}

export interface ChatMessage {
  role: "system" | "user" | "assistant" | "tool";
  content: string;
  /** Assistant messages: the tool calls the model made. */
  toolCalls?: ToolCall[];
  /** Tool messages: which call this is the result of. */
  toolCallId?: string;
}

/** A function the model may call; `parameters` is a JSON schema. */
export interface ToolDefinition {
  name: string;
  description?: string;
  parameters?: Record<string, unknown>;
}

/** `auto`: the model decides; `none`: no calls; `required`: some call; `{ name }`: that function. */
export type ToolChoice = "auto" | "none" | "required" | { name: string };

/** Output constraint enforced by a grammar at generation time. */
export type ResponseFormat = { type: "text" } | { type: "json_object" } | { type: "json_schema"; schema: Record<string, unknown> };

/** Sampling knobs; undefined means the engine default noted on each field. */
export interface SamplingOptions {
  /** Default 0.8; 0 = greedy. */
  temperature?: number;
  /** Nucleus sampling threshold. Default 0.95; 1 disables. */
  topP?: number;
  /** Keep the K most likely tokens. Default 40; 0 disables. */
  topK?: number;
  /** Drop tokens below min_p x (top probability). Default 0.05; 0 disables. */
  minP?: number;
  /** Penalty for the last 64 tokens. Default 1.0 (off). */
  repeatPenalty?: number;
  /** RNG seed for sampling. Default: random per request. */
  seed?: number;
  /** Subtract `n x frequencyPenalty` from a token seen n times in the last 64. Default 0. */
  frequencyPenalty?: number;
  /** Subtract presencePenalty from any token seen in the last 64. Default 0. */
  presencePenalty?: number;
  /** Token id -> bias added to its logit; <= -100 bans the token. */
  logitBias?: Record<number, number>;
}

export interface GenerateOptions extends SamplingOptions {
  /** Raw completion text (used when there are no `messages` and no `system`). */
  prompt?: string;
  /** Chat messages, rendered with the chat template; take precedence over `prompt`. */
  messages?: ChatMessage[];
  /** System prompt; with only `prompt`, makes the request a chat of [system, user(prompt)]. */
  system?: string;
  /** Tokens to generate at most. Default: until end of generation or the context is full. */
  maxTokens?: number;
  /** Stop sequences; their text is never emitted. */
  stop?: string[];
  /** Chat template for this request; default the server's setting (itself default `auto`). */
  chatTemplate?: ChatTemplateName;
  /** Constrain the output to JSON (any object, or a schema). Default text. */
  responseFormat?: ResponseFormat;
  /** Report each generated token's log probability and this many alternatives (0-20). Default: off. */
  logprobs?: number;
  /** Functions the model may call (chat requests only). */
  tools?: ToolDefinition[];
  /** Default `auto` when tools are given. */
  toolChoice?: ToolChoice;
  /** Aborting stops generation within one token; the stream then ends with finish reason `abort`. */
  signal?: AbortSignal;
}

export type FinishReason = "stop" | "length" | "abort" | "tool_calls";

/** Timings carried with every result (llama.cpp server vocabulary in comments). */
export interface Timings {
  /** Prompt tokens (prompt_n), including BOS. */
  promptTokens: number;
  /** Of those, tokens reused from the slot's KV cache instead of evaluated (cache_n). */
  cachedTokens: number;
  /** Time evaluating the prompt until the first token was sampled (prompt_ms). */
  promptMs: number;
  /** Prompt tokens per second. */
  promptTokensPerSecond: number;
  /** Tokens generated (predicted_n). */
  generatedTokens: number;
  /** Time after the first token until the last (predicted_ms). */
  generateMs: number;
  /** Decode speed: tokens after the first / generateMs (predicted_per_second). */
  tokensPerSecond: number;
  /** From the call until the first token: model load (first request only), queue wait and prompt included. */
  ttftMs: number;
  /** Waiting for a free slot (after the model was ready). */
  queueMs: number;
  /** Whole request. */
  totalMs: number;
}

/** Log probability of one generated token, with the most likely alternatives at that step. */
export interface TokenLogprob {
  token: string;
  logprob: number;
  bytes: number[];
  top: Array<{ token: string; logprob: number; bytes: number[] }>;
}

export type TokenEvent =
  | { type: "token"; text: string; logprobs?: TokenLogprob[] }
  | { type: "done"; model: string; text: string; finishReason: FinishReason; timings: Timings; toolCalls?: ToolCall[]; logprobs?: TokenLogprob[]; stopSequence?: string };

export interface GenerateResult {
  text: string;
  finishReason: FinishReason;
  timings: Timings;
  /** Set when the model called tools (finish reason `tool_calls`). */
  toolCalls?: ToolCall[];
  /** Set when `logprobs` was asked for: one entry per generated token. */
  logprobs?: TokenLogprob[];
  /** The caller's stop sequence that ended the text (finish reason `stop`), if one did. */
  stopSequence?: string;
}

export interface LoraAdapter {
  path: string;
  /** Strength; default 1. */
  scale: number;
}

export type ModelSource = "env" | "model-path" | "dir" | "ollama" | "huggingface" | "lmstudio" | "demo";

/** What a GGUF header says (read without loading weights). */
export interface ModelMeta {
  architecture: string;
  /** Parameter count (sum of tensor elements). */
  parameters: number;
  /** Quantization / file type, e.g. `Q4_K_M`, `Q8_0`, `F16`. */
  fileType: string;
  /** Training context length, when the header has one. */
  contextLength?: number;
  /** Whether `tokenizer.chat_template` is present. */
  chatTemplate: boolean;
  /** A LoRA adapter (`general.type` "adapter") rather than a model. */
  adapter: boolean;
  /** Bytes on disk (all parts of a split model). */
  sizeBytes: number;
}

export interface ModelEntry {
  /** Registry name: file stem, lowercased, `_` and spaces to `-` (Ollama: `model:tag`); unique, `@source` added on collisions. */
  name: string;
  /** Absolute path of the .gguf file (the first part of a split model). */
  path: string;
  /** LoRA adapters (absolute paths, scales) applied when the model loads. */
  loras?: LoraAdapter[];
  source: ModelSource;
  /** Every part of a split model, in order. */
  shards?: string[];
  /** Header facts, when the header could be read. */
  meta?: ModelMeta;
  /** Why this entry cannot be loaded (broken file, incomplete split set); loading it fails with this. */
  problem?: string;
}

export interface ModelInfo extends ModelEntry {
  sizeBytes: number;
  loaded: boolean;
}

/** Options the engine passes to the native backend. */
export interface BackendOptions {
  gpu: GpuMode;
  /** Called as a model's weights load: fraction 0..1 (node-llama-cpp's load progress). */
  onLoadProgress?: (model: string, fraction: number) => void;
  /** llama.cpp threads for models of 64 MiB or more (and for all models when `threadsExplicit`). */
  threads: number;
  /** When false (the default thread count), models under 64 MiB run on 1 thread: for them, syncing ggml's threads costs more than it gains (measured 2700 tok/s on 1 thread vs 110 on 2). */
  threadsExplicit?: boolean;
  ctxSize: number;
  /** Default chat template: a built-in name or a Jinja file path. */
  chatTemplate: string;
  /** Per-model chat templates (model name -> built-in name or Jinja file path). */
  chatTemplates?: Record<string, string>;
  /** Most requests that may wait for a model's slot; more are refused (503). Default 64. */
  maxQueue?: number;
  /** Concurrent generations per model (sequences of one context). Default 4. */
  parallel?: number;
  /** Memory-map model files (true), read them into memory (false: safe against files changed on disk), or "auto" (the default): read on the CPU backend on Linux when the file takes at most half the available memory (see chooseMmap in llama.ts). */
  mmap?: boolean | "auto";
  /** Every decode step waits for a token of every generating sequence (default true); false keeps node-llama-cpp's own scheduling. */
  fullBatches?: boolean;
  /** Persistent llama.cpp CPU threadpools per context (default true; Linux); false keeps node-llama-cpp's threads per decode. */
  threadpool?: boolean;
  /** The pools' polling level, 0..100 (default 0). */
  threadpoolPoll?: number;
  /** Pin each pool's threads one per CPU: true, false, or "auto" (the default: when a context's threads are as many as the CPUs the process may use). */
  pinThreads?: boolean | "auto";
  /** Plain generations run on shimmy's own decode loop over node-llama-cpp's native context (default true); false uses node-llama-cpp's LlamaCompletion. */
  directDecode?: boolean;
  /** Greedy requests on the decode loop are sampled synchronously from llama.cpp's logits (default true; Linux); false uses node-llama-cpp's sampler. */
  syncGreedy?: boolean;
  /** Generation steps call llama_decode on the JavaScript thread: true, false, or "auto" (the default: while the last step took under 50 ms; Linux). */
  syncDecode?: boolean | "auto";
  /** Longest a prompt arriving at an idle model waits for other requests sent with it, ms (default 2; 0: never). See GATHER_SHARE in stepper.ts. */
  gatherMs?: number;
  /** While sequences generate, the event loop runs (streamed text is written, requests accepted) at most this often, ms; tokens decoded in between go out together (default 30; 0: after every token). See STREAM_INTERVAL_MS in stepper.ts. */
  streamIntervalMs?: number;
  /** On the CPU backend (Linux), the buffers a model load fills (weights read into memory, KV cache) move onto transparent huge pages (default true). */
  hugepages?: boolean;
  /** The nice value for the JavaScript runtime's compiler and scavenger threads (Linux; 0 leaves them alone). Default 19. See background.ts. */
  backgroundNice?: number;
  /** Weights read into memory start 32 bytes past a 64-byte boundary (Linux, CPU, where the huge-page wrapper is installed): true, false, or "auto" (the default: on x86-64). See alignWeightsFor in hugepages.ts. */
  alignWeights?: boolean | "auto";
  /** Bytes a model load may need at most (weights + context estimate); default: the memory available now. */
  memoryLimit?: number;
  /** Cache dir and runtime dir override, for a single-file executable's native files (see runtime.ts). */
  cacheDir?: string;
  runtimeDir?: string;
}

export interface BackendInfo {
  /** "cpu" or the GPU backend in use ("cuda", "vulkan", "metal"). */
  backend: string;
  threads: number;
  gpuOffloading: boolean;
  /** "persistent" when contexts get persistent CPU threadpools, else "per-decode" (node-llama-cpp's default). */
  threadpool: "persistent" | "per-decode";
  llamaCppRelease: string;
}
