import { defineCommand } from "citty";
import { configFrom, engineFrom, modelArgs } from "../args.ts";
import { modelJson, modelTable } from "../format.ts";

export default defineCommand({
  meta: { name: "list", description: "List the models shimmy can serve (found in every discovery root)" },
  args: {
    ...modelArgs,
    short: { type: "boolean", description: "Names of loadable models only, one per line" },
    json: { type: "boolean", description: "JSON array of {name, path, source, size_bytes, architecture, parameters, quantization, context_length, chat_template, loras?, shards?, error?}" },
  },
  async run({ args, rawArgs }) {
    const engine = await engineFrom(configFrom(args, rawArgs));
    const models = await engine.list();
    if (args.json) {
      process.stdout.write(`${JSON.stringify(models.map(modelJson), null, 2)}\n`);
      return;
    }
    if (args.short) {
      process.stdout.write(models.filter((m) => !m.problem).map((m) => `${m.name}\n`).join(""));
      return;
    }
    if (models.length === 0) {
      process.stderr.write("no models found: use --model-path, --model-dirs, SHIMMY_BASE_GGUF, SHIMMY_MODEL_PATHS or put *.gguf in ./models (see `shimmy discover`)\n");
      return;
    }
    process.stdout.write(modelTable(models));
  },
});
