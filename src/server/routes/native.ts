/** shimmy's native API: POST /api/generate (JSON or SSE) and GET /ws/generate (WebSocket). */
import { TypeCompiler } from "@sinclair/typebox/compiler";
import { Elysia } from "elysia";
import { GenerateRequest } from "../../api/native.ts";
import { BadRequestError, toShimmyError } from "../../errors.ts";
import type { GenerateOptions } from "../../engine/types.ts";
import { log } from "../../log.ts";
import { violationMessage } from "../validation.ts";
import { ollamaGenerate, wantsOllama } from "./ollama.ts";
import { settle, errorJson, keepAliveOption, parseJsonBody, promptOrMessages, type ServingEngine, sseEvent, startGeneration, wireTimings } from "../http.ts";

/** Maps the wire request to engine options. Throws BadRequestError for what the schema cannot say. */
export function toGenerateOptions(body: GenerateRequest, signal?: AbortSignal): GenerateOptions & { keepAliveMs?: number } {
  promptOrMessages(body);
  return {
    prompt: body.prompt,
    messages: body.messages,
    system: body.system,
    temperature: body.temperature,
    topP: body.top_p,
    topK: body.top_k,
    minP: body.min_p,
    repeatPenalty: body.repeat_penalty,
    seed: body.seed,
    maxTokens: body.max_tokens,
    stop: body.stop === undefined ? undefined : Array.isArray(body.stop) ? body.stop : [body.stop],
    chatTemplate: body.chat_template,
    keepAliveMs: keepAliveOption(body.keep_alive),
    signal,
  };
}

export const nativeRoutes = (engine: ServingEngine) =>
  new Elysia({ name: "shimmy.native" })
    .post(
      "/api/generate",
      async function* ({ body: raw, request, set }) {
        // One path, two APIs: Ollama's clients (Accept: application/json or x-ndjson, or Ollama-only
        // fields) get Ollama's NDJSON; everyone else gets shimmy's SSE / JSON.
        if (raw && typeof raw === "object" && !Array.isArray(raw) && wantsOllama(request, raw as Record<string, unknown>)) return yield* ollamaGenerate(engine, raw as Record<string, unknown>, request, set);
        let events;
        let body: GenerateRequest;
        try {
          body = validateGenerate(raw);
          events = await startGeneration(engine, body.model, toGenerateOptions(body, request.signal), request);
        } catch (err) {
          return settle(set, errorJson(err));
        }
        if (body.stream === false) {
          try {
            for await (const ev of events) {
              if (ev.type === "done") return Response.json({ response: ev.text, model: ev.model, finish_reason: ev.finishReason, timings: wireTimings(ev.timings) });
            }
          } catch (err) {
            return settle(set, errorJson(err));
          }
          return settle(set, errorJson(new Error("generation ended without a result")));
        }
        try {
          for await (const ev of events) {
            if (ev.type === "token") yield sseEvent(ev.text);
            // A named event: plain `data:` readers (EventSource onmessage) never see it.
            else yield sseEvent(JSON.stringify({ finish_reason: ev.finishReason, model: ev.model, timings: wireTimings(ev.timings) }), "done");
          }
          yield sseEvent("[DONE]");
        } catch (err) {
          const e = toShimmyError(err);
          log.warn(`stream error: ${e.message}`);
          yield sseEvent(JSON.stringify({ error: e.message }), "error");
        }
      },
      { parse: parseJsonBody },
    )
    .ws("/ws/generate", {
      open(ws) {
        sockets.set(ws.raw, { controller: undefined });
      },
      async message(ws, message) {
        const state = sockets.get(ws.raw) ?? { controller: undefined };
        sockets.set(ws.raw, state);
        const send = (v: unknown) => {
          try {
            ws.send(typeof v === "string" ? v : JSON.stringify(v));
          } catch {}
        };
        let frame: unknown = message;
        if (typeof frame === "string") {
          try {
            frame = JSON.parse(frame);
          } catch {
            return send({ error: "frame is not valid JSON" });
          }
        } else if (frame instanceof Uint8Array || frame instanceof ArrayBuffer) return send({ error: "binary frames are not supported; send JSON text" });
        if (frame && typeof frame === "object" && (frame as { stop?: unknown }).stop === true) {
          state.controller?.abort(new Error("stopped by client"));
          return;
        }
        if (state.controller) return send({ error: "a generation is already running on this socket; send {\"stop\":true} first" });
        let opts: GenerateOptions;
        let body: GenerateRequest;
        try {
          body = validateGenerate(frame);
          opts = toGenerateOptions(body);
        } catch (err) {
          return send({ error: toShimmyError(err).message });
        }
        const controller = new AbortController();
        state.controller = controller;
        try {
          const events = await startGeneration(engine, body.model, { ...opts, signal: controller.signal });
          for await (const ev of events) {
            if (ev.type === "token") send(ev.text);
            else send({ done: true, finish_reason: ev.finishReason, timings: wireTimings(ev.timings) });
          }
        } catch (err) {
          send({ error: toShimmyError(err).message });
        } finally {
          state.controller = undefined;
        }
      },
      close(ws) {
        sockets.get(ws.raw)?.controller?.abort(new Error("socket closed"));
        sockets.delete(ws.raw);
      },
    });

const sockets = new WeakMap<object, { controller: AbortController | undefined }>();
const compiledGenerate = TypeCompiler.Compile(GenerateRequest);

/** Validates a WebSocket request frame against the same schema as POST /api/generate. */
export function validateGenerate(frame: unknown): GenerateRequest {
  if (compiledGenerate.Check(frame)) return frame;
  const first = compiledGenerate.Errors(frame).First();
  throw new BadRequestError(violationMessage(GenerateRequest, first?.path ?? "", first?.value));
}
