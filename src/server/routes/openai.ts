/**
 * OpenAI-compatible API: /v1/chat/completions, /v1/completions, /v1/models, /v1/embeddings, and
 * llama-server's /tokenize and /detokenize. Wire formats follow OpenAI's API reference: one `id` and
 * `created` per response, role chunk first, finish chunk last, optional usage chunk, `[DONE]`.
 */
import { Elysia } from "elysia";
import {
  ChatCompletionRequest,
  CompletionRequest,
  DetokenizeRequest,
  EmbeddingRequest,
  TokenizeRequest,
  type OpenAIErrorBody,
  type OpenAIMessage,
} from "../../api/openai.ts";
import type { ChatMessage, GenerateOptions, ResponseFormat, Timings, TokenEvent, TokenLogprob, ToolCall, ToolChoice } from "../../engine/types.ts";
import { normalizeModelName } from "../../engine/registry.ts";
import { BadRequestError, ModelNotFoundError, OverloadedError, PromptTooLongError, toShimmyError, UnauthorizedError } from "../../errors.ts";
import { log } from "../../log.ts";
import { settle, errorHeaders, keepAliveOption, parseJsonBody, type ServingEngine, sseEvent, startGeneration, wireTimings } from "../http.ts";

/** OpenAI's error object for any error: status, type, param, code. */
export function openaiErrorBody(err: unknown, promptParam = "messages"): { status: number; body: OpenAIErrorBody } {
  const e = toShimmyError(err);
  let code: string | null = null;
  let param: string | null = (e as { param?: string }).param ?? null;
  let type = e.status >= 500 ? "server_error" : "invalid_request_error";
  if (e instanceof ModelNotFoundError) {
    code = "model_not_found";
    param = "model";
  } else if (e instanceof PromptTooLongError) {
    code = "context_length_exceeded";
    param ??= promptParam;
  } else if (e instanceof OverloadedError) {
    code = "overloaded";
    type = "server_error";
  } else if (e instanceof UnauthorizedError) code = "invalid_api_key";
  else if (e.status === 403 || e.status === 413) code = e.type; else if (e.status >= 500) code = e.type;
  return { status: e.status, body: { error: { message: e.message, type, param, code } } };
}

export function openaiErrorResponse(err: unknown, promptParam?: string): Response {
  const { status, body } = openaiErrorBody(err, promptParam);
  return Response.json(body, { status, headers: errorHeaders(status) });
}

const now = () => Math.floor(Date.now() / 1000);
const randomId = (prefix: string) => `${prefix}-${crypto.randomUUID().replace(/-/g, "").slice(0, 24)}`;
const FINGERPRINT = "fp_shimmy";

function usage(t: Timings) {
  return { prompt_tokens: t.promptTokens, completion_tokens: t.generatedTokens, total_tokens: t.promptTokens + t.generatedTokens, prompt_tokens_details: { cached_tokens: t.cachedTokens } };
}

function wireToolCalls(calls: ToolCall[]) {
  return calls.map((c) => ({ id: c.id, type: "function" as const, function: { name: c.name, arguments: c.arguments } }));
}

/** Message content as text: a string, or text parts joined. Any other part type is a 400 naming it. */
function contentText(content: OpenAIMessage["content"], at: string): string {
  if (content == null) return "";
  if (typeof content === "string") return content;
  return content
    .map((part, i) => {
      if (part.type !== "text" || typeof part.text !== "string")
        throw new BadRequestError(`content part type '${part.type}' is not supported (only 'text'): ${at}.content[${i}]`, { param: `${at}.content[${i}].type` });
      return part.text;
    })
    .join("");
}

function toMessages(messages: OpenAIMessage[]): ChatMessage[] {
  return messages.map((m, i) => {
    const at = `messages[${i}]`;
    const content = contentText(m.content, at);
    switch (m.role) {
      case "system":
      case "developer":
        return { role: "system", content };
      case "user":
        return { role: "user", content };
      case "assistant":
        return { role: "assistant", content, ...(m.tool_calls?.length ? { toolCalls: m.tool_calls.map((c) => ({ id: c.id, name: c.function.name, arguments: c.function.arguments })) } : {}) };
      case "tool":
        if (!m.tool_call_id) throw new BadRequestError(`${at}: a tool message needs tool_call_id`, { param: `${at}.tool_call_id` });
        return { role: "tool", content, toolCallId: m.tool_call_id };
    }
  });
}

/** Sampling and limits shared by both completion routes. */
function samplingOptions(body: ChatCompletionRequest | CompletionRequest, signal: AbortSignal): GenerateOptions & { keepAliveMs?: number } {
  if ((body.n ?? 1) > 1) throw new BadRequestError("n > 1 is not supported: send one request per completion", { param: "n" });
  const logitBias: Record<number, number> = {};
  for (const [k, v] of Object.entries(body.logit_bias ?? {})) {
    if (!/^\d+$/.test(k)) throw new BadRequestError(`logit_bias keys must be token ids, got '${k}'`, { param: "logit_bias" });
    logitBias[Number(k)] = v;
  }
  const stop = body.stop == null ? undefined : Array.isArray(body.stop) ? body.stop : [body.stop];
  return {
    temperature: body.temperature ?? undefined,
    topP: body.top_p ?? undefined,
    topK: body.top_k,
    minP: body.min_p,
    repeatPenalty: body.repeat_penalty,
    frequencyPenalty: body.frequency_penalty ?? undefined,
    presencePenalty: body.presence_penalty ?? undefined,
    logitBias: Object.keys(logitBias).length ? logitBias : undefined,
    seed: body.seed ?? undefined,
    maxTokens: ("max_completion_tokens" in body ? body.max_completion_tokens : undefined) ?? body.max_tokens ?? undefined,
    stop,
    signal,
    keepAliveMs: keepAliveOption(body.keep_alive),
  };
}

/** Chat: `logprobs: true` (+ `top_logprobs`). Text completions: `logprobs: <number of alternatives>`. */
function logprobsOption(body: ChatCompletionRequest | CompletionRequest, chat: boolean): number | undefined {
  if (chat) {
    if (body.top_logprobs != null && body.logprobs !== true) throw new BadRequestError("top_logprobs needs logprobs: true", { param: "top_logprobs" });
    return body.logprobs === true ? (body.top_logprobs ?? 0) : undefined;
  }
  if (typeof body.logprobs === "number") {
    if (body.logprobs > 20) throw new BadRequestError("logprobs must be from 0 to 20", { param: "logprobs" });
    return body.logprobs;
  }
  return body.logprobs === true ? 0 : undefined;
}

const wireLogprob = (l: TokenLogprob) => ({ token: l.token, logprob: l.logprob, bytes: l.bytes, top_logprobs: l.top.map((t) => ({ token: t.token, logprob: t.logprob, bytes: t.bytes })) });

/** Legacy completions' logprobs object for a choice's tokens; `offset` is where its text starts. */
function legacyLogprobs(list: TokenLogprob[], offset = 0) {
  const text_offset: number[] = [];
  let at = offset;
  for (const l of list) {
    text_offset.push(at);
    at += l.token.length;
  }
  return { tokens: list.map((l) => l.token), token_logprobs: list.map((l) => l.logprob), top_logprobs: list.map((l) => Object.fromEntries(l.top.map((t) => [t.token, t.logprob]))), text_offset };
}

function chatOptions(body: ChatCompletionRequest, signal: AbortSignal): GenerateOptions & { keepAliveMs?: number } {
  const opts = samplingOptions(body, signal);
  opts.logprobs = logprobsOption(body, true);
  opts.messages = toMessages(body.messages);
  const rf = body.response_format;
  let responseFormat: ResponseFormat | undefined;
  if (rf?.type === "json_object") responseFormat = { type: "json_object" };
  else if (rf?.type === "json_schema") {
    if (!rf.json_schema.schema) throw new BadRequestError("response_format.json_schema.schema is required", { param: "response_format.json_schema.schema" });
    responseFormat = { type: "json_schema", schema: rf.json_schema.schema };
  }
  opts.responseFormat = responseFormat;
  if (body.tools?.length) {
    opts.tools = body.tools.map((t) => ({ name: t.function.name, description: t.function.description, parameters: t.function.parameters }));
    const tc = body.tool_choice;
    const choice: ToolChoice = tc == null ? "auto" : typeof tc === "string" ? tc : { name: tc.function.name };
    if (typeof choice === "object" && !opts.tools.some((t) => t.name === choice.name))
      throw new BadRequestError(`tool_choice names function '${choice.name}', which is not in tools`, { param: "tool_choice" });
    opts.toolChoice = choice;
  } else if (body.tool_choice && body.tool_choice !== "none" && body.tool_choice !== "auto") {
    throw new BadRequestError("tool_choice needs tools", { param: "tool_choice" });
  }
  return opts;
}

/** One SSE event with a JSON payload. */
const data = (payload: unknown) => sseEvent(JSON.stringify(payload));

export const openaiRoutes = (engine: ServingEngine) =>
  new Elysia({ name: "shimmy.openai" })
    .post(
      "/v1/chat/completions",
      async function* ({ body, request, set }) {
        let events: AsyncGenerator<TokenEvent, void, undefined>;
        try {
          events = await startGeneration(engine, body.model, chatOptions(body, request.signal), request);
        } catch (err) {
          return settle(set, openaiErrorResponse(err));
        }
        const id = randomId("chatcmpl");
        const created = now();
        if (!body.stream) {
          try {
            for await (const ev of events) {
              if (ev.type !== "done") continue;
              return Response.json({
                id,
                object: "chat.completion",
                created,
                model: ev.model,
                system_fingerprint: FINGERPRINT,
                choices: [
                  {
                    index: 0,
                    message: { role: "assistant", content: ev.toolCalls?.length && !ev.text ? null : ev.text, refusal: null, ...(ev.toolCalls?.length ? { tool_calls: wireToolCalls(ev.toolCalls) } : {}) },
                    logprobs: ev.logprobs ? { content: ev.logprobs.map(wireLogprob), refusal: null } : null,
                    finish_reason: ev.finishReason === "abort" ? "stop" : ev.finishReason,
                  },
                ],
                usage: usage(ev.timings),
                timings: wireTimings(ev.timings),
              });
            }
          } catch (err) {
            return settle(set, openaiErrorResponse(err));
          }
          return settle(set, openaiErrorResponse(new Error("generation ended without a result")));
        }
        const includeUsage = body.stream_options?.include_usage === true;
        // The registered name the request resolved to (the same spelling in every chunk).
        let model = normalizeModelName(body.model);
        const chunk = (choices: unknown[], extra: Record<string, unknown> = {}) =>
          data({ id, object: "chat.completion.chunk", created, model, system_fingerprint: FINGERPRINT, choices, ...(includeUsage ? { usage: null } : {}), ...extra });
        try {
          let first = true;
          for await (const ev of events) {
            if (first) {
              first = false;
              yield chunk([{ index: 0, delta: { role: "assistant", content: "", refusal: null }, logprobs: null, finish_reason: null }]);
            }
            if (ev.type === "token") {
              yield chunk([{ index: 0, delta: { content: ev.text }, logprobs: ev.logprobs ? { content: ev.logprobs.map(wireLogprob), refusal: null } : null, finish_reason: null }]);
              continue;
            }
            model = ev.model;
            if (ev.toolCalls?.length) {
              for (const [index, c] of ev.toolCalls.entries()) {
                yield chunk([{ index: 0, delta: { tool_calls: [{ index, id: c.id, type: "function", function: { name: c.name, arguments: "" } }] }, logprobs: null, finish_reason: null }]);
                yield chunk([{ index: 0, delta: { tool_calls: [{ index, function: { arguments: c.arguments } }] }, logprobs: null, finish_reason: null }]);
              }
            }
            yield chunk([{ index: 0, delta: {}, logprobs: null, finish_reason: ev.finishReason === "abort" ? "stop" : ev.finishReason }], { timings: wireTimings(ev.timings) });
            if (includeUsage) yield data({ id, object: "chat.completion.chunk", created, model, system_fingerprint: FINGERPRINT, choices: [], usage: usage(ev.timings) });
          }
        } catch (err) {
          log.warn(`stream error: ${toShimmyError(err).message}`);
          yield data(openaiErrorBody(err).body);
        }
        yield sseEvent("[DONE]");
      },
      { body: ChatCompletionRequest, parse: parseJsonBody },
    )
    .post(
      "/v1/completions",
      async function* ({ body, request, set }) {
        if (body.suffix) return settle(set, openaiErrorResponse(new BadRequestError("suffix (fill-in-the-middle) is not supported", { param: "suffix" })));
        if (body.echo) return settle(set, openaiErrorResponse(new BadRequestError("echo is not supported", { param: "echo" })));
        if ((body.best_of ?? 1) > 1) return settle(set, openaiErrorResponse(new BadRequestError("best_of > 1 is not supported", { param: "best_of" })));
        const prompts = Array.isArray(body.prompt) ? body.prompt : [body.prompt];
        const id = randomId("cmpl");
        const created = now();
        let opts: GenerateOptions;
        let first: AsyncGenerator<TokenEvent, void, undefined>;
        try {
          opts = { ...samplingOptions(body, request.signal), logprobs: logprobsOption(body, false) };
          first = await startGeneration(engine, body.model, { ...opts, prompt: prompts[0] }, request);
        } catch (err) {
          return settle(set, openaiErrorResponse(err, "prompt"));
        }
        // Each prompt of an array is one choice, generated in turn.
        const runs = async function* () {
          yield first;
          for (const prompt of prompts.slice(1)) yield await startGeneration(engine, body.model, { ...opts, prompt }, request);
        };
        if (!body.stream) {
          try {
            const choices = [];
            let model = normalizeModelName(body.model);
            const total = { promptTokens: 0, generatedTokens: 0 };
            let index = 0;
            for await (const events of runs()) {
              for await (const ev of events) {
                if (ev.type !== "done") continue;
                model = ev.model;
                total.promptTokens += ev.timings.promptTokens;
                total.generatedTokens += ev.timings.generatedTokens;
                choices.push({ text: ev.text, index: index++, logprobs: ev.logprobs ? legacyLogprobs(ev.logprobs) : null, finish_reason: ev.finishReason === "abort" ? "stop" : ev.finishReason });
              }
            }
            return Response.json({ id, object: "text_completion", created, model, system_fingerprint: FINGERPRINT, choices, usage: { prompt_tokens: total.promptTokens, completion_tokens: total.generatedTokens, total_tokens: total.promptTokens + total.generatedTokens } });
          } catch (err) {
            return settle(set, openaiErrorResponse(err, "prompt"));
          }
        }
        const includeUsage = body.stream_options?.include_usage === true;
        let model = normalizeModelName(body.model);
        const chunk = (choices: unknown[]) => data({ id, object: "text_completion", created, model, system_fingerprint: FINGERPRINT, choices, ...(includeUsage ? { usage: null } : {}) });
        try {
          const total = { promptTokens: 0, generatedTokens: 0 };
          let index = 0;
          for await (const events of runs()) {
            let offset = 0;
            for await (const ev of events) {
              if (ev.type === "token") {
                yield chunk([{ text: ev.text, index, logprobs: ev.logprobs ? legacyLogprobs(ev.logprobs, offset) : null, finish_reason: null }]);
                offset += ev.text.length;
                continue;
              }
              model = ev.model;
              total.promptTokens += ev.timings.promptTokens;
              total.generatedTokens += ev.timings.generatedTokens;
              yield chunk([{ text: "", index, logprobs: null, finish_reason: ev.finishReason === "abort" ? "stop" : ev.finishReason }]);
            }
            index++;
          }
          if (includeUsage)
            yield data({ id, object: "text_completion", created, model, system_fingerprint: FINGERPRINT, choices: [], usage: { prompt_tokens: total.promptTokens, completion_tokens: total.generatedTokens, total_tokens: total.promptTokens + total.generatedTokens } });
        } catch (err) {
          log.warn(`stream error: ${toShimmyError(err).message}`);
          yield data(openaiErrorBody(err, "prompt").body);
        }
        yield sseEvent("[DONE]");
      },
      { body: CompletionRequest, parse: parseJsonBody },
    )
    .get("/v1/models", async () => ({
      object: "list",
      // Loadable models only: broken files and incomplete split sets are in /api/models with their problem.
      data: (await engine.list()).filter((m) => !m.problem).map((m) => ({ id: m.name, object: "model", created: Math.floor(modelCreated(m.path) / 1000), owned_by: "shimmy" })),
    }))
    // A wildcard: Ollama-style ids may hold a slash (`someone/coder:7b`).
    .get("/v1/models/*", async ({ params, set }) => {
      let id = params["*"];
      try {
        id = decodeURIComponent(id);
      } catch {} // not a valid escape: look it up as written (a 404)
      const all = (await engine.list()).filter((e) => !e.problem);
      const m = all.find((e) => normalizeModelName(e.name) === normalizeModelName(id));
      if (!m) return settle(set, openaiErrorResponse(new ModelNotFoundError(id, all.map((e) => e.name))));
      return { id: m.name, object: "model", created: Math.floor(modelCreated(m.path) / 1000), owned_by: "shimmy" };
    })
    .post(
      "/v1/embeddings",
      async ({ body, request, set }) => {
        try {
          if (body.dimensions !== undefined) throw new BadRequestError("dimensions is not supported: embeddings have the model's size", { param: "dimensions" });
          const raw = body.input;
          const inputs: Array<string | number[]> = typeof raw === "string" ? [raw] : raw.length && typeof raw[0] === "number" ? [raw as number[]] : (raw as Array<string | number[]>);
          if (inputs.some((i) => i === "")) throw new BadRequestError("input must not contain empty strings", { param: "input" });
          const r = await engine.embed(body.model, inputs, request.signal);
          return {
            object: "list",
            data: r.vectors.map((v, index) => ({ object: "embedding", index, embedding: body.encoding_format === "base64" ? Buffer.from(new Float32Array(v).buffer).toString("base64") : v })),
            model: r.model,
            usage: { prompt_tokens: r.promptTokens, total_tokens: r.promptTokens },
          };
        } catch (err) {
          return settle(set, openaiErrorResponse(err, "input"));
        }
      },
      { body: EmbeddingRequest, parse: parseJsonBody },
    )
    .post(
      "/tokenize",
      async ({ body, set }) => {
        try {
          const model = await defaultModel(engine, body.model);
          const r = await engine.tokenize(model, body.content, { special: body.parse_special ?? true, addBos: body.add_special ?? false });
          const { tokens, pieces } = r;
          return { tokens: body.with_pieces ? tokens.map((id, i) => ({ id, piece: pieces[i]! })) : tokens };
        } catch (err) {
          return settle(set, openaiErrorResponse(err));
        }
      },
      { body: TokenizeRequest, parse: parseJsonBody },
    )
    .post(
      "/detokenize",
      async ({ body, set }) => {
        try {
          return { content: (await engine.detokenize(await defaultModel(engine, body.model), body.tokens)).text };
        } catch (err) {
          return settle(set, openaiErrorResponse(err));
        }
      },
      { body: DetokenizeRequest, parse: parseJsonBody },
    );

function modelCreated(file: string): number {
  try {
    return require("node:fs").statSync(file).mtimeMs;
  } catch {
    return Date.now();
  }
}

/** `model` when given; else the only registered model; else the only loaded one. */
async function defaultModel(engine: ServingEngine, model: string | undefined): Promise<string> {
  if (model) return model;
  const all = (await engine.list()).filter((m) => !m.problem);
  if (all.length === 1) return all[0]!.name;
  const loaded = engine.loadedNames();
  if (loaded.length === 1) return loaded[0]!;
  throw new BadRequestError(`model is required: ${all.length} models are registered (${all.map((m) => m.name).join(", ")})`, { param: "model" });
}

