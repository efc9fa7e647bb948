import { defineCommand } from "citty";
import { ensureDemoModel } from "../../engine/demo.ts";
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
    const config = configFrom(args);
    const engine = engineFrom(config);
    if (engine.registry.list().length === 0 && config.demoModel) {
      const file = await ensureDemoModel(config.cacheDir);
      engine.registry.addFile(file, "demo");
      log.warn(`no model found: serving the built-in demo model '${engine.registry.list()[0]?.name}' (RANDOM WEIGHTS: its output is gibberish; it is for trying the routes). Add models with --model-path, SHIMMY_BASE_GGUF or ./models.`);
    }
    const app = createApp({ engine, registry: engine.registry, config });
    const server = listen(app, config.bind);
    const names = engine.list().map((m) => m.name);
    log.info(`shimmy ${VERSION}: ${names.length} model(s): ${names.join(", ") || "(none)"}; threads ${config.threads}, ctx ${config.ctxSize}`);
    process.stdout.write(`shimmy listening on ${server.url}\n`);
    await new Promise<void>((resolve) => {
      const stop = () => resolve();
      process.once("SIGINT", stop);
      process.once("SIGTERM", stop);
    });
    log.info("shutting down");
    await server.stop();
    await engine.close();
  },
});
