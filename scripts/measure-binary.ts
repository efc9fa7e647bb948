/**
 * Figures for the README's "Download and run" section, measured on this machine (not a test):
 * artifact sizes, `--version` wall time, first run (extraction + llama.cpp start + tiny model load +
 * one token) against a warm second run, and `serve` until /health answers.
 *
 *   bun run build --all && bun scripts/measure-binary.ts [dist]
 */
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { writeTinyModel } from "../src/gguf/presets.ts";
import { freePort } from "./bench-prompt.ts";

const dist = path.resolve(process.argv[2] ?? path.join(import.meta.dir, "..", "dist"));
const tmp = mkdtempSync(path.join(os.tmpdir(), "shimmy-measure-"));
const models = path.join(tmp, "models");
mkdirSync(models);
await writeTinyModel(path.join(models, "tiny.gguf"));

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
const MiB = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;

function timed(cmd: string[], env: Record<string, string>): number {
  const t0 = performance.now();
  const r = Bun.spawnSync(cmd, { cwd: tmp, env: { PATH: "/usr/bin:/bin", SHIMMY_THREADS: "1", SHIMMY_DEMO_MODEL: "0", ...env }, stdout: "ignore", stderr: "pipe" });
  const ms = performance.now() - t0;
  if (r.exitCode !== 0) throw new Error(`${cmd.join(" ")}: exit ${r.exitCode}: ${r.stderr}`);
  return ms;
}

async function serveReadyMs(exe: string, home: string): Promise<number> {
  const port = freePort();
  const t0 = performance.now();
  const p = Bun.spawn([exe, "serve", "--bind", `127.0.0.1:${port}`, "--model-dirs", models], { cwd: tmp, env: { PATH: "/usr/bin:/bin", HOME: home, SHIMMY_THREADS: "1" }, stdout: "ignore", stderr: "ignore" });
  try {
    for (;;) {
      const ok = await fetch(`http://127.0.0.1:${port}/health`).then((r) => r.ok, () => false);
      if (ok) return performance.now() - t0;
      if (performance.now() - t0 > 20000) throw new Error("serve did not answer /health in 20 s");
      await Bun.sleep(5);
    }
  } finally {
    p.kill("SIGTERM");
    await p.exited;
  }
}

const artifacts = readdirSync(dist).filter((f) => f.startsWith("shimmy-")).sort();
console.log("| artifact | size |\n|---|---|");
for (const a of artifacts) console.log(`| \`${a}\` | ${MiB(statSync(path.join(dist, a)).size)} |`);

const host = artifacts.filter((a) => a.startsWith(`shimmy-${process.platform}-${process.arch}`) && !a.includes("baseline"));
console.log("\n| host artifact | `--version` | first run (extract + load + 1 token) | warm run | `serve` until `/health` |\n|---|---|---|---|---|");
for (const a of host) {
  const exe = path.join(dist, a);
  const home = path.join(tmp, `home-${a}`);
  mkdirSync(home);
  const version = median(Array.from({ length: 11 }, () => timed([exe, "--version"], { HOME: home })));
  const gen = [exe, "generate", "tiny", "--model-dirs", models, "--prompt", "hi", "--max-tokens", "1"];
  const first = timed(gen, { HOME: home });
  const warm = median(Array.from({ length: 5 }, () => timed(gen, { HOME: home })));
  const serve = median(await Promise.all([0].map(() => serveReadyMs(exe, home))).then(async (a) => [...a, await serveReadyMs(exe, home), await serveReadyMs(exe, home)]));
  console.log(`| \`${a}\` | ${version.toFixed(0)} ms | ${first.toFixed(0)} ms | ${warm.toFixed(0)} ms | ${serve.toFixed(0)} ms |`);
}
rmSync(tmp, { recursive: true, force: true });
