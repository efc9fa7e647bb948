/**
 * Shared helpers every API surface uses, so all of them stream, cancel and report errors alike:
 * before the first byte an error is a real status + JSON body; after it, an in-stream error event.
 */
import type { Timings as WireTimings } from "../api/native.ts";
import { parseDuration } from "../config.ts";
import { BadRequestError, toShimmyError } from "../errors.ts";
import type { Engine } from "../engine/engine.ts";
import type { GenerateOptions, Timings, TokenEvent } from "../engine/types.ts";

/** What the server needs from the engine (a fake can stand in for fast unit tests). */
export type ServingEngine = Pick<
  Engine,
  "generate" | "list" | "resolve" | "metadata" | "countTokens" | "backendInfo" | "loadedNames" | "options" | "tokenize" | "detokenize" | "embed" | "load" | "unload" | "status" | "ps" | "setLora" | "state" | "observer"
>;

/** The status and JSON body of an error in shimmy's native shape `{"error": "..."}`. */
export function errorJson(err: unknown): Response {
  const e = toShimmyError(err);
  return Response.json({ error: e.message }, { status: e.status, headers: errorHeaders(e.status) });
}

/**
 * Records a Response's status on the route context before returning it, so hooks that run after
 * the response (request metrics) see it even from a generator handler.
 */
export function settle(set: { status?: number | string }, response: Response): Response {
  set.status = response.status;
  return response;
}

/** 503 answers say when to retry. */
export function errorHeaders(status: number): Record<string, string> {
  return status === 503 ? { "Retry-After": "1" } : {};
}

/** A request's `keep_alive` (duration text or seconds) as ms; undefined when absent. */
export function keepAliveOption(raw: string | number | undefined): number | undefined {
  try {
    return parseDuration("keep_alive", raw);
  } catch (err) {
    throw new BadRequestError((err as Error).message, { param: "keep_alive" });
  }
}

/** An SSE event whose `data` may hold newlines: each line becomes its own `data:` field, as the spec reassembles them. */
export function sseEvent(data: string, event?: string): { sse: true; toSSE(): string } {
  const text = `${event ? `event: ${event}\n` : ""}${data
    .split(/\r\n|\r|\n/)
    .map((line) => `data: ${line}\n`)
    .join("")}\n`;
  return { sse: true, toSSE: () => text };
}

/** Wire form of engine timings (llama.cpp server names), rounded to 0.01. */
export function wireTimings(t: Timings): WireTimings {
  const r = (n: number) => Math.round(n * 100) / 100;
  return {
    prompt_n: t.promptTokens,
    cache_n: t.cachedTokens,
    prompt_ms: r(t.promptMs),
    prompt_per_second: r(t.promptTokensPerSecond),
    predicted_n: t.generatedTokens,
    predicted_ms: r(t.generateMs),
    predicted_per_second: r(t.tokensPerSecond),
    ttft_ms: r(t.ttftMs),
    queue_ms: r(t.queueMs),
    total_ms: r(t.totalMs),
  };
}

/**
 * Starts a generation and waits for its first event, so that failures before any output (unknown
 * model, load failure, prompt too long) surface as a thrown ShimmyError the route can answer with a
 * status. Returns an iterator that yields that first event again, then the rest.
 */
export async function startGeneration(engine: ServingEngine, model: string, opts: GenerateOptions, request?: Request): Promise<AsyncGenerator<TokenEvent, void, undefined>> {
  if (request) annotate(request, { model, streaming: true, prompt: opts.prompt ?? opts.messages?.findLast((m) => m.role === "user")?.content });
  const it = engine.generate(model, opts);
  let first: IteratorResult<TokenEvent, void>;
  try {
    first = await it.next();
  } catch (err) {
    if (request) settleNote(request);
    throw toShimmyError(err);
  }
  const note = (ev: TokenEvent) => {
    if (request && ev.type === "done") annotate(request, { model: ev.model, finishReason: ev.finishReason, timings: ev.timings });
  };
  return (async function* () {
    try {
      if (first.done) return;
      note(first.value);
      yield first.value;
      for await (const ev of it) {
        note(ev);
        yield ev;
      }
    } finally {
      await it.return(undefined);
      if (request) settleNote(request);
    }
  })();
}

/** Requires a prompt or messages; normalises `stop`. */
export function promptOrMessages(body: { prompt?: string; messages?: unknown[] }): void {
  if (body.prompt === undefined && !body.messages?.length) throw new BadRequestError("either 'prompt' or a non-empty 'messages' is required");
}


/**
 * Route body parser: JSON whatever the Content-Type (curl -d sends form encoding), with a clear
 * message for malformed JSON and for an empty body.
 */
export async function parseJsonBody({ request }: { request: Request }): Promise<unknown> {
  const text = await request.text();
  if (!text.trim()) throw new BadRequestError("request body is empty: expected a JSON object");
  return parseJsonObject(text);
}

/** Deepest nesting of arrays/objects in a JSON text (strings skipped). */
function jsonDepth(text: string): number {
  let depth = 0;
  let max = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 92) i++; // backslash: skip the escaped char
      else if (c === 34) inString = false;
    } else if (c === 34) inString = true;
    else if (c === 91 || c === 123) max = Math.max(max, ++depth);
    else if (c === 93 || c === 125) depth--;
  }
  return max;
}

/** Most levels of nesting a request body may have (deeper bodies cost the validator quadratic time). */
export const MAX_JSON_DEPTH = 64;

/** Parses a JSON object body: malformed JSON, too deep nesting and non-objects are BadRequestErrors. */
export function parseJsonObject(text: string): Record<string, unknown> {
  if (jsonDepth(text) > MAX_JSON_DEPTH) throw new BadRequestError(`JSON nested too deeply: more than ${MAX_JSON_DEPTH} levels`);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new BadRequestError(`malformed JSON body: ${(err as Error).message}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) throw new BadRequestError("request body must be a JSON object");
  return value as Record<string, unknown>;
}

/** What the request log says about a request beyond method, route and status. */
export interface RequestNote {
  id?: string;
  t0?: number;
  model?: string;
  prompt?: string;
  finishReason?: string;
  timings?: Timings;
  /** A generation is streaming: the log line waits for it to end. */
  streaming?: boolean;
  /** Called once when the generation ends (set by the request log for streams). */
  whenSettled?: () => void;
}

const notes = new WeakMap<Request, RequestNote>();

/** Adds facts about a request for its log line. */
export function annotate(request: Request, note: RequestNote): void {
  notes.set(request, { ...notes.get(request), ...note });
}

export function requestNote(request: Request): RequestNote {
  return notes.get(request) ?? {};
}

/** The request's generation has ended (done, error or disconnect): run its pending log line. */
function settleNote(request: Request): void {
  const n = notes.get(request);
  if (!n) return;
  n.streaming = false;
  const cb = n.whenSettled;
  n.whenSettled = undefined;
  cb?.();
}
