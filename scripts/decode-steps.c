/*
 * llama.cpp alone, no JavaScript: times every decode call of greedy generations, with the model file
 * memory-mapped or read into memory. Used to measure what the load mode is worth on a machine
 * (docs/PERFORMANCE.md: "Model files read into memory").
 *
 * Build it against the llama.cpp that `bun run bench:compare` builds (~/.cache/shimmy-bench/llama.cpp):
 *   L=~/.cache/shimmy-bench/llama.cpp
 *   gcc -O2 -o /tmp/decode-steps scripts/decode-steps.c -I$L/include -I$L/ggml/include \
 *       -L$L/build/bin -lllama -Wl,-rpath,$L/build/bin
 *   /tmp/decode-steps MODEL.gguf mmap 4 2>/dev/null; /tmp/decode-steps MODEL.gguf read 4 2>/dev/null
 *
 * Each run: a 70-token prompt, then 64 greedy tokens (argmax) on 2 threads, context 2048. Per run it
 * prints decode tok/s, the median decode call, and "stalls": the time decode calls spent beyond
 * 1.3 x that median. Then the process's page faults and context switches over all runs.
 */
#include "llama.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: decode-steps MODEL.gguf mmap|read RUNS\n");
        return 2;
    }
    enum { N = 64 };
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.load_mode = strcmp(argv[2], "read") == 0 ? LLAMA_LOAD_MODE_NONE : LLAMA_LOAD_MODE_MMAP;
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) return 1;
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    int n_vocab = llama_vocab_n_tokens(vocab);
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 2048;
    cp.n_threads = 2;
    cp.n_threads_batch = 2;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    int runs = atoi(argv[3]);
    struct rusage r0, r1;
    getrusage(RUSAGE_SELF, &r0);
    for (int r = 0; r < runs; r++) {
        llama_memory_clear(llama_get_memory(ctx), 1);
        llama_token prompt[70];
        for (int i = 0; i < 70; i++) prompt[i] = (i * 37 + r) % n_vocab;
        llama_decode(ctx, llama_batch_get_one(prompt, 70));
        double step[N], sorted[N], total = 0;
        for (int i = 0; i < N; i++) {
            float *logits = llama_get_logits_ith(ctx, -1);
            llama_token t = 0;
            for (int k = 1; k < n_vocab; k++)
                if (logits[k] > logits[t]) t = k;
            double t0 = now_ms();
            llama_decode(ctx, llama_batch_get_one(&t, 1));
            step[i] = now_ms() - t0;
            total += step[i];
        }
        memcpy(sorted, step, sizeof step);
        qsort(sorted, N, sizeof(double), cmp);
        double median = sorted[N / 2], stalls = 0;
        for (int i = 0; i < N; i++)
            if (step[i] > 1.3 * median) stalls += step[i] - 1.3 * median;
        printf("%s: %.1f tok/s, median decode %.2f ms, stalls %.0f ms\n", argv[2], N * 1000.0 / total, median, stalls);
    }
    getrusage(RUSAGE_SELF, &r1);
    printf("%s: minor faults %ld, major faults %ld, involuntary context switches %ld\n", argv[2], r1.ru_minflt - r0.ru_minflt, r1.ru_majflt - r0.ru_majflt, r1.ru_nivcsw - r0.ru_nivcsw);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
