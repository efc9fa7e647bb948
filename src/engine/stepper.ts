/**
 * shimmy's own decode loop over node-llama-cpp's native context (the "direct decode" path).
 *
 * node-llama-cpp generates through LlamaCompletion -> LlamaContextSequence.evaluate -> the context's
 * batch dispatcher. Measured on 2 cores (6-layer bench-shape model, 64 tokens, greedy), that stack
 * runs 0.8-1.6 ms of JavaScript per token; at 13-15 ms per decode step that alone made shimmy about 8%
 * slower than llama-server, and because the next decode often starts while that JavaScript still runs,
 * it also slowed the decode itself (the JS thread competes with llama.cpp's 2 threads). Driving the
 * same native calls directly (initBatch / addToBatch / decodeBatch / sampleToken, the calls the
 * dispatcher makes) costs about 0.2-0.3 ms per token.
 *
 * A Stepper serves one context: sequences submit the tokens they want decoded (a prompt, or the
 * token they just sampled) with a sampling function; each step puts every queued sequence into one
 * batch (ascending sequence ids, so llama.cpp decodes them in one ubatch), decodes it, and samples
 * each sequence's next token, all under the context's lock, the same lock node-llama-cpp's dispatcher
 * holds. While node-llama-cpp's dispatcher has work (a tool-calling, logprobs or JSON-format request
 * on the same model), steps are handed to that dispatcher instead, so the two never wait on each other.
 *
 * It relies on node-llama-cpp 3.21.1 internals (pinned): the context's `_ctx` binding, the sequence's
 * `_nextTokenIndex` / `_contextTokens` bookkeeping, and the context's `_decodeTokens` queue.
 */
import { isLockActive, withLock } from "lifecycle-utils";

// Structural stand-ins for node-llama-cpp's types: only llama.ts imports node-llama-cpp (design.md).
type Token = number;
/** A node-llama-cpp LlamaContext (its public `contextSize` and `totalSequences`; the rest through ContextInternals). */
type LlamaContext = { readonly contextSize: number; readonly totalSequences: number };
/** A node-llama-cpp LlamaContextSequence (used through SequenceInternals). */
type LlamaContextSequence = object;

/** The native context calls the loop uses (node-llama-cpp 3.21.1's AddonContext). */
export interface NativeContext {
  initBatch(size: number): void;
  addToBatch(sequenceId: number, firstTokenSequenceIndex: number, tokens: Uint32Array, logitIndexes: Uint32Array): Uint32Array;
  decodeBatch(): Promise<void>;
  sampleToken(batchLogitIndex: number, sampler: unknown, probabilities?: boolean, confidence?: boolean): Promise<unknown>;
}

interface ContextInternals {
  _ctx: NativeContext;
  _batchSize: number;
  _backendContextDisposeGuard: { createPreventDisposalHandle(): { dispose(): void } };
  _decodeTokens(
    item: { sequenceId: number; firstTokenSequenceIndex: number; tokens: Token[]; logits: boolean[]; evaluationPriority: number; tokenMeter: unknown },
    logitDataMapper: (batchLogitIndex: number, tokenIndex: number) => unknown,
  ): Promise<Array<[number, unknown]>>;
}

interface SequenceInternals {
  _sequenceId: number;
  _nextTokenIndex: number;
  _contextTokens: Token[];
  _tokenMeter: unknown;
}

/**
 * Samples the next token from the batch's logits at `batchLogitIndex` (synchronously, or through a
 * promise). `rows`: how many sequences this step samples (0 when unknown: node-llama-cpp's dispatcher).
 */
export type SampleFn<T> = (native: NativeContext, batchLogitIndex: number, rows: number) => T | Promise<T>;

interface Entry {
  seq: SequenceInternals;
  /** A request's first decode (its prompt). */
  prompt: boolean;
  tokens: Token[];
  sample: SampleFn<unknown>;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

/** How long a step waits for the context's lock before handing its tokens to node-llama-cpp's dispatcher. */
const LOCK_WAIT_MS = 5;

/** Decodes a batch on the calling thread (greedy.ts); returns llama_decode's result (0 on success). */
export interface SyncDecoder {
  decode(n: number, tokens: Int32Array, pos: Int32Array, seq: Int32Array, flags: Uint8Array): number;
}

/** Most sequences a generation step decodes on the JavaScript thread (greedy.c's batch size). */
const SYNC_MAX = 64;
/**
 * With `syncDecode: "auto"`, generation steps are decoded on the JavaScript thread while the last one
 * took less than this: a step blocks the event loop for its duration, and above it the thread hops it
 * saves (under 0.5 ms a step) are under 1%.
 */
export const SYNC_AUTO_MS = 50;

/**
 * While sequences generate, generation steps on the JavaScript thread let the event loop run (write
 * the text decoded so far, accept requests, see disconnects) at most this often, in ms
 * (SHIMMY_STREAM_INTERVAL_MS). Tokens decoded in between reach their sockets together, one write per
 * connection instead of one per token. A step right after a prompt step, and after a sequence ends,
 * always lets it run: first tokens and last ones go out at once. See docs/PERFORMANCE.md.
 */
export const STREAM_INTERVAL_MS = 30;
/** Sequences submitting after a step get until the next event-loop turn to join the next batch. */
const DEFER = () => new Promise<void>((r) => setImmediate(r));
/** Longest a prompt waits for other requests that hold a slot to queue theirs. */
const PROMPT_WAIT_MS = 3;
/**
 * A prompt arriving at an idle model waits this share of its expected evaluation time (from the last
 * prompt step's time per token) for other requests sent with it, up to GATHER_MAX_MS. Requests sent
 * together over separate connections reach the server 0.1-1 ms apart, and the first one alone would
 * otherwise start a prompt decode that the others then wait behind: 1 prompt then 3 took 2.6-2.9 s
 * where 4 together took 2.4 s (bench model, 70-token prompts, 2 cores). A lone request pays the wait:
 * at most 0.5% of its prompt time, and nothing where prompts evaluate in under 100 ms (GPUs, small
 * models).
 */
export const GATHER_SHARE = 0.005;
/** The default longest wait (SHIMMY_GATHER_MS). */
export const GATHER_MAX_MS = 2;
/** Below this the wait is skipped (timers are not that fine). */
const GATHER_MIN_MS = 0.5;

export class Stepper {
  private readonly queue: Entry[] = [];
  private running = false;
  /** Sequences generating through this stepper (a step waits a turn for all of them to queue). */
  private generating = 0;
  private wake: (() => void) | undefined;
  private guard: { dispose(): void } | undefined;
  /** Steps handed to node-llama-cpp's dispatcher (for tests). */
  handedOver = 0;

  constructor(
    private readonly context: LlamaContext,
    /** Runs where no decode is in flight, under the lock, before each step (slot truncations). */
    private readonly beforeStep: () => void = () => {},
    /** Sequences holding a slot of this context (some may be about to queue their prompt). */
    private readonly busySlots: () => number = () => 0,
    /** The context's synchronous decoder, when it has one (looked up per step: it can be withdrawn). */
    private readonly syncDecoder: () => SyncDecoder | undefined = () => undefined,
    /** Generation steps on the JavaScript thread: always, never, or while steps are short ("auto"). */
    private readonly syncDecode: boolean | "auto" = "auto",
    /** Longest a prompt from idle waits for others sent with it (ms; see GATHER_SHARE). */
    private readonly gatherMax: number = GATHER_MAX_MS,
    /** Longest a run of synchronous generation steps keeps the event loop waiting (ms; see STREAM_INTERVAL_MS). */
    private readonly streamInterval: number = STREAM_INTERVAL_MS,
  ) {}
  /** When the event loop last ran between synchronous steps (performance.now()). */
  private lastTurn = -Infinity;
  /** The next synchronous step lets the event loop run first (a first or last token is waiting). */
  private turnDue = true;
  /** Synchronous steps that let the event loop run first (for tests). */
  turns = 0;
  /** The last generation step's decode time (ms), either way. */
  private lastStepMs: number | undefined;
  /** The last prompt step's decode time per token (ms); estimates a prompt's evaluation time. */
  promptMsPerToken: number | undefined;
  /** A prompt from idle is waiting for others sent with it (see GATHER_SHARE). */
  private gathering = false;
  /** Prompt steps that started after waiting for others (for tests). */
  gathered = 0;
  /** Generation steps decoded on the JavaScript thread (for tests). */
  syncSteps = 0;
  private readonly sd = { tokens: new Int32Array(SYNC_MAX), pos: new Int32Array(SYNC_MAX), seq: new Int32Array(SYNC_MAX), flags: new Uint8Array(SYNC_MAX) };

  /** How many queued sequences a step waits for: every generating one, and (for a prompt step) every busy slot. */
  private wanted(prompt: boolean): number {
    return prompt ? Math.max(this.generating, this.busySlots()) : this.generating;
  }

  /** Sequences currently generating through this stepper. */
  get active(): number {
    return this.generating;
  }

  /**
   * A sequence starts (or stops) generating here: steps wait a turn for every generating sequence.
   * While any does, the context cannot be disposed (node-llama-cpp's guard, taken once for the whole
   * generation rather than per step: per step it was a tenth of the loop's JavaScript). Throws
   * node-llama-cpp's DisposedError on a disposed context.
   */
  begin(): void {
    if (this.generating === 0) this.guard = (this.context as unknown as ContextInternals)._backendContextDisposeGuard.createPreventDisposalHandle();
    this.generating++;
  }
  end(): void {
    this.generating--;
    this.turnDue = true;
    if (this.generating === 0) {
      this.guard?.dispose();
      this.guard = undefined;
    }
    this.poke();
  }

  /**
   * Decodes `tokens` at the end of `seq` (the last one with logits) and resolves with `sample`'s
   * result. The sequence's bookkeeping (next index, cached tokens) advances as node-llama-cpp's would.
   */
  decode<T>(seq: LlamaContextSequence, tokens: Token[], sample: SampleFn<T>, first = false): Promise<T> {
    if (!tokens.length) return Promise.reject(new Error("nothing to decode"));
    const s = seq as unknown as SequenceInternals;
    const ctxSize = this.context.contextSize;
    if (s._nextTokenIndex + tokens.length > ctxSize - 1) return Promise.reject(new Error(`context full: ${s._nextTokenIndex + tokens.length} tokens do not fit in ${ctxSize}`));
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ seq: s, tokens, sample, prompt: first, resolve: resolve as (v: unknown) => void, reject });
      this.poke();
      if (!this.running) void this.loop();
    });
  }

  private async loop(): Promise<void> {
    this.running = true;
    try {
      // From idle, one event-loop turn first: requests sent together (their sockets already
      // readable) reach the queue in it and share the prompt step.
      if (this.hasPrompt()) {
        await DEFER();
        const wait = this.gatherMs();
        if (wait > 0) {
          this.gathering = true;
          await Promise.race([Bun.sleep(wait), new Promise<void>((r) => (this.wake = r))]);
          this.gathering = false;
          this.wake = undefined;
          this.gathered++;
        }
      }
      while (this.queue.length) {
        const prompt = this.hasPrompt();
        if (this.queue.length < this.wanted(prompt)) {
          // Some generating sequence has not queued its next token yet (its text is being sent):
          // wait for it, at most one event-loop turn, so all of them share one decode. Prompts wait
          // up to PROMPT_WAIT_MS for requests that hold a slot but have not queued yet (requests
          // sent together): one batch of 4 prompts evaluates 1.5x faster than 1 then 3 (measured
          // with llama-batched-bench on 2 cores, 70-token prompts: 344 against 228 tok/s).
          await Promise.race([prompt ? Bun.sleep(PROMPT_WAIT_MS) : DEFER(), new Promise<void>((r) => (this.wake = r))]);
          this.wake = undefined;
        }
        try {
          if (this.dispatcherBusy()) await this.handOver();
          else if (!isLockActive([this.context, "context"])) await withLock([this.context, "context"], () => this.step());
          else {
            // A short holder (a slot trim, node-llama-cpp erasing a range) is waited for; one that
            // keeps the lock (node-llama-cpp's dispatcher, looping while its own sequences queue
            // tokens) gets these tokens handed over.
            try {
              await withLock([this.context, "context"], AbortSignal.timeout(LOCK_WAIT_MS), () => this.step());
            } catch (err) {
              if ((err as Error)?.name !== "TimeoutError") throw err;
              await this.handOver();
            }
          }
        } catch (err) {
          // Never leave a sequence waiting: whatever failed (a disposed context) fails what is queued.
          for (const e of this.queue.splice(0)) e.reject(err);
        }
      }
    } finally {
      this.running = false;
    }
  }

  /** How long queued prompts from idle wait for others (0: not at all). See GATHER_SHARE. */
  private gatherMs(): number {
    if (this.promptMsPerToken === undefined || this.queue.length >= this.context.totalSequences) return 0;
    let tokens = 0;
    for (const e of this.queue) if (e.prompt) tokens += e.tokens.length;
    const ms = Math.min(this.gatherMax, tokens * this.promptMsPerToken * GATHER_SHARE);
    return ms >= GATHER_MIN_MS ? ms : 0;
  }

  private hasPrompt(): boolean {
    return this.queue.some((e) => e.prompt);
  }

  /** Wakes a waiting loop once every sequence it waits for has queued. */
  private poke(): void {
    if (this.wake && this.queue.length >= (this.gathering ? this.context.totalSequences : this.wanted(this.hasPrompt()))) this.wake();
  }

  /** node-llama-cpp's own dispatcher has tokens queued or is about to run (a LlamaChat or logprobs generation). */
  private dispatcherBusy(): boolean {
    const ctx = this.context as unknown as { _queuedDecodes?: unknown[]; _batchDispatchPending?: boolean };
    return (ctx._queuedDecodes?.length ?? 0) > 0 || ctx._batchDispatchPending === true;
  }

  /** One batch: every queued sequence's tokens (up to the batch size), decoded, then sampled. */
  private async step(): Promise<void> {
    this.beforeStep();
    const ctx = this.context as unknown as ContextInternals;
    const native = ctx._ctx;
    const entries = this.queue.splice(0).sort((a, b) => a.seq._sequenceId - b.seq._sequenceId);
    // Each sequence gets at least one token of the batch (generation never waits behind a long
    // prompt); prompts fill the rest in sequence order; what does not fit waits for the next step.
    let budget = Math.max(1, ctx._batchSize);
    const take = entries.map(() => 0);
    for (let i = 0; i < entries.length && budget > 0; i++, budget--) take[i] = 1;
    for (let i = 0; i < entries.length && budget > 0; i++) {
      const more = Math.min(entries[i]!.tokens.length - take[i]!, budget);
      take[i]! += more;
      budget -= more;
    }
    const batch: Array<{ e: Entry; n: number; logits: boolean; idx?: number }> = [];
    entries.forEach((e, i) => {
      if (take[i]! > 0) batch.push({ e, n: take[i]!, logits: take[i] === e.tokens.length });
      else this.queue.push(e);
    });
    let total = 0;
    for (const b of batch) total += b.n;
    // A generation step (one token per sequence) may run on this thread: see syncStep.
    const generation = total === batch.length && total <= SYNC_MAX;
    const sync = generation && (this.syncDecode === true || (this.syncDecode === "auto" && this.lastStepMs !== undefined && this.lastStepMs < SYNC_AUTO_MS)) ? this.syncDecoder() : undefined;
    const t0 = performance.now();
    if (sync) {
      if (!(await this.syncStep(sync, batch))) return;
    } else try {
      native.initBatch(total);
      for (const b of batch) {
        const chunk = b.n === b.e.tokens.length ? b.e.tokens : b.e.tokens.slice(0, b.n);
        b.idx = native.addToBatch(b.e.seq._sequenceId, b.e.seq._nextTokenIndex, Uint32Array.from(chunk), b.logits ? Uint32Array.of(b.n - 1) : new Uint32Array(0))[0];
      }
      await native.decodeBatch();
    } catch (err) {
      for (const b of batch) b.e.reject(err);
      return;
    }
    if (generation && !sync) this.lastStepMs = performance.now() - t0;
    else if (!generation) this.promptMsPerToken = (performance.now() - t0) / total;
    for (const b of batch) {
      const s = b.e.seq;
      const chunk = b.e.tokens.splice(0, b.n);
      // A first token: the next step lets the event loop write it (see syncStep).
      if (b.e.prompt && b.logits) this.turnDue = true;
      b.e.prompt = false;
      s._nextTokenIndex += chunk.length;
      for (const t of chunk) s._contextTokens.push(t);
      // A prompt longer than the batch continues in the next step (this one produced no logits for it).
      if (!b.logits) this.queue.push(b.e);
    }
    // The next decode overwrites the logits: every sequence samples before the step ends.
    const pending: Array<Promise<void>> = [];
    let rows = 0;
    for (const b of batch) if (b.logits) rows++;
    for (const b of batch) {
      if (!b.logits) continue;
      try {
        const r = b.e.sample(native, b.idx!, rows);
        if (r instanceof Promise) pending.push(r.then(b.e.resolve, b.e.reject));
        else b.e.resolve(r);
      } catch (err) {
        b.e.reject(err);
      }
    }
    if (pending.length) await Promise.all(pending);
  }

  /**
   * A generation step decoded on the JavaScript thread (llama_decode through greedy.ts), instead of an
   * async call that runs it on one of the addon's worker threads and resolves through the event loop.
   * That round trip (the worker woken, then the JavaScript thread woken) cost 0.5-1 ms per token on
   * 2 cores: 6-layer model, one stream, 11.1 against 10.2 ms per token (8 alternating rounds). When
   * the last such turn is streamInterval ms old, or a first or last token is waiting, the step first
   * lets the event loop run twice, so the text decoded since reaches its socket (after one turn it
   * was still queued, and it arrived one decode late) and new requests and disconnects are seen;
   * then it blocks the loop for the decode. Between those turns the sequences' consumers run as
   * promise callbacks, without the loop. Returns false when the decode failed (every sequence in the
   * batch was rejected).
   */
  private async syncStep(sync: SyncDecoder, batch: Array<{ e: Entry; n: number; logits: boolean; idx?: number }>): Promise<boolean> {
    if (this.turnDue || performance.now() - this.lastTurn >= this.streamInterval) {
      await DEFER();
      await DEFER();
      this.lastTurn = performance.now();
      this.turnDue = false;
      this.turns++;
    }
    const { tokens, pos, seq, flags } = this.sd;
    let k = 0;
    for (const b of batch) {
      tokens[k] = b.e.tokens[0]!;
      pos[k] = b.e.seq._nextTokenIndex;
      seq[k] = b.e.seq._sequenceId;
      flags[k] = b.logits ? 1 : 0;
      if (b.logits) b.idx = k;
      k++;
    }
    const t0 = performance.now();
    const r = sync.decode(k, tokens, pos, seq, flags);
    this.lastStepMs = performance.now() - t0;
    this.syncSteps++;
    if (r === 0) return true;
    // node-llama-cpp's messages for the same results.
    const err = new Error(r === 1 ? "could not find a KV slot for the batch (try reducing the size of the batch or increase the context)" : "Eval has failed");
    for (const b of batch) b.e.reject(err);
    return false;
  }

  /**
   * node-llama-cpp's dispatcher holds the context (it loops while its own sequences keep queuing):
   * these tokens go through its queue, which batches them with its sequences.
   */
  private async handOver(): Promise<void> {
    const ctx = this.context as unknown as ContextInternals;
    const entries = this.queue.splice(0);
    this.handedOver++;
    await Promise.all(
      entries.map(async (e) => {
        const s = e.seq;
        const tokens = e.tokens.splice(0);
        const logits: boolean[] = [];
        logits[tokens.length - 1] = true;
        try {
          const res = await ctx._decodeTokens(
            { sequenceId: s._sequenceId, firstTokenSequenceIndex: s._nextTokenIndex, tokens, logits, evaluationPriority: 5, tokenMeter: s._tokenMeter },
            async (batchLogitIndex) => e.sample(ctx._ctx, batchLogitIndex, 0),
          );
          s._nextTokenIndex += tokens.length;
          for (const t of tokens) s._contextTokens.push(t);
          const last = res.find(([i]) => i === s._nextTokenIndex - 1) ?? res.at(-1);
          e.resolve(last?.[1]);
        } catch (err) {
          e.reject(err);
        }
      }),
    );
  }
}

const STEPPERS = new WeakMap<LlamaContext, Stepper>();

/** The context's stepper (created on first use). */
export function stepperFor(
  context: LlamaContext,
  beforeStep?: () => void,
  busySlots?: () => number,
  syncDecoder?: () => SyncDecoder | undefined,
  syncDecode?: boolean | "auto",
  gatherMs?: number,
  streamInterval?: number,
): Stepper {
  let s = STEPPERS.get(context);
  if (!s) STEPPERS.set(context, (s = new Stepper(context, beforeStep, busySlots, syncDecoder, syncDecode, gatherMs, streamInterval)));
  return s;
}

/** The stepper of a context, if it has one (for the batch strategy's count of its sequences). */
export function existingStepper(context: LlamaContext): Stepper | undefined {
  return STEPPERS.get(context);
}
