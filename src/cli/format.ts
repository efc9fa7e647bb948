/** Shared output formats of `list` and `discover`: one JSON shape, one table. */
import type { ModelInfo } from "../engine/types.ts";

export function human(bytes: number): string {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  let n = bytes;
  while (n >= 1024 && i < units.length - 1) (n /= 1024), i++;
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

/** 1234567890 -> "1.2B", 124000000 -> "124M". */
export function params(n: number | undefined): string {
  if (!n) return "-";
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)}B`;
  if (n >= 1e6) return `${Math.round(n / 1e6)}M`;
  if (n >= 1e3) return `${Math.round(n / 1e3)}K`;
  return String(n);
}

/** The JSON form of a model in `list --json` and `discover --json`. */
export function modelJson(m: ModelInfo) {
  return {
    name: m.name,
    path: m.path,
    source: m.source,
    size_bytes: m.sizeBytes,
    ...(m.meta ? { architecture: m.meta.architecture, parameters: m.meta.parameters, quantization: m.meta.fileType, context_length: m.meta.contextLength ?? null, chat_template: m.meta.chatTemplate } : {}),
    ...(m.loras ? { loras: m.loras } : {}),
    ...(m.shards ? { shards: m.shards } : {}),
    ...(m.problem ? { error: m.problem } : {}),
  };
}

/** Aligned columns; the last column is not padded. */
export function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join("  ")).join("\n") + "\n";
}

/** NAME SOURCE SIZE PARAMS QUANT CONTEXT TEMPLATE PATH; a model that cannot load shows its problem. */
export function modelTable(models: ModelInfo[]): string {
  return table([
    ["NAME", "SOURCE", "SIZE", "PARAMS", "QUANT", "CONTEXT", "TEMPLATE", "PATH"],
    ...models.map((m) => [
      m.name,
      m.source,
      human(m.sizeBytes),
      params(m.meta?.parameters),
      m.meta?.fileType ?? "-",
      m.meta?.contextLength ? String(m.meta.contextLength) : "-",
      m.meta ? (m.meta.chatTemplate ? "yes" : "no") : "-",
      m.problem
        ? `${m.path}  (cannot load: ${m.problem})`
        : m.loras
          ? `${m.path} + LoRA ${m.loras.map((l) => (l.scale === 1 ? l.path : `${l.path}:${l.scale}`)).join(", ")}`
          : m.path,
    ]),
  ]);
}
