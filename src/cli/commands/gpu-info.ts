import { defineCommand } from "citty";
import { ensureNativeRuntime } from "../../engine/runtime.ts";
import { configFrom, runtimeArgs } from "../args.ts";

const gib = (n: number) => `${(n / 1024 ** 3).toFixed(1)} GiB`;

export default defineCommand({
  meta: { name: "gpu-info", description: "Show the backends compiled in, the GPUs detected, which one is used and why" },
  args: {
    gpu: runtimeArgs.gpu,
    verbose: runtimeArgs.verbose,
    json: { type: "boolean", description: "Print one JSON object" },
  },
  async run({ args }) {
    const config = configFrom(args);
    await ensureNativeRuntime({ runtimeDir: config.runtimeDir, cacheDir: config.cacheDir });
    const { gpuReport } = await import("../../engine/llama.ts");
    const r = await gpuReport({ gpu: config.gpu, threads: config.threads, ctxSize: config.ctxSize, chatTemplate: config.chatTemplate });
    if (args.json) {
      process.stdout.write(`${JSON.stringify({ compiled: r.compiled, detected: r.detected, in_use: r.inUse, devices: r.devices, vram: r.vram, notes: r.notes })}\n`);
      return;
    }
    const lines = [
      `compiled in:  ${r.compiled.join(", ")}`,
      `detected:     ${r.detected.length ? r.detected.join(", ") : "no GPU driver or device"}`,
      `in use:       ${r.inUse}${config.gpu === "auto" ? " (--gpu auto)" : ` (--gpu ${config.gpu})`}`,
      ...(r.devices.length ? [`devices:      ${r.devices.join(", ")}`] : []),
      ...(r.vram ? [`vram:         ${gib(r.vram.freeBytes)} free of ${gib(r.vram.totalBytes)}`] : []),
      ...r.notes.map((n, i) => `${i === 0 ? "why:          " : "              "}${n}`),
    ];
    process.stdout.write(`${lines.join("\n")}\n`);
  },
});
