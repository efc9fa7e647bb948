// The statistics the benchmark scripts report (scripts/bench-prompt.ts): medians and the
// distribution-free 95% interval of a median that bench:compare prints beside each paired figure.
import { describe, expect, test } from "bun:test";
import { median, medianInterval } from "../scripts/bench-prompt.ts";

/** P(Binomial(n, 1/2) < k), summed directly. */
function below(n: number, k: number): number {
  let p = 0;
  let c = 1;
  for (let i = 0; i < k; i++) {
    p += c;
    c = (c * (n - i)) / (i + 1);
  }
  return p / 2 ** n;
}

describe("median", () => {
  test("odd and even counts, unsorted input left as it was", () => {
    const xs = [5, 1, 3];
    expect(median(xs)).toBe(3);
    expect(xs).toEqual([5, 1, 3]);
    expect(median([4, 1, 3, 2])).toBe(2.5);
  });
  test("non-finite values are left out; none at all gives NaN", () => {
    expect(median([NaN, 2, Infinity, 4])).toBe(3);
    expect(median([])).toBeNaN();
    expect(median([NaN])).toBeNaN();
  });
});

describe("medianInterval", () => {
  test("known order statistics: n=6 -> 1st and 6th, 10 -> 2nd and 9th, 20 -> 6th and 15th, 40 -> 14th and 27th", () => {
    const seq = (n: number) => Array.from({ length: n }, (_, i) => i + 1);
    expect(medianInterval(seq(6))).toEqual([1, 6]);
    expect(medianInterval(seq(10))).toEqual([2, 9]);
    expect(medianInterval(seq(20))).toEqual([6, 15]);
    expect(medianInterval(seq(40))).toEqual([14, 27]);
  });
  test("k is the largest with P(X < k) <= 2.5%, for every n from 6 to 200", () => {
    for (let n = 6; n <= 200; n++) {
      const [lo, hi] = medianInterval(Array.from({ length: n }, (_, i) => i + 1));
      const k = lo;
      expect(hi).toBe(n + 1 - k);
      expect(below(n, k)).toBeLessThanOrEqual(0.025);
      expect(below(n, k + 1)).toBeGreaterThan(0.025);
    }
  });
  test("fewer than 6 values have no such interval", () => {
    for (let n = 0; n < 6; n++) expect(medianInterval(Array.from({ length: n }, (_, i) => i))).toEqual([NaN, NaN]);
  });
});
