/*
 * Preloaded into llama-server by scripts/bench-gap.ts (--llama-server): wraps llama.cpp's llama_decode
 * and records, for one-token batches, the time each call takes and the time from the end of one to the
 * start of the next (under 50 ms apart: the same generation). Written as JSON to $GAP_OUT when the
 * process exits.
 */
#define _GNU_SOURCE
#include "llama.h"
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define MAXN 200000
#define SAME_GENERATION_MS 50

typedef int32_t (*decode_t)(struct llama_context *, struct llama_batch);
static decode_t real;
static double gaps[MAXN], calls[MAXN];
static int n_gaps, n_calls;
static double last_end;

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int32_t llama_decode(struct llama_context *ctx, struct llama_batch batch) {
    if (!real) real = (decode_t)dlsym(RTLD_NEXT, "llama_decode");
    int one = batch.n_tokens == 1;
    double t0 = now_ms();
    if (one && last_end && t0 - last_end < SAME_GENERATION_MS && n_gaps < MAXN) gaps[n_gaps++] = t0 - last_end;
    int32_t r = real(ctx, batch);
    double t1 = now_ms();
    if (one) {
        if (n_calls < MAXN) calls[n_calls++] = t1 - t0;
        last_end = t1;
    } else {
        last_end = 0; /* a prompt: the next one-token call starts a new generation */
    }
    return r;
}

static void write_list(FILE *f, const char *name, const double *xs, int n) {
    fprintf(f, "\"%s\":[", name);
    for (int i = 0; i < n; i++) fprintf(f, "%s%.4f", i ? "," : "", xs[i]);
    fprintf(f, "]");
}

__attribute__((destructor)) static void dump(void) {
    const char *path = getenv("GAP_OUT");
    FILE *f = path ? fopen(path, "w") : NULL;
    if (!f) return;
    fprintf(f, "{");
    write_list(f, "gaps", gaps, n_gaps);
    fprintf(f, ",");
    write_list(f, "calls", calls, n_calls);
    fprintf(f, "}\n");
    fclose(f);
}
