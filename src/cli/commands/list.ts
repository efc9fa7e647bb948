import { defineCommand } from "citty";
import { configFrom, engineFrom, modelArgs } from "../args.ts";

function human(bytes: number): string {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  let n = bytes;
  while (n >= 1024 && i < units.length - 1) (n /= 1024), i++;
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

export default defineCommand({
  meta: { name: "list", description: "List the models shimmy can serve" },
  args: {
    ...modelArgs,
    short: { type: "boolean", description: "Names only, one per line" },
    json: { type: "boolean", description: "JSON array of {name, path, lora?, source, size_bytes}" },
  },
  async run({ args, rawArgs }) {
    const engine = await engineFrom(configFrom(args, rawArgs));
    const models = await engine.list();
    if (args.json) {
      process.stdout.write(`${JSON.stringify(models.map((m) => ({ name: m.name, path: m.path, ...(m.loras ? { loras: m.loras } : {}), source: m.source, size_bytes: m.sizeBytes })), null, 2)}\n`);
      return;
    }
    if (args.short) {
      process.stdout.write(models.map((m) => `${m.name}\n`).join(""));
      return;
    }
    if (models.length === 0) {
      process.stderr.write("no models found: use --model-path, --model-dirs, SHIMMY_BASE_GGUF, SHIMMY_MODEL_PATHS or put *.gguf in ./models\n");
      return;
    }
    const rows = [["NAME", "SIZE", "SOURCE", "PATH"], ...models.map((m) => [m.name, human(m.sizeBytes), m.source, m.loras ? `${m.path} + LoRA ${m.loras.map((l) => (l.scale === 1 ? l.path : `${l.path}:${l.scale}`)).join(", ")}` : m.path])];
    const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
    process.stdout.write(rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join("  ")).join("\n") + "\n");
  },
});
