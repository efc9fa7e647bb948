/**
 * The JavaScript runtime's background threads yield to llama.cpp's (Linux).
 *
 * Besides the JavaScript thread, a Bun process runs JavaScriptCore's compiler threads (`JITWorker`,
 * `JSCWarmUp`) and mimalloc's `mi-scavenger`. They work now and then: the compilers for the first
 * few dozen requests of a new process (shimmy's code tiers up as it gets hot), and every so often
 * after that. With llama.cpp's threads on every core, each millisecond one of them runs takes a core
 * from a thread that the others then wait for at ggml's barriers, so it adds about a millisecond to
 * the decode. Measured on 2 cores (9-layer bench-shape model, 64-token generations of about 1 s):
 * JavaScriptCore reported 230 and 235 ms of compiling in a fresh server's first two requests, 16-53 ms
 * in the next three and 0-43 ms in later ones; llama-server has no such threads.
 *
 * So those threads run at the lowest priority (nice 19, `SHIMMY_BACKGROUND_NICE`): while llama.cpp
 * computes they wait, and they run in the gaps (between decode calls, between requests). The threads
 * are found by name in /proc/self/task, when a model loads and when a generation starts (at most once a
 * second); threads that the runtime starts later are found at the next look. JavaScriptCore's garbage
 * collector threads keep their priority: the JavaScript thread can wait for them. A fresh server's
 * first three requests decoded 2-4% faster this way (scripts/bench-fresh.ts; docs/PERFORMANCE.md).
 */
import os from "node:os";
import { readdirSync, readFileSync } from "node:fs";
import { log } from "../log.ts";

/** The nice value given to the runtime's background threads by default (the lowest priority). */
export const BACKGROUND_NICE = 19;

/** Threads lowered: JavaScriptCore's compilers and mimalloc's scavenger, by their thread names. */
const BACKGROUND = /^(JITWorker|JSCWarmUp|mi-scavenger)$/;
/** Looks at most this often (ms). */
const EVERY_MS = 1000;

let nice = 0;
let last = -Infinity;

/** Sets the nice value for the runtime's background threads (0 leaves them alone) and lowers those running now. */
export function configureBackgroundThreads(value: number): void {
  nice = process.platform === "linux" ? value : 0;
  last = -Infinity;
  lowerBackgroundThreads();
}

/**
 * Lowers the priority of background threads that are not that low yet; returns how many it lowered.
 * Each thread's name and nice value come from its /proc stat, so a thread id the kernel hands to a new
 * thread is judged afresh, and a thread already lower (the whole process under `nice`) is left as it
 * is. Cheap (one directory listing and a small read per thread) and done at most once a second
 * unless `force`.
 */
export function lowerBackgroundThreads(force = false): number {
  if (nice <= 0) return 0;
  const now = performance.now();
  if (!force && now - last < EVERY_MS) return 0;
  last = now;
  let n = 0;
  let tids: string[];
  try {
    tids = readdirSync("/proc/self/task");
  } catch {
    return 0;
  }
  for (const t of tids) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/self/task/${t}/stat`, "utf8");
    } catch {
      continue;
    }
    // "tid (name) state ppid ...": the name may hold spaces or parentheses, so it ends at the last ")";
    // the nice value is the 19th field, the 17th after the name.
    const end = stat.lastIndexOf(")");
    const name = stat.slice(stat.indexOf("(") + 1, end);
    if (!BACKGROUND.test(name) || Number(stat.slice(end + 2).split(" ")[16]) >= nice) continue;
    try {
      os.setPriority(Number(t), nice);
      n++;
    } catch (err) {
      log.debug(`background threads: could not lower ${name} (${t}): ${(err as Error).message}`);
    }
  }
  if (n) log.debug(`background threads: ${n} set to nice ${nice}`);
  return n;
}
