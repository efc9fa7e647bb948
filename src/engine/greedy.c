/*
 * Synchronous greedy sampling for shimmy's decode loop (compiled at run time by bun:ffi's TinyCC; see
 * greedy.ts for why). No #include: the few libc functions used are declared here, so it compiles
 * without system headers.
 *
 * node-llama-cpp samples on a worker thread (an async native call per token). For greedy requests
 * the whole sampling is an argmax over the token's logits, which llama.cpp keeps in host memory after
 * the decode (greedy.ts reads them); that needs the llama_context pointer, which node-llama-cpp does
 * not expose.
 * shimmy_gr_install points node-llama-cpp addon's import slot (GOT entry) for llama_n_threads at a
 * wrapper that forwards to llama.cpp and, while armed, remembers the context it was called with; the
 * addon's synchronous `getThreads()` then tells shimmy the pointer (greedy.ts checks it before use).
 * With that pointer, shimmy_gr_decode runs a generation step's llama_decode on the calling thread and
 * shimmy_gr_sample applies a llama.cpp sampler chain there (see the comments below).
 */

typedef int (*n_threads_t)(void *ctx);
int mprotect(void *addr, unsigned long len, int prot);
int getpagesize(void);


/* previous_hook and remember_hook: hook-marker.c, put in front of this file at compile time. */

static n_threads_t real_n_threads;
static void *volatile captured;
static volatile int armed;

static int hook_n_threads(void *ctx) {
    if (armed) {
        captured = ctx;
        armed = 0;
    }
    return real_n_threads(ctx);
}

/*
 * slot: the GOT entry of llama_n_threads in the addon; real: llama.cpp's llama_n_threads (never the
 * PLT stub, so lazy binding can never write over the wrapper).
 * The slot's page is made writable first (it is read-only under full RELRO). Returns 0 on success.
 */
int shimmy_gr_install(void **slot, void *real) {
    unsigned long page = (unsigned long)getpagesize();
    unsigned long start = (unsigned long)slot & ~(page - 1);
    if (real_n_threads) return 1;
    if (mprotect((void *)start, page, 3 /* PROT_READ | PROT_WRITE */) != 0) return 2;
    real_n_threads = (n_threads_t)real;
    *slot = (void *)hook_n_threads;
    remember_hook("SHIMMY_GREEDY_HOOK", (void *)hook_n_threads);
    return 0;
}

/* The wrapper an earlier copy of this code installed in this process (0 if none). */
void *shimmy_gr_previous(void) {
    return previous_hook("SHIMMY_GREEDY_HOOK");
}

/* The next llama_n_threads call through the addon records its context. */
void shimmy_gr_arm(void) {
    captured = 0;
    armed = 1;
}

void *shimmy_gr_take(void) {
    armed = 0;
    return captured;
}

/*
 * Synchronous decode (stepper.ts's short steps): llama_decode on the calling thread, with a batch built
 * here. struct llama_batch as llama.h (b6xxx) defines it; passed by value as llama_decode takes it.
 */
typedef struct {
    int n_tokens;
    int *token;
    float *embd;
    int *pos;
    int *n_seq_id;
    int **seq_id;
    signed char *logits;
} shimmy_batch;
typedef int (*decode_t)(void *ctx, shimmy_batch batch);
int sched_getaffinity(int pid, unsigned long size, unsigned long *mask);
int sched_setaffinity(int pid, unsigned long size, const unsigned long *mask);
typedef void (*sync_t)(void *ctx);

#define SYNC_MAX 64
static int sd_nseq[SYNC_MAX];
static int *sd_seqp[SYNC_MAX];
static signed char sd_logits[SYNC_MAX];

/*
 * n tokens (at most 64): tokens[i] at pos[i] of sequence seq[i]; flags[i] nonzero where logits are wanted.
 * The calling thread's CPU affinity is put back afterwards: a pinned threadpool (threadpool.c) moves
 * the thread that computes to its CPU, and the JavaScript thread must not stay there (the processes
 * it starts would inherit one CPU).
 */
int shimmy_gr_decode(void *decode, void *sync, void *ctx, int n, int *tokens, int *pos, int *seq, unsigned char *flags) {
    shimmy_batch b;
    unsigned long saved[16];
    int have;
    int i, r;
    if (n <= 0 || n > SYNC_MAX) return -100;
    for (i = 0; i < n; i++) {
        sd_nseq[i] = 1;
        sd_seqp[i] = seq + i;
        sd_logits[i] = flags[i] ? 1 : 0;
    }
    b.n_tokens = n;
    b.token = tokens;
    b.embd = 0;
    b.pos = pos;
    b.n_seq_id = sd_nseq;
    b.seq_id = sd_seqp;
    b.logits = sd_logits;
    have = sched_getaffinity(0, sizeof saved, saved) == 0;
    r = ((decode_t)decode)(ctx, b);
    if (r == 0) ((sync_t)sync)(ctx);
    if (have) sched_setaffinity(0, sizeof saved, saved);
    return r;
}

/*
 * Synchronous sampling with a temperature (greedy.ts's SyncSampler): llama.cpp's sampler chain, built
 * as node-llama-cpp's AddonSampler builds it for the same settings, applied on the calling thread to
 * candidates filled as AddonSampler fills them (every token of the vocabulary, in id order).
 */
typedef struct { int id; float logit; float p; } shimmy_token_data;
typedef struct { shimmy_token_data *data; unsigned long size; long long selected; _Bool sorted; } shimmy_token_array;
typedef struct { _Bool no_perf; } shimmy_chain_params;
typedef void *(*chain_init_t)(shimmy_chain_params params);
typedef void (*apply_t)(void *smpl, shimmy_token_array *cur);
typedef float *(*logits_ith_t)(void *ctx, int i);

/* An empty sampler chain (llama_sampler_chain_init with timings off). */
void *shimmy_gr_chain(void *chain_init) {
    shimmy_chain_params p;
    p.no_perf = 1;
    return ((chain_init_t)chain_init)(p);
}

/* The token the chain picks from output row idx of the last decode; -1 when there is none. buf: n_vocab entries. */
int shimmy_gr_sample(void *apply, void *logits_ith, void *chain, void *ctx, int idx, int n_vocab, shimmy_token_data *buf) {
    shimmy_token_array cur;
    float *logits = ((logits_ith_t)logits_ith)(ctx, idx);
    int i;
    if (!logits) return -1;
    for (i = 0; i < n_vocab; i++) {
        buf[i].id = i;
        buf[i].logit = logits[i];
        buf[i].p = 0.0f;
    }
    cur.data = buf;
    cur.size = (unsigned long)n_vocab;
    cur.selected = -1;
    cur.sorted = 0;
    ((apply_t)apply)(chain, &cur);
    if (cur.selected < 0 || cur.selected >= (long long)cur.size) return -1;
    return cur.data[cur.selected].id;
}
