import path from "node:path";
import { defineCommand } from "citty";
import type { BackendInfo, ModelInfo } from "../../engine/types.ts";
import { log } from "../../log.ts";
import { createApp } from "../../server/app.ts";
import { isLoopbackHost, listen, parseBind } from "../../server/listen.ts";
import { VERSION } from "../../version.ts";
import { configFrom, engineFrom, modelArgs, runtimeArgs } from "../args.ts";

/** The start-up banner (stderr): version, backend, models and where they came from, URL, APIs, auth. */
export function banner(o: { url: string; models: ModelInfo[]; backend: BackendInfo | undefined; threads: number; ctxSize: number; keys: number; loopback: boolean; playground?: boolean }): string {
  const dirs = [...new Set(o.models.map((m) => path.dirname(m.path)))];
  const usable = o.models.filter((m) => !m.problem);
  const broken = o.models.filter((m) => m.problem);
  const device = o.backend ? `${o.backend.backend}${o.backend.gpuOffloading ? " (GPU offload)" : ""}, llama.cpp ${o.backend.llamaCppRelease}` : "not started";
  const lines = [
    `shimmy ${VERSION}`,
    `  url        ${o.url}`,
    `  backend    ${device}; threads ${o.threads}${o.backend?.threadpool === "persistent" ? " (persistent pool)" : ""}, ctx ${o.ctxSize}`,
    `  models     ${usable.length ? usable.map((m) => m.name).join(", ") : "(none)"}`,
    ...(broken.length ? [`  unusable   ${broken.map((m) => `${m.name} (${m.problem})`).join("; ")}`] : []),
    ...dirs.map((d, i) => `  ${i === 0 ? "from      " : "          "} ${d}`),
    `  APIs       shimmy    ${o.url}/api/generate  ${o.url.replace(/^http/, "ws")}/ws/generate`,
    `             OpenAI    ${o.url}/v1  (chat/completions, completions, embeddings, models)`,
    `             Ollama    ${o.url}  (/api/chat, /api/generate, /api/tags, /api/show, /api/embed)`,
    `             Anthropic ${o.url}  (/v1/messages)`,
    ...(o.playground === false ? [] : [`  playground ${o.url}/  (chat in the browser)`]),
    `  auth       ${o.keys ? `API key required (${o.keys} key${o.keys === 1 ? "" : "s"}); /health is open` : o.loopback ? "none (loopback only)" : "NONE on a non-loopback address"}`,
  ];
  return lines.join("\n");
}

export default defineCommand({
  meta: { name: "serve", description: "Start the HTTP/WebSocket server (shimmy, OpenAI, Ollama and Anthropic APIs)" },
  args: {
    bind: { type: "string", description: "auto | HOST:PORT (default auto: 127.0.0.1:11435, else first free port up to 11535, else ephemeral; SHIMMY_BIND_ADDRESS)", valueHint: "ADDR" },
    parallel: { type: "string", description: "Concurrent generations per model (default 4; SHIMMY_PARALLEL)", valueHint: "N" },
    "max-queue": { type: "string", description: "Requests that may wait per model before 503 (default 64; SHIMMY_MAX_QUEUE)", valueHint: "N" },
    "keep-alive": { type: "string", description: "Idle time before a model unloads: 30s, 5m, 1h, 0 = at once, -1 = never (default 5m; SHIMMY_KEEP_ALIVE)", valueHint: "DUR" },
    "max-loaded-models": { type: "string", description: "Models loaded at once; least recently used idle ones unload first (default 3; SHIMMY_MAX_LOADED_MODELS)", valueHint: "N" },
    "shutdown-grace": { type: "string", description: "On SIGINT/SIGTERM, time running generations get to finish (default 10s; SHIMMY_SHUTDOWN_GRACE)", valueHint: "DUR" },
    "api-key": { type: "string", description: "Require this API key (Bearer or x-api-key) on every route but /health; repeatable (SHIMMY_API_KEY, comma separated)", valueHint: "KEY" },
    "api-key-file": { type: "string", description: "Read API keys from FILE, one per line (SHIMMY_API_KEY_FILE)", valueHint: "FILE" },
    "cors-origins": { type: "string", description: "Browser origins allowed, comma separated, or * (default: localhost origins only; SHIMMY_CORS_ORIGINS)", valueHint: "LIST" },
    "allow-hosts": { type: "string", description: "Extra Host names accepted while bound to loopback (default: loopback names only; SHIMMY_ALLOW_HOSTS)", valueHint: "LIST" },
    "max-body": { type: "string", description: "Largest request body, e.g. 10M (default 10M; SHIMMY_MAX_BODY)", valueHint: "SIZE" },
    "log-format": { type: "enum", options: ["text", "json"], description: "Request log lines on stderr: text or json (default text; SHIMMY_LOG_FORMAT)" },
    "log-prompts": { type: "boolean", description: "Put prompt text in the request log (default off; SHIMMY_LOG_PROMPTS=1)" },
    "no-playground": { type: "boolean", description: "Do not serve the browser playground at / (SHIMMY_PLAYGROUND=0)" },
    "no-mmap": { type: "boolean", description: "Always read models into memory, never map them (SHIMMY_MMAP=0; default auto: see README)" },
    mmap: { type: "boolean", description: "Always memory-map model files (llama.cpp's default; SHIMMY_MMAP=1)" },
    ...modelArgs,
    ...runtimeArgs,
  },
  async run({ args, rawArgs }) {
    // Registered first: a signal during start-up or while serving shuts down cleanly. (`process.on`,
    // not `once`: with `once`, a process that has used llama.cpp was killed by the signal mid-shutdown.)
    let stopRequested: () => void = () => {};
    const stopped = new Promise<void>((resolve) => (stopRequested = resolve));
    process.on("SIGINT", () => stopRequested());
    process.on("SIGTERM", () => stopRequested());
    const config = configFrom(args, rawArgs);
    const engine = await engineFrom(config);
    const loopback = config.bind === "auto" || isLoopbackHost(parseBind(config.bind).hostname);
    if (!loopback && config.apiKeys.length === 0)
      log.warn(`binding ${config.bind} (not loopback) with no API key: anyone who can reach this address can use the models; set --api-key or SHIMMY_API_KEY`);
    const app = createApp({
      engine,
      security: { apiKeys: config.apiKeys, corsOrigins: config.corsOrigins, allowHosts: config.allowHosts, maxBodyBytes: config.maxBodyBytes, hostCheck: loopback },
      requestLog: { format: config.logFormat, prompts: config.logPrompts },
      playground: config.playground,
    });
    const server = listen(app, config.bind, { maxBodyBytes: config.maxBodyBytes });
    const models = (await engine.list()).filter((m) => !m.meta?.adapter);
    // Start llama.cpp now so the banner can say which backend and device serve the models.
    const backend = await engine
      .backend()
      .then(() => engine.backendInfo())
      .catch((err) => {
        log.warn(`llama.cpp did not start: ${(err as Error).message}`);
        return undefined;
      });
    log.info(banner({ url: server.url, models, backend, threads: config.threads, ctxSize: config.ctxSize, keys: config.apiKeys.length, loopback, playground: config.playground }));
    process.stdout.write(`shimmy listening on ${server.url}\n`);
    await stopped;
    // Drain: the listener stays up (new work gets 503, /health says "draining") while running
    // generations get the grace period; the rest are aborted with a proper end of stream.
    log.info(`shutting down: ${engine.activeGenerations} generation(s) running, up to ${Math.round(config.shutdownGraceMs / 1000)} s to finish`);
    const { finished } = await engine.drain(config.shutdownGraceMs);
    if (!finished) log.warn("grace period over: aborted the generations still running");
    await Bun.sleep(50); // let aborted streams flush their last event
    await server.stop();
  },
});
