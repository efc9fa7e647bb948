import { defineCommand } from "citty";
import { log } from "../../log.ts";
import { createApp } from "../../server/app.ts";
import { listen } from "../../server/listen.ts";
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
    const app = createApp({ engine, registry: engine.registry, config });
    const server = listen(app, config.bind);
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
