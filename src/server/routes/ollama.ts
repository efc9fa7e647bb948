/**
 * Ollama-compatible API: /api/chat, /api/generate (shared with shimmy's native route, chosen by
 * content negotiation), /api/tags, /api/show, /api/embed, /api/version. Streams are NDJSON (one JSON
 * object per line); durations are nanoseconds, as Ollama reports them.
 */
import { createHash } from "node:crypto";
import { createReadStream, statSync } from "node:fs";
import { Elysia } from "elysia";
import type { ChatMessage, GenerateOptions, ModelInfo, Timings, TokenEvent, ToolCall } from "../../engine/types.ts";
import { BadRequestError, toShimmyError } from "../../errors.ts";
import { VERSION } from "../../version.ts";
import { errorJson, keepAliveOption, parseJsonBody, type ServingEngine, settle, startGeneration } from "../http.ts";

type Body = Record<string, unknown>;

/**
 * Whether a POST /api/generate is Ollama's rather than shimmy's: an NDJSON or JSON `Accept` (what
 * Ollama's clients send), or fields only Ollama's request has. Anything else (curl's default,
 * `text/event-stream`) gets shimmy's SSE.
 */
export function wantsOllama(request: Request, body: Body): boolean {
  const accept = request.headers.get("accept") ?? "";
  if (/text\/event-stream/i.test(accept)) return false;
  if (/application\/(x-ndjson|json)/i.test(accept)) return true;
  return ["options", "raw", "format", "images", "template", "context", "suffix"].some((k) => k in body);
}

const ns = (ms: number) => Math.round(ms * 1e6);

/** Ollama's done_reason: "length" when cut by num_predict or the context, "stop" otherwise (a tool call included). */
const doneReason = (r: string) => (r === "length" ? "length" : "stop");

function durations(t: Timings) {
  return {
    total_duration: ns(t.totalMs),
    load_duration: ns(Math.max(0, t.ttftMs - t.queueMs - t.promptMs)),
    prompt_eval_count: t.promptTokens,
    prompt_eval_duration: ns(t.promptMs),
    eval_count: t.generatedTokens,
    eval_duration: ns(t.generateMs),
  };
}

/** Ollama's `options` and top-level fields as engine options. */
function ollamaOptions(body: Body, signal: AbortSignal): GenerateOptions & { keepAliveMs?: number } {
  const o = (body.options ?? {}) as Record<string, unknown>;
  if (typeof o !== "object" || Array.isArray(o)) throw new BadRequestError("options must be an object", { param: "options" });
  const num = (k: string, min: number, max: number, int = false): number | undefined => {
    const v = o[k];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "number" || !Number.isFinite(v) || v < min || v > max || (int && !Number.isInteger(v))) throw new BadRequestError(`invalid option '${k}': expected ${int ? "an integer" : "a number"} from ${min} to ${max}`, { param: `options.${k}` });
    return v;
  };
  const stop = o.stop;
  if (stop !== undefined && !(typeof stop === "string" || (Array.isArray(stop) && stop.every((s) => typeof s === "string")))) throw new BadRequestError("invalid option 'stop': expected a string or an array of strings", { param: "options.stop" });
  const predict = num("num_predict", -2, 1_048_576, true);
  // The context size is fixed when the model loads (--ctx-size); num_ctx is validated, then ignored.
  num("num_ctx", 1, 10_485_760, true);
  const format = body.format;
  const keep = body.keep_alive;
  if (keep !== undefined && typeof keep !== "string" && typeof keep !== "number") throw new BadRequestError("invalid field 'keep_alive': expected a duration", { param: "keep_alive" });
  return {
    temperature: num("temperature", 0, 5),
    topP: num("top_p", 0, 1),
    topK: num("top_k", 0, 1_000_000, true),
    minP: num("min_p", 0, 1),
    repeatPenalty: num("repeat_penalty", 0, 10),
    frequencyPenalty: num("frequency_penalty", -2, 2),
    presencePenalty: num("presence_penalty", -2, 2),
    seed: num("seed", -2147483648, 4294967295, true),
    // num_predict -1 (infinite) and -2 (fill the context) both mean: until the model stops.
    maxTokens: predict !== undefined && predict > 0 ? predict : undefined,
    stop: stop === undefined ? undefined : Array.isArray(stop) ? stop : [stop],
    responseFormat: format === undefined || format === "" ? undefined : format === "json" ? { type: "json_object" } : typeof format === "object" && format && !Array.isArray(format) ? { type: "json_schema", schema: format as Record<string, unknown> } : badFormat(),
    keepAliveMs: keepAliveOption(keep as string | number | undefined),
    signal,
  };
}

function badFormat(): never {
  throw new BadRequestError(`invalid field 'format': expected "json" or a JSON schema object`, { param: "format" });
}

function requireModel(body: Body): string {
  if (typeof body.model !== "string" || !body.model) throw new BadRequestError("missing field 'model': expected a non-empty string", { param: "model" });
  return body.model;
}

/**
 * Ollama's chat messages. Its tool calls carry no ids: each assistant call gets one here, and each
 * following `tool` message answers the next unanswered call, in order.
 */
function messagesOf(body: Body): ChatMessage[] {
  if (!Array.isArray(body.messages)) throw new BadRequestError("invalid field 'messages': expected an array", { param: "messages" });
  const pending: string[] = [];
  let n = 0;
  return body.messages.map((m, i) => {
    const msg = (m ?? {}) as Record<string, unknown>;
    const role = msg.role;
    if (role !== "system" && role !== "user" && role !== "assistant" && role !== "tool") throw new BadRequestError(`invalid field 'messages.${i}.role': expected one of "system", "user", "assistant", "tool"`, { param: `messages.${i}.role` });
    const calls = msg.tool_calls;
    if (msg.content !== undefined && typeof msg.content !== "string") throw new BadRequestError(`invalid field 'messages.${i}.content': expected a string`, { param: `messages.${i}.content` });
    if (msg.content === undefined && !(role === "assistant" && Array.isArray(calls))) throw new BadRequestError(`missing field 'messages.${i}.content'`, { param: `messages.${i}.content` });
    if (Array.isArray(msg.images) && msg.images.length) throw new BadRequestError(`messages.${i}.images: images are not supported (no vision models yet)`, { param: `messages.${i}.images` });
    const content = (msg.content as string | undefined) ?? "";
    if (role === "assistant" && Array.isArray(calls) && calls.length) {
      const toolCalls = calls.map((c, j) => {
        const f = (c as { function?: { name?: unknown; arguments?: unknown } })?.function;
        if (typeof f?.name !== "string") throw new BadRequestError(`invalid field 'messages.${i}.tool_calls.${j}.function.name': expected a string`, { param: `messages.${i}.tool_calls.${j}` });
        const id = `call_${n++}`;
        pending.push(id);
        return { id, name: f.name, arguments: typeof f.arguments === "string" ? f.arguments : JSON.stringify(f.arguments ?? {}) };
      });
      return { role, content, toolCalls };
    }
    if (role === "tool") return { role, content, toolCallId: pending.shift() ?? `call_${n++}` };
    return { role, content };
  });
}

/** Ollama's tools (`[{type: "function", function: {name, description, parameters}}]`). */
function toolsOf(body: Body): GenerateOptions["tools"] {
  if (body.tools === undefined || body.tools === null) return undefined;
  if (!Array.isArray(body.tools)) throw new BadRequestError("invalid field 'tools': expected an array", { param: "tools" });
  if (!body.tools.length) return undefined;
  return (body.tools as Array<{ function?: { name?: unknown; description?: unknown; parameters?: unknown } }>).map((t, i) => {
    const f = t?.function;
    if (typeof f?.name !== "string" || !f.name) throw new BadRequestError(`invalid field 'tools.${i}.function.name': expected a non-empty string`, { param: `tools.${i}.function.name` });
    return { name: f.name, description: typeof f.description === "string" ? f.description : undefined, parameters: (f.parameters ?? undefined) as Record<string, unknown> | undefined };
  });
}

/** Tool calls as Ollama sends them: arguments as an object. */
function wireToolCalls(calls: ToolCall[]) {
  return calls.map((c) => {
    let args: unknown = {};
    try {
      args = JSON.parse(c.arguments);
    } catch {
      args = { _raw: c.arguments };
    }
    return { function: { name: c.name, arguments: args } };
  });
}

/** Runs a generation as an Ollama endpoint answers it: NDJSON lines, or one object when stream is false. */
async function* ollamaStream(
  engine: ServingEngine,
  request: Request,
  set: { status?: number | string; headers: Record<string, string | number> },
  model: string,
  opts: GenerateOptions,
  stream: boolean,
  shape: (text: string, toolCalls?: ToolCall[]) => Record<string, unknown>,
): AsyncGenerator<string, Response | undefined, unknown> {
  let events: AsyncGenerator<TokenEvent, void, undefined>;
  try {
    events = await startGeneration(engine, model, opts, request);
  } catch (err) {
    return settle(set, errorJson(err));
  }
  const line = (o: Record<string, unknown>) => `${JSON.stringify(o)}\n`;
  const created = () => new Date().toISOString();
  if (!stream) {
    try {
      for await (const ev of events) {
        if (ev.type !== "done") continue;
        return Response.json({ model: ev.model, created_at: created(), ...shape(ev.text, ev.toolCalls), done: true, done_reason: doneReason(ev.finishReason), ...durations(ev.timings) });
      }
    } catch (err) {
      return settle(set, errorJson(err));
    }
    return settle(set, errorJson(new Error("generation ended without a result")));
  }
  set.headers["content-type"] = "application/x-ndjson";
  try {
    for await (const ev of events) {
      if (ev.type === "token") yield line({ model, created_at: created(), ...shape(ev.text), done: false });
      else yield line({ model: ev.model, created_at: created(), ...shape("", ev.toolCalls), done: true, done_reason: doneReason(ev.finishReason), ...durations(ev.timings) });
    }
  } catch (err) {
    yield line({ error: toShimmyError(err).message });
  }
  return undefined;
}

/** Ollama's /api/generate: the prompt goes through the chat template unless `raw`. */
export function ollamaGenerate(engine: ServingEngine, body: Body, request: Request, set: { status?: number | string; headers: Record<string, string | number> }) {
  let model: string;
  let opts: GenerateOptions;
  try {
    model = requireModel(body);
    if (body.prompt !== undefined && typeof body.prompt !== "string") throw new BadRequestError("invalid field 'prompt': expected a string", { param: "prompt" });
    if (Array.isArray(body.images) && body.images.length) throw new BadRequestError("images are not supported", { param: "images" });
    opts = ollamaOptions(body, request.signal);
    const prompt = (body.prompt as string | undefined) ?? "";
    const system = typeof body.system === "string" ? body.system : undefined;
    if (body.raw === true) opts.prompt = prompt;
    else opts.messages = [...(system !== undefined ? [{ role: "system" as const, content: system }] : []), { role: "user" as const, content: prompt }];
  } catch (err) {
    return (async function* () {
      return settle(set, errorJson(err));
    })();
  }
  return ollamaStream(engine, request, set, model, opts, body.stream !== false, (text) => ({ response: text }));
}

/** sha256 of a file, computed once per (path, size, mtime). */
const digests = new Map<string, Promise<string>>();
function fileDigest(file: string): Promise<string> {
  let key = file;
  try {
    const st = statSync(file);
    key = `${file}|${st.size}|${st.mtimeMs}`;
  } catch {}
  let d = digests.get(key);
  if (!d) {
    d = new Promise((resolve, reject) => {
      const h = createHash("sha256");
      createReadStream(file)
        .on("data", (c) => h.update(c))
        .on("end", () => resolve(h.digest("hex")))
        .on("error", reject);
    });
    digests.set(key, d);
    d.catch(() => digests.delete(key));
  }
  return d;
}

function paramSize(n: number | undefined): string {
  if (!n) return "";
  return n >= 1e9 ? `${(n / 1e9).toFixed(1)}B` : n >= 1e6 ? `${Math.round(n / 1e6)}M` : `${Math.round(n / 1e3)}K`;
}

function details(m: ModelInfo) {
  return { parent_model: "", format: "gguf", family: m.meta?.architecture ?? "", families: m.meta ? [m.meta.architecture] : null, parameter_size: paramSize(m.meta?.parameters), quantization_level: m.meta?.fileType ?? "" };
}

export const ollamaRoutes = (engine: ServingEngine) =>
  new Elysia({ name: "shimmy.ollama" })
    .get("/api/version", () => ({ version: VERSION }))
    .get("/api/tags", async () => {
      const models = (await engine.list()).filter((m) => !m.problem);
      return {
        models: await Promise.all(
          models.map(async (m) => ({
            name: m.name,
            model: m.name,
            modified_at: new Date(statSync(m.path).mtimeMs).toISOString(),
            size: m.sizeBytes,
            digest: await fileDigest(m.path),
            details: details(m),
          })),
        ),
      };
    })
    .post(
      "/api/show",
      async ({ body, set }) => {
        try {
          const name = typeof (body as Body).model === "string" ? ((body as Body).model as string) : typeof (body as Body).name === "string" ? ((body as Body).name as string) : requireModel(body as Body);
          const entry = await engine.resolve(name);
          const m = (await engine.list()).find((x) => x.name === entry.name)!;
          const info = await engine.metadata(entry.name);
          // The context a load gets: --ctx-size, capped at what the model was trained for.
          const ctx = Math.min(engine.options.ctxSize, m.meta?.contextLength ?? Number.POSITIVE_INFINITY);
          return {
            modelfile: `FROM ${m.path}\n`,
            parameters: `num_ctx ${ctx}`,
            template: info.chatTemplate ?? "",
            details: details(m),
            model_info: info.metadata,
            capabilities: ["completion", ...(info.chatTemplate ? ["tools"] : []), "embedding"],
            modified_at: new Date(statSync(m.path).mtimeMs).toISOString(),
          };
        } catch (err) {
          return settle(set, errorJson(err));
        }
      },
      { parse: parseJsonBody },
    )
    .post(
      "/api/chat",
      async function* ({ body, request, set }) {
        let model: string;
        let opts: GenerateOptions;
        try {
          const b = body as Body;
          model = requireModel(b);
          opts = { ...ollamaOptions(b, request.signal), messages: messagesOf(b) };
          if (!opts.messages!.length) throw new BadRequestError("messages must not be empty (Ollama's load-only form is not supported)", { param: "messages" });
          opts.tools = toolsOf(b);
        } catch (err) {
          return settle(set, errorJson(err));
        }
        const stream = (body as Body).stream !== false;
        const gen = ollamaStream(engine, request, set, model, opts, stream, (text, calls) => ({ message: { role: "assistant", content: text, ...(calls?.length ? { tool_calls: wireToolCalls(calls) } : {}) } }));
        return yield* gen;
      },
      { parse: parseJsonBody },
    )
    .post(
      "/api/embed",
      async ({ body, request, set }) => {
        try {
          const b = body as Body;
          const model = requireModel(b);
          const input = b.input;
          const inputs = typeof input === "string" ? [input] : Array.isArray(input) && input.every((x) => typeof x === "string") ? (input as string[]) : undefined;
          if (!inputs || !inputs.length) throw new BadRequestError("invalid field 'input': expected a string or an array of strings", { param: "input" });
          const t0 = performance.now();
          const r = await engine.embed(model, inputs, request.signal);
          return { model: r.model, embeddings: r.vectors, total_duration: ns(performance.now() - t0), load_duration: 0, prompt_eval_count: r.promptTokens };
        } catch (err) {
          return settle(set, errorJson(err));
        }
      },
      { parse: parseJsonBody },
    );
