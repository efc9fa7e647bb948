/** The root command. Subcommands load lazily so `--help` and `--version` never load native code. */
import { defineCommand } from "citty";
import { VERSION } from "../version.ts";

export const main = defineCommand({
  meta: { name: "shimmy", version: VERSION, description: "Local LLM inference server and CLI for GGUF models (llama.cpp)" },
  subCommands: {
    serve: () => import("./commands/serve.ts").then((m) => m.default),
    list: () => import("./commands/list.ts").then((m) => m.default),
    discover: () => import("./commands/discover.ts").then((m) => m.default),
    probe: () => import("./commands/probe.ts").then((m) => m.default),
    generate: () => import("./commands/generate.ts").then((m) => m.default),
    chat: () => import("./commands/chat.ts").then((m) => m.default),
    pull: () => import("./commands/pull.ts").then((m) => m.default),
    bench: () => import("./commands/bench.ts").then((m) => m.default),
    init: () => import("./commands/init.ts").then((m) => m.default),
    "gpu-info": () => import("./commands/gpu-info.ts").then((m) => m.default),
  },
});
