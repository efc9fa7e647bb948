/** Needs a model: the short form of scripts/soak.ts — a mixed concurrent load against a real `shimmy serve`. */
import { expect, setDefaultTimeout, test } from "bun:test";
import { soak } from "../scripts/soak.ts";

setDefaultTimeout(120_000);

test("300 mixed requests from 8 clients: only 200s (or queue-full 503s), the server stays healthy", async () => {
  const r = await soak({ requests: 300, clients: 8, warmup: 40 });
  // Figures for the log (memory is judged by the full script, not here: CI machines are noisy).
  console.log(`soak: ${r.perSecond.toFixed(1)} req/s, p50 ${r.p50.toFixed(0)} ms, p99 ${r.p99.toFixed(0)} ms, RSS ${(r.rssWarm / 1048576).toFixed(1)} -> ${(r.rssEnd / 1048576).toFixed(1)} MiB, statuses ${JSON.stringify(r.statuses)}`);
  expect(Object.keys(r.statuses).filter((s) => s !== "200" && s !== "503")).toEqual([]);
  expect(r.statuses["200"]).toBeGreaterThan(0);
  expect(Object.values(r.statuses).reduce((a, b) => a + b, 0)).toBe(300);
  expect(r.healthy).toBe(true);
});
