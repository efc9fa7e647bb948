import { defineCommand } from "citty";
import { configFrom, engineFrom, modelArgs } from "../args.ts";
import { human, modelJson, modelTable, table } from "../format.ts";

/** Architectures of embedding/reranking models (not chat or text generation). */
const EMBEDDING_ARCHS = new Set(["bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "xlm-roberta", "modern-bert", "neo-bert", "t5encoder"]);

export default defineCommand({
  meta: { name: "discover", description: "Re-scan every model root and show what each gave: models, LoRA adapters, problems" },
  args: {
    ...modelArgs,
    json: { type: "boolean", description: "One JSON object {roots, models, adapters, problems}" },
    "llm-only": { type: "boolean", description: "Only text-generation models: no adapters, no embedding-only architectures" },
  },
  async run({ args, rawArgs }) {
    const engine = await engineFrom(configFrom(args, rawArgs));
    const scan = await engine.registry.scan({ refresh: true });
    const info = await engine.list();
    const llmOnly = args["llm-only"] === true;
    const models = info.filter((m) => !m.problem && !(llmOnly && m.meta && EMBEDDING_ARCHS.has(m.meta.architecture)));
    const problems = info.filter((m) => m.problem);
    const adapters = llmOnly ? [] : scan.adapters;
    if (args.json) {
      process.stdout.write(
        `${JSON.stringify(
          {
            roots: scan.roots.map((r) => ({ path: r.root.path, kind: r.root.kind, exists: r.exists, files: r.files, ...(r.error ? { error: r.error } : {}) })),
            models: models.map(modelJson),
            adapters: adapters.map((a) => ({ name: a.name, path: a.path, source: a.source, architecture: a.meta?.architecture, size_bytes: a.meta?.sizeBytes, paired_with: info.filter((m) => m.loras?.some((l) => l.path === a.path)).map((m) => m.name) })),
            problems: problems.map((p) => ({ name: p.name, path: p.path, source: p.source, problem: p.problem })),
          },
          null,
          2,
        )}\n`,
      );
      return;
    }
    const out: string[] = [];
    out.push(table([["ROOT", "KIND", "FOUND"], ...scan.roots.map((r) => [r.root.path, r.root.kind, r.error ? `error: ${r.error}` : r.exists ? String(r.files) : "(absent)"])]));
    out.push(`\nMODELS (${models.length})\n${models.length ? modelTable(models) : ""}`);
    if (!llmOnly) out.push(`\nADAPTERS (${adapters.length})\n${adapters.map((a) => `${a.name}  ${a.meta?.architecture ?? "?"}  ${human(a.meta?.sizeBytes ?? 0)}  ${a.path}\n`).join("")}`);
    out.push(`\nPROBLEMS (${problems.length})\n${problems.map((p) => `${p.name}: ${p.problem}\n`).join("")}`);
    process.stdout.write(out.join(""));
  },
});
