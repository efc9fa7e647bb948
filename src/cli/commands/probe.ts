import { defineCommand } from "citty";
import { configFrom, engineFrom, modelArgs, runtimeArgs } from "../args.ts";

export default defineCommand({
  meta: { name: "probe", description: "Load a model and report whether it loads (exit 2 if not)" },
  args: {
    name: { type: "positional", description: "Model name (see `shimmy list`)", required: true },
    ...modelArgs,
    ...runtimeArgs,
  },
  async run({ args, rawArgs }) {
    const engine = await engineFrom(configFrom(args, rawArgs));
    try {
      const loaded = await engine.load(args.name);
      process.stdout.write(`ok: loaded ${loaded.entry.name} in ${Math.round(loaded.loadMs)} ms (context ${loaded.native.contextSize} tokens)\n`);
    } finally {
      await engine.close();
    }
  },
});
