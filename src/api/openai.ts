/**
 * Wire schemas of the OpenAI-compatible API (`/v1/*`) and llama-server's `/tokenize`/`/detokenize`.
 * Lenient where OpenAI's clients send more than shimmy uses (unknown fields are ignored). A leaf.
 */
import { t } from "elysia";

const TextPart = t.Object({ type: t.String(), text: t.Optional(t.String()) }, { additionalProperties: true });

export const OpenAIMessage = t.Object(
  {
    role: t.Union([t.Literal("system"), t.Literal("developer"), t.Literal("user"), t.Literal("assistant"), t.Literal("tool")]),
    content: t.Optional(t.Union([t.String(), t.Array(TextPart), t.Null()])),
    name: t.Optional(t.String()),
    tool_calls: t.Optional(
      t.Array(t.Object({ id: t.String(), type: t.Optional(t.String()), function: t.Object({ name: t.String(), arguments: t.String() }) })),
    ),
    tool_call_id: t.Optional(t.String()),
  },
  { additionalProperties: true },
);
export type OpenAIMessage = typeof OpenAIMessage.static;

const Stop = t.Union([t.String(), t.Array(t.String(), { maxItems: 16 }), t.Null()]);

/** Sampling fields shared by chat and text completions (OpenAI's plus llama.cpp's top_k / min_p). */
const Sampling = {
  model: t.String({ minLength: 1 }),
  temperature: t.Optional(t.Union([t.Number({ minimum: 0, maximum: 5 }), t.Null()])),
  top_p: t.Optional(t.Union([t.Number({ minimum: 0, maximum: 1 }), t.Null()])),
  top_k: t.Optional(t.Integer({ minimum: 0, maximum: 1_000_000 })),
  min_p: t.Optional(t.Number({ minimum: 0, maximum: 1 })),
  repeat_penalty: t.Optional(t.Number({ minimum: 0, maximum: 10 })),
  frequency_penalty: t.Optional(t.Union([t.Number({ minimum: -2, maximum: 2 }), t.Null()])),
  presence_penalty: t.Optional(t.Union([t.Number({ minimum: -2, maximum: 2 }), t.Null()])),
  logit_bias: t.Optional(t.Union([t.Record(t.String(), t.Number({ minimum: -100, maximum: 100 })), t.Null()])),
  seed: t.Optional(t.Union([t.Integer({ minimum: -2147483648, maximum: 4294967295 }), t.Null()])),
  max_tokens: t.Optional(t.Union([t.Integer({ minimum: 1, maximum: 1_048_576 }), t.Null()])),
  stop: t.Optional(Stop),
  n: t.Optional(t.Union([t.Integer({ minimum: 1, maximum: 128 }), t.Null()])),
  stream: t.Optional(t.Union([t.Boolean(), t.Null()])),
  stream_options: t.Optional(t.Union([t.Object({ include_usage: t.Optional(t.Boolean()) }, { additionalProperties: true }), t.Null()])),
  logprobs: t.Optional(t.Union([t.Boolean(), t.Integer({ minimum: 0 }), t.Null()])),
  top_logprobs: t.Optional(t.Union([t.Integer({ minimum: 0, maximum: 20 }), t.Null()])),
  user: t.Optional(t.String()),
  /** shimmy extension (as Ollama's): how long the model stays loaded after this request: "5m", seconds, 0, -1. */
  keep_alive: t.Optional(t.Union([t.String(), t.Number()])),
};

export const ChatCompletionRequest = t.Object(
  {
    ...Sampling,
    messages: t.Array(OpenAIMessage, { minItems: 1 }),
    max_completion_tokens: t.Optional(t.Union([t.Integer({ minimum: 1, maximum: 1_048_576 }), t.Null()])),
    response_format: t.Optional(
      t.Union([
        t.Object({ type: t.Literal("text") }),
        t.Object({ type: t.Literal("json_object") }),
        t.Object({ type: t.Literal("json_schema"), json_schema: t.Object({ name: t.Optional(t.String()), schema: t.Optional(t.Record(t.String(), t.Unknown())), strict: t.Optional(t.Union([t.Boolean(), t.Null()])) }, { additionalProperties: true }) }),
        t.Null(),
      ]),
    ),
    tools: t.Optional(
      t.Union([
        t.Array(
          t.Object({
            type: t.Literal("function"),
            function: t.Object({ name: t.String({ minLength: 1 }), description: t.Optional(t.String()), parameters: t.Optional(t.Record(t.String(), t.Unknown())), strict: t.Optional(t.Union([t.Boolean(), t.Null()])) }),
          }),
        ),
        t.Null(),
      ]),
    ),
    tool_choice: t.Optional(
      t.Union([t.Literal("auto"), t.Literal("none"), t.Literal("required"), t.Object({ type: t.Literal("function"), function: t.Object({ name: t.String() }) }), t.Null()]),
    ),
    parallel_tool_calls: t.Optional(t.Union([t.Boolean(), t.Null()])),
  },
  { additionalProperties: true },
);
export type ChatCompletionRequest = typeof ChatCompletionRequest.static;

export const CompletionRequest = t.Object(
  {
    ...Sampling,
    prompt: t.Union([t.String(), t.Array(t.String(), { minItems: 1 })]),
    suffix: t.Optional(t.Union([t.String(), t.Null()])),
    echo: t.Optional(t.Union([t.Boolean(), t.Null()])),
    best_of: t.Optional(t.Union([t.Integer({ minimum: 1, maximum: 128 }), t.Null()])),
  },
  { additionalProperties: true },
);
export type CompletionRequest = typeof CompletionRequest.static;

export const EmbeddingRequest = t.Object(
  {
    model: t.String({ minLength: 1 }),
    input: t.Union([t.String(), t.Array(t.String(), { minItems: 1 }), t.Array(t.Integer(), { minItems: 1 }), t.Array(t.Array(t.Integer(), { minItems: 1 }), { minItems: 1 })]),
    encoding_format: t.Optional(t.Union([t.Literal("float"), t.Literal("base64")])),
    dimensions: t.Optional(t.Integer({ minimum: 1, maximum: 1_048_576 })),
    user: t.Optional(t.String()),
  },
  { additionalProperties: true },
);
export type EmbeddingRequest = typeof EmbeddingRequest.static;

export const TokenizeRequest = t.Object({
  /** Model name; default: the only registered model. */
  model: t.Optional(t.String({ minLength: 1 })),
  content: t.String(),
  /** Prepend BOS as the model does for a prompt. Default false. */
  add_special: t.Optional(t.Boolean()),
  /** Parse special-token text such as `<|im_start|>` as special tokens. Default true. */
  parse_special: t.Optional(t.Boolean()),
  /** Answer `[{id, piece}]` instead of ids. Default false. */
  with_pieces: t.Optional(t.Boolean()),
});
export type TokenizeRequest = typeof TokenizeRequest.static;

export const DetokenizeRequest = t.Object({
  model: t.Optional(t.String({ minLength: 1 })),
  tokens: t.Array(t.Integer()),
});
export type DetokenizeRequest = typeof DetokenizeRequest.static;

/** `{"error": {...}}` as OpenAI sends it. */
export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}
