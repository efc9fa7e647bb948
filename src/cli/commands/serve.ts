import { defineCommand } from "citty";
import { log } from "../../log.ts";
import { createApp } from "../../server/app.ts";
import { isLoopbackHost, listen, parseBind } from "../../server/listen.ts";
import { VERSION } from "../../version.ts";
import { configFrom, engineFrom, modelArgs, runtimeArgs } from "../args.ts";

export default defineCommand({
  meta: { name: "serve", description: "Start the HTTP/WebSocket server (native, and more APIs as they land)" },
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
    "no-mmap": { type: "boolean", description: "Read models into memory instead of mapping them (safe if files change on disk; SHIMMY_MMAP=0)" },
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
    });
    const server = listen(app, config.bind, { maxBodyBytes: config.maxBodyBytes });
    const names = (await engine.list()).map((m) => m.name);
    log.info(`shimmy ${VERSION}: ${names.length} model(s): ${names.join(", ") || "(none)"}; threads ${config.threads}, ctx ${config.ctxSize}`);
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
