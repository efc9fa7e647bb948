/**
 * The JavaScript runtime's compiler and scavenger threads run at the lowest priority (nice 19) so they
 * never take a core from llama.cpp's threads (src/engine/background.ts). Checked on this process's
 * own threads, in /proc/self/task, after a real model load and a real generation.
 */
import { expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import os from "node:os";
import { configureBackgroundThreads, lowerBackgroundThreads } from "../src/engine/background.ts";
import { engineFixtures } from "./helpers.ts";

const ctx = engineFixtures();

/** Every thread of this process: its name and nice value (field 19 of /proc/.../stat). */
function threads(): Array<{ tid: number; name: string; nice: number }> {
  return readdirSync("/proc/self/task").flatMap((t) => {
    try {
      const stat = readFileSync(`/proc/self/task/${t}/stat`, "utf8");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      return [{ tid: Number(t), name: readFileSync(`/proc/self/task/${t}/comm`, "utf8").trimEnd(), nice: Number(fields[16]) }];
    } catch {
      return [];
    }
  });
}

/** Hot enough for JavaScriptCore to compile it on its compiler threads. */
function warm(): number {
  let x = 0;
  for (let i = 0; i < 3e6; i++) x = (x + Math.imul(i, 31)) | 0;
  return x;
}

test.skipIf(process.platform !== "linux")("after a model load and a generation the compiler and scavenger threads run at nice 19; the JavaScript thread and the others keep theirs", async () => {
  warm();
  const r = await ctx.engine.complete("tiny", { prompt: "hello", maxTokens: 4, temperature: 0 });
  expect(r.text.length).toBeGreaterThan(0);
  lowerBackgroundThreads(true);
  const all = threads();
  const background = all.filter((t) => /^(JITWorker|JSCWarmUp|mi-scavenger)$/.test(t.name));
  expect(background.length).toBeGreaterThan(0);
  for (const t of background) expect(t).toMatchObject({ nice: 19 });
  // The JavaScript thread (tid = pid), llama.cpp's workers and Bun's pool keep the process's priority
  // (this thread's: the suite may itself run under `nice`).
  const own = os.getPriority();
  for (const t of all.filter((t) => !background.includes(t))) expect(t).toMatchObject({ nice: own });
  // Looked at most once a second, unless forced; threads already lowered are not counted again.
  expect(lowerBackgroundThreads()).toBe(0);
  expect(lowerBackgroundThreads(true)).toBe(0);
  // A thread back at the process's priority (as a new thread given a recycled thread id would be) is
  // lowered again at the next look.
  const one = background[0]!;
  try {
    os.setPriority(one.tid, own);
  } catch {
    return; // raising a priority back needs privileges this run may lack
  }
  expect(lowerBackgroundThreads(true)).toBe(1);
  expect(threads().find((t) => t.tid === one.tid)).toMatchObject({ nice: 19 });
});

test.skipIf(process.platform !== "linux")("SHIMMY_BACKGROUND_NICE=0 leaves the threads alone", () => {
  configureBackgroundThreads(0);
  try {
    warm();
    expect(lowerBackgroundThreads(true)).toBe(0);
  } finally {
    configureBackgroundThreads(19);
  }
});
