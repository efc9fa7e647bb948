/**
 * Stop-sequence matching over streamed text. Text that could still be the start of a stop sequence
 * is held back until ruled out, so no part of a stop sequence is ever emitted. Works on decoded
 * strings (the binding only hands over whole UTF-8 characters), so multi-byte text is safe.
 */
export class StopMatcher {
  private held = "";
  private readonly stops: string[];
  /** The stop sequence that ended the text, once one has. */
  matched: string | undefined;

  constructor(stops: readonly string[]) {
    this.stops = stops.filter((s) => s.length > 0);
  }

  get active(): boolean {
    return this.stops.length > 0;
  }

  /** Feeds generated text; returns the text now safe to emit, and whether a stop sequence was hit. */
  push(text: string): { emit: string; stopped: boolean } {
    if (!this.stops.length) return { emit: text, stopped: false };
    const buf = this.held + text;
    let at = -1;
    for (const s of this.stops) {
      const i = buf.indexOf(s);
      if (i >= 0 && (at < 0 || i < at)) {
        at = i;
        this.matched = s;
      }
    }
    if (at >= 0) {
      this.held = "";
      return { emit: buf.slice(0, at), stopped: true };
    }
    let keep = 0;
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, buf.length); k > keep; k--) {
        if (buf.endsWith(s.slice(0, k))) {
          keep = k;
          break;
        }
      }
    }
    this.held = buf.slice(buf.length - keep);
    return { emit: buf.slice(0, buf.length - keep), stopped: false };
  }

  /** Text held back when generation ended for another reason (it was not a stop sequence). */
  flush(): string {
    const h = this.held;
    this.held = "";
    return h;
  }
}
