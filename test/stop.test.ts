/** Needs no model: stop-sequence matching over streamed text. */
import { describe, expect, test } from "bun:test";
import { StopMatcher } from "../src/engine/stop.ts";

function run(stops: string[], chunks: string[]) {
  const m = new StopMatcher(stops);
  const out: string[] = [];
  let stopped = false;
  for (const c of chunks) {
    const r = m.push(c);
    out.push(r.emit);
    if (r.stopped) {
      stopped = true;
      break;
    }
  }
  if (!stopped) out.push(m.flush());
  return { out, text: out.join(""), stopped };
}

describe("StopMatcher", () => {
  test("holds back a possible start of a stop sequence until ruled out", () => {
    const r = run(["END"], ["abc E", "N", "x more"]);
    expect(r.stopped).toBe(false);
    expect(r.out).toEqual(["abc ", "", "ENx more", ""]);
  });

  test("never emits any part of a stop sequence split across chunks", () => {
    const r = run(["</s>"], ["hello <", "/", "s", "> tail"]);
    expect(r.stopped).toBe(true);
    expect(r.text).toBe("hello ");
    for (const piece of r.out) expect(piece).not.toContain("<");
  });

  test("stops inside a chunk and drops what follows", () => {
    expect(run(["world"], ["hello world and more"])).toMatchObject({ text: "hello ", stopped: true });
  });

  test("earliest of several stop sequences wins", () => {
    expect(run(["bb", "a"], ["xxbba"]).text).toBe("xx");
  });

  test("multi-byte characters and emoji are matched and never split", () => {
    const r = run(["é😀"], ["caf", "é", "😀 done"]);
    expect(r).toMatchObject({ text: "caf", stopped: true });
    const partial = run(["é😀"], ["café", " ok"]);
    expect(partial.stopped).toBe(false);
    expect(partial.text).toBe("café ok");
    expect(partial.out[0]).toBe("caf");
  });

  test("empty stop strings are ignored", () => {
    const m = new StopMatcher(["", ""]);
    expect(m.active).toBe(false);
    expect(m.push("abc")).toEqual({ emit: "abc", stopped: false });
  });
});

describe("StopMatcher.matched", () => {
  test("names the stop sequence that ended the text (the earliest in the text, across chunks)", () => {
    const m = new StopMatcher(["END", "xy"]);
    expect(m.push("abc x").stopped).toBe(false);
    expect(m.matched).toBeUndefined();
    expect(m.push("y then END")).toEqual({ emit: "", stopped: true });
    expect(m.matched).toBe("xy");
  });
});
