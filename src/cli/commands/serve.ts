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
    ...modelArgs,
    ...runtimeArgs,
  },
  async run({ args }) {
    // Registered first: a signal during start-up or while serving shuts down cleanly. (`process.on`,
    // not `once`: with `once`, a process that has used llama.cpp was killed by the signal mid-shutdown.)
    let stopRequested: () => void = () => {};
    const stopped = new Promise<void>((resolve) => (stopRequested = resolve));
    process.on("SIGINT", () => stopRequested());
    process.on("SIGTERM", () => stopRequested());
    const config = configFrom(args);
    const engine = await engineFrom(config);
    const app = createApp({ engine, registry: engine.registry, config });
    const server = listen(app, config.bind);
    const names = engine.list().map((m) => m.name);
    log.info(`shimmy ${VERSION}: ${names.length} model(s): ${names.join(", ") || "(none)"}; threads ${config.threads}, ctx ${config.ctxSize}`);
    process.stdout.write(`shimmy listening on ${server.url}\n`);
    await stopped;
    log.info("shutting down");
    await server.stop();
    await engine.close();
  },
});
