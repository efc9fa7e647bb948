/**
 * Soak (not a test): a bounded mixed load against a real `shimmy serve` child process on loopback,
 * with the tiny generated model. Clients mix SSE streams, non-stream requests, WebSocket
 * generations and abrupt disconnects. Prints throughput, p50/p99 latency, errors by status (only
 * queue-full 503s are allowed) and the server's resident memory after warm-up and at the end.
 * Exits 1 when a status other than 200/503 is seen, the server dies, or RSS grows by 10% or more.
 *
 *   bun scripts/soak.ts [--requests 2000] [--clients 16] [--max-rss-growth 10]
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { writeTinyModel } from "../src/gguf/presets.ts";

export interface SoakResult {
  requests: number;
  seconds: number;
  perSecond: number;
  p50: number;
  p99: number;
  statuses: Record<string, number>;
  rssWarm: number;
  rssEnd: number;
  growthPct: number;
  healthy: boolean;
}

function rss(pid: number): number {
  const m = readFileSync(`/proc/${pid}/status`, "utf8").match(/^VmRSS:\s+(\d+) kB/m);
  return m ? Number(m[1]) * 1024 : 0;
}

export async function soak(opts: { requests: number; clients: number; warmup?: number }): Promise<SoakResult> {
  const dir = mkdtempSync(path.join(os.tmpdir(), "shimmy-soak-"));
  await writeTinyModel(path.join(dir, "tiny.gguf"), { contextLength: 2048 });
  const server = Bun.spawn(["bun", path.join(import.meta.dir, "..", "src", "main.ts"), "serve", "--bind", "127.0.0.1:0", "--model-dirs", dir, "--parallel", "4", "--max-queue", "32"], {
    env: { ...process.env, SHIMMY_THREADS: "1", SHIMMY_GPU: "cpu", SHIMMY_DEMO_MODEL: "0", SHIMMY_LOG: "warn" },
    stdout: "pipe",
    stderr: "inherit",
  });
  try {
    const reader = server.stdout.getReader();
    let buf = "";
    while (!/listening on (\S+)/.test(buf)) buf += new TextDecoder().decode((await reader.read()).value);
    const url = buf.match(/listening on (\S+)/)![1]!;
    const statuses: Record<string, number> = {};
    const latencies: number[] = [];
    const count = (s: string | number) => (statuses[String(s)] = (statuses[String(s)] ?? 0) + 1);
    const body = (i: number, stream: boolean) => JSON.stringify({ model: "tiny", prompt: `request ${i}`, max_tokens: 8 + (i % 24), stream });
    const one = async (i: number) => {
      const t0 = performance.now();
      const kind = i % 4;
      if (kind === 0) {
        const r = await fetch(`${url}/api/generate`, { method: "POST", body: body(i, false) });
        count(r.status);
        await r.text();
      } else if (kind === 1) {
        const r = await fetch(`${url}/v1/chat/completions`, { method: "POST", body: JSON.stringify({ model: "tiny", messages: [{ role: "user", content: `hi ${i}` }], max_tokens: 16, stream: true }) });
        count(r.status);
        await r.text();
      } else if (kind === 2) {
        // Abrupt disconnect after the first chunk.
        const c = new AbortController();
        const r = await fetch(`${url}/api/generate`, { method: "POST", body: body(i, true), signal: c.signal });
        count(r.status);
        if (r.ok) {
          await r.body!.getReader().read();
          c.abort();
        } else await r.text();
      } else {
        await new Promise<void>((resolve) => {
          const ws = new WebSocket(`${url.replace("http", "ws")}/ws/generate`);
          ws.onopen = () => ws.send(body(i, true));
          ws.onmessage = (e) => {
            const d = String(e.data);
            if (d.startsWith('{"done"')) count(200);
            else if (d.startsWith('{"error"')) count(d.includes("overloaded") ? 503 : "ws-error");
            else return;
            ws.close();
            resolve();
          };
          ws.onerror = () => (count("ws-failed"), resolve());
        });
      }
      latencies.push(performance.now() - t0);
    };
    const run = async (n: number) => {
      let next = 0;
      await Promise.all(Array.from({ length: opts.clients }, async () => {
        while (next < n) await one(next++);
      }));
    };
    await run(opts.warmup ?? Math.min(200, opts.requests / 10));
    Bun.gc(true);
    await Bun.sleep(200);
    const rssWarm = rss(server.pid);
    latencies.length = 0;
    for (const k of Object.keys(statuses)) delete statuses[k];
    const t0 = performance.now();
    await run(opts.requests);
    const seconds = (performance.now() - t0) / 1000;
    await Bun.sleep(300);
    const rssEnd = rss(server.pid);
    const healthy = (await fetch(`${url}/health`).then((r) => r.status, () => 0)) === 200;
    latencies.sort((a, b) => a - b);
    const q = (p: number) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))]!;
    return { requests: opts.requests, seconds, perSecond: opts.requests / seconds, p50: q(0.5), p99: q(0.99), statuses, rssWarm, rssEnd, growthPct: ((rssEnd - rssWarm) / rssWarm) * 100, healthy };
  } finally {
    server.kill("SIGTERM");
    await server.exited;
    rmSync(dir, { recursive: true, force: true });
  }
}

if (import.meta.main) {
  const { values } = parseArgs({ options: { requests: { type: "string" }, clients: { type: "string" }, "max-rss-growth": { type: "string" } } });
  const r = await soak({ requests: Number(values.requests ?? 2000), clients: Number(values.clients ?? 16) });
  const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;
  console.log(`${r.requests} requests from ${values.clients ?? 16} clients in ${r.seconds.toFixed(1)} s: ${r.perSecond.toFixed(1)} req/s, latency p50 ${r.p50.toFixed(0)} ms, p99 ${r.p99.toFixed(0)} ms`);
  console.log(`statuses: ${JSON.stringify(r.statuses)}`);
  console.log(`server RSS after warm-up ${mib(r.rssWarm)}, at the end ${mib(r.rssEnd)} (${r.growthPct >= 0 ? "+" : ""}${r.growthPct.toFixed(1)}%); healthy: ${r.healthy}`);
  const bad = Object.keys(r.statuses).filter((s) => s !== "200" && s !== "503");
  const limit = Number(values["max-rss-growth"] ?? 10);
  if (bad.length || !r.healthy || r.growthPct >= limit) {
    console.error(`FAIL: ${bad.length ? `unexpected statuses ${bad.join(", ")}; ` : ""}${r.healthy ? "" : "server unhealthy; "}${r.growthPct >= limit ? `RSS grew ${r.growthPct.toFixed(1)}% (limit ${limit}%)` : ""}`);
    process.exit(1);
  }
}
