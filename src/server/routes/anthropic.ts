/**
 * Anthropic's Messages API: POST /v1/messages (JSON or SSE with Anthropic's named events) and
 * POST /v1/messages/count_tokens. Errors use Anthropic's shape `{"type":"error","error":{...}}`.
 */
import { Elysia } from "elysia";
import type { ChatMessage, GenerateOptions, TokenEvent, ToolCall, ToolChoice, ToolDefinition } from "../../engine/types.ts";
import { BadRequestError, type ShimmyError, toShimmyError } from "../../errors.ts";
import { log } from "../../log.ts";
import { errorHeaders, keepAliveOption, parseJsonBody, type ServingEngine, settle, sseEvent, startGeneration } from "../http.ts";

type Body = Record<string, unknown>;

const ERROR_TYPES: Record<number, string> = {
  400: "invalid_request_error",
  401: "authentication_error",
  403: "permission_error",
  404: "not_found_error",
  413: "request_too_large",
  429: "rate_limit_error",
  503: "overloaded_error",
};

const errorType = (status: number) => ERROR_TYPES[status] ?? "api_error";

/** An error as Anthropic's API answers it. */
export function anthropicErrorResponse(err: unknown): Response {
  const e: ShimmyError = toShimmyError(err);
  return Response.json({ type: "error", error: { type: errorType(e.status), message: e.message } }, { status: e.status, headers: errorHeaders(e.status) });
}

const bad = (message: string, param: string): never => {
  throw new BadRequestError(`${param}: ${message}`, { param });
};

function num(body: Body, key: string, min: number, max: number, int = false): number | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isFinite(v) || v < min || v > max || (int && !Number.isInteger(v))) bad(`expected ${int ? "an integer" : "a number"} from ${min} to ${max}, got ${JSON.stringify(v)}`, key);
  return v as number;
}

/** Text of a `system` field: a string or text blocks. */
function systemText(v: unknown): string | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v === "string") return v;
  if (!Array.isArray(v)) return bad("expected a string or an array of text blocks", "system");
  return v.map((b, i) => (b?.type === "text" && typeof b.text === "string" ? (b.text as string) : bad("expected a text block", `system.${i}`))).join("\n");
}

/** Text of a tool_result's `content`: a string or text blocks. */
function resultText(v: unknown, at: string): string {
  if (v === undefined || v === null) return "";
  if (typeof v === "string") return v;
  if (!Array.isArray(v)) return bad("expected a string or an array of text blocks", at);
  return v.map((b, i) => (b?.type === "text" && typeof b.text === "string" ? (b.text as string) : bad(`block type '${b?.type}' is not supported here (only 'text')`, `${at}.${i}`))).join("");
}

/** Anthropic messages as engine messages: tool_use blocks become tool calls, tool_result blocks tool messages. */
function messagesOf(body: Body): ChatMessage[] {
  const list = body.messages;
  if (!Array.isArray(list) || list.length === 0) bad("expected a non-empty array of messages", "messages");
  const out: ChatMessage[] = [];
  const system = systemText(body.system);
  if (system !== undefined) out.push({ role: "system", content: system });
  (list as unknown[]).forEach((raw, i) => {
    const at = `messages.${i}`;
    const m = (raw ?? {}) as Record<string, unknown>;
    if (m.role !== "user" && m.role !== "assistant") bad(`expected role "user" or "assistant", got ${JSON.stringify(m.role)}`, `${at}.role`);
    const role = m.role as "user" | "assistant";
    if (typeof m.content === "string") {
      out.push({ role, content: m.content });
      return;
    }
    if (!Array.isArray(m.content)) bad("expected a string or an array of content blocks", `${at}.content`);
    let text = "";
    const calls: ToolCall[] = [];
    (m.content as Array<Record<string, unknown>>).forEach((b, j) => {
      const bat = `${at}.content.${j}`;
      switch (b?.type) {
        case "text":
          if (typeof b.text !== "string") bad("expected a string", `${bat}.text`);
          text += b.text as string;
          break;
        case "tool_use":
          if (role !== "assistant") bad("tool_use blocks belong in assistant messages", `${bat}.type`);
          if (typeof b.id !== "string" || typeof b.name !== "string") bad("a tool_use block needs a string id and name", bat);
          calls.push({ id: b.id as string, name: b.name as string, arguments: JSON.stringify(b.input ?? {}) });
          break;
        case "tool_result":
          if (role !== "user") bad("tool_result blocks belong in user messages", `${bat}.type`);
          if (typeof b.tool_use_id !== "string") bad("expected a string", `${bat}.tool_use_id`);
          out.push({ role: "tool", content: `${b.is_error === true ? "Error: " : ""}${resultText(b.content, `${bat}.content`)}`, toolCallId: b.tool_use_id as string });
          break;
        case "thinking":
        case "redacted_thinking":
          break; // earlier reasoning is not replayed to the model
        default:
          bad(`content block type '${b?.type}' is not supported (text, tool_use and tool_result are)`, `${bat}.type`);
      }
    });
    if (role === "assistant") out.push({ role, content: text, ...(calls.length ? { toolCalls: calls } : {}) });
    else if (text || !out.length || out.at(-1)!.role !== "tool") out.push({ role, content: text });
  });
  return out;
}

function toolsOf(body: Body): { tools?: ToolDefinition[]; toolChoice?: ToolChoice } {
  if (body.tools === undefined || body.tools === null) {
    if (body.tool_choice !== undefined && body.tool_choice !== null) bad("tool_choice needs tools", "tool_choice");
    return {};
  }
  if (!Array.isArray(body.tools)) bad("expected an array", "tools");
  const tools = (body.tools as Array<Record<string, unknown>>).map((t, i) => {
    if (typeof t?.name !== "string" || !t.name) bad("expected a non-empty string", `tools.${i}.name`);
    if (t.input_schema !== undefined && (typeof t.input_schema !== "object" || t.input_schema === null || Array.isArray(t.input_schema))) bad("expected a JSON schema object", `tools.${i}.input_schema`);
    return { name: t.name as string, description: typeof t.description === "string" ? t.description : undefined, parameters: t.input_schema as Record<string, unknown> | undefined };
  });
  const c = body.tool_choice as Record<string, unknown> | undefined | null;
  let toolChoice: ToolChoice | undefined;
  if (c !== undefined && c !== null) {
    if (c.type === "auto") toolChoice = "auto";
    else if (c.type === "any") toolChoice = "required";
    else if (c.type === "none") toolChoice = "none";
    else if (c.type === "tool") {
      if (typeof c.name !== "string" || !tools.some((t) => t.name === c.name)) bad(`names no tool in tools: ${JSON.stringify(c.name)}`, "tool_choice.name");
      toolChoice = { name: c.name as string };
    } else bad(`expected type "auto", "any", "tool" or "none"`, "tool_choice.type");
  }
  return tools.length ? { tools, toolChoice } : {};
}

function requireModel(body: Body): string {
  if (typeof body.model !== "string" || !body.model) bad("expected a non-empty string", "model");
  return body.model as string;
}

/** A Messages request as engine options. */
function toOptions(body: Body, signal: AbortSignal): GenerateOptions & { keepAliveMs?: number } {
  const maxTokens = num(body, "max_tokens", 1, 1_048_576, true);
  if (maxTokens === undefined) bad("required: the most tokens to generate", "max_tokens");
  const stops = body.stop_sequences;
  if (stops !== undefined && stops !== null && !(Array.isArray(stops) && stops.every((s) => typeof s === "string"))) bad("expected an array of strings", "stop_sequences");
  if (body.stream !== undefined && typeof body.stream !== "boolean") bad("expected a boolean", "stream");
  const thinking = body.thinking as { type?: string } | undefined;
  if (thinking && thinking.type !== "disabled") bad("extended thinking is not supported", "thinking");
  const keep = body.keep_alive;
  if (keep !== undefined && typeof keep !== "string" && typeof keep !== "number") bad("expected a duration", "keep_alive");
  return {
    messages: messagesOf(body),
    temperature: num(body, "temperature", 0, 1),
    topP: num(body, "top_p", 0, 1),
    topK: num(body, "top_k", 0, 1_000_000, true),
    maxTokens,
    stop: (stops as string[] | undefined) ?? undefined,
    ...toolsOf(body),
    keepAliveMs: keepAliveOption(keep as string | number | undefined),
    signal,
  };
}

function stopReason(ev: Extract<TokenEvent, { type: "done" }>): { stop_reason: string; stop_sequence: string | null } {
  if (ev.finishReason === "length") return { stop_reason: "max_tokens", stop_sequence: null };
  if (ev.finishReason === "tool_calls" || ev.toolCalls?.length) return { stop_reason: "tool_use", stop_sequence: null };
  if (ev.stopSequence !== undefined) return { stop_reason: "stop_sequence", stop_sequence: ev.stopSequence };
  return { stop_reason: "end_turn", stop_sequence: null };
}

function toolInput(c: ToolCall): unknown {
  try {
    return JSON.parse(c.arguments);
  } catch {
    return {};
  }
}

const messageId = () => `msg_${crypto.randomUUID().replaceAll("-", "")}`;

const event = (type: string, data: Record<string, unknown>) => sseEvent(JSON.stringify({ type, ...data }), type);

export const anthropicRoutes = (engine: ServingEngine) =>
  new Elysia({ name: "shimmy.anthropic" })
    .post(
      "/v1/messages",
      async function* ({ body, request, set }) {
        const b = body as Body;
        let model: string;
        let opts: GenerateOptions;
        let events: AsyncGenerator<TokenEvent, void, undefined>;
        try {
          model = requireModel(b);
          opts = toOptions(b, request.signal);
          events = await startGeneration(engine, model, opts, request);
        } catch (err) {
          return settle(set, anthropicErrorResponse(err));
        }
        const id = messageId();
        if (b.stream !== true) {
          try {
            for await (const ev of events) {
              if (ev.type !== "done") continue;
              const content: Array<Record<string, unknown>> = [];
              if (ev.text || !ev.toolCalls?.length) content.push({ type: "text", text: ev.text });
              for (const c of ev.toolCalls ?? []) content.push({ type: "tool_use", id: c.id, name: c.name, input: toolInput(c) });
              return Response.json({ id, type: "message", role: "assistant", model: ev.model, content, ...stopReason(ev), usage: { input_tokens: ev.timings.promptTokens, output_tokens: ev.timings.generatedTokens } });
            }
          } catch (err) {
            return settle(set, anthropicErrorResponse(err));
          }
          return settle(set, anthropicErrorResponse(new Error("generation ended without a result")));
        }
        // The model is loaded now (the first event arrived): counting the prompt is cheap.
        let inputTokens = 0;
        try {
          inputTokens = (await engine.countTokens(model, opts)).tokens;
        } catch {}
        yield event("message_start", { message: { id, type: "message", role: "assistant", model, content: [], stop_reason: null, stop_sequence: null, usage: { input_tokens: inputTokens, output_tokens: 0 } } });
        yield event("ping", {});
        let index = 0;
        let textOpen = false;
        try {
          for await (const ev of events) {
            if (ev.type === "token") {
              if (!textOpen) {
                yield event("content_block_start", { index, content_block: { type: "text", text: "" } });
                textOpen = true;
              }
              yield event("content_block_delta", { index, delta: { type: "text_delta", text: ev.text } });
              continue;
            }
            if (!textOpen && !ev.toolCalls?.length) {
              yield event("content_block_start", { index, content_block: { type: "text", text: "" } });
              textOpen = true;
            }
            if (textOpen) yield event("content_block_stop", { index: index++ });
            for (const c of ev.toolCalls ?? []) {
              yield event("content_block_start", { index, content_block: { type: "tool_use", id: c.id, name: c.name, input: {} } });
              yield event("content_block_delta", { index, delta: { type: "input_json_delta", partial_json: JSON.stringify(toolInput(c)) } });
              yield event("content_block_stop", { index: index++ });
            }
            yield event("message_delta", { delta: stopReason(ev), usage: { input_tokens: ev.timings.promptTokens, output_tokens: ev.timings.generatedTokens } });
            yield event("message_stop", {});
          }
        } catch (err) {
          const e = toShimmyError(err);
          log.warn(`stream error: ${e.message}`);
          yield event("error", { error: { type: errorType(e.status), message: e.message } });
        }
      },
      { parse: parseJsonBody },
    )
    .post(
      "/v1/messages/count_tokens",
      async ({ body, set }) => {
        try {
          const b = body as Body;
          const model = requireModel(b);
          const r = await engine.countTokens(model, { messages: messagesOf(b), ...toolsOf(b) });
          return { input_tokens: r.tokens };
        } catch (err) {
          return settle(set, anthropicErrorResponse(err));
        }
      },
      { parse: parseJsonBody },
    );
