/*
 * Transparent huge pages for llama.cpp's big buffers (compiled at run time by bun:ffi's TinyCC; see
 * hugepages.ts for why). No #include: the libc functions used are declared here, so it compiles
 * without system headers.
 *
 * shimmy_hp_install points an import slot (GOT entry) of ggml_aligned_malloc, the allocator of
 * llama.cpp's CPU buffers (weights read into memory, KV cache, compute buffers), at a wrapper that
 * allocates as before and marks the 2 MiB-aligned interior of a large block MADV_HUGEPAGE before
 * anything touches it, so its pages are faulted in as huge pages where the system's THP setting is
 * `madvise` or `always`.
 */

int madvise(void *addr, unsigned long len, int advice);
int mprotect(void *addr, unsigned long len, int prot);
int getpagesize(void);

#define MADV_HUGEPAGE 14
#define HUGE (2ul << 20)
#define MIN_BYTES (16ul << 20)

typedef void *(*alloc_t)(unsigned long size);


/* previous_hook and remember_hook: hook-marker.c, put in front of this file at compile time. */

static alloc_t real_alloc;
/*
 * The wrapper's counters, one set per process: each copy of this code (hook-marker.c) installs its
 * own wrapper, but they all count in the set the first copy allocated (never freed), so a pause or a
 * weights load started through one copy holds whichever copy's wrapper sits in the slots.
 */
struct hp_state {
    volatile long marked_bytes;
    volatile int marked_blocks;
    /* While above 0, blocks are allocated without the advice (buffers of memory-mapped models). */
    volatile int paused;
    /* While above 0, big blocks start 32 bytes past a 64-byte boundary (weights read into memory; see weights_block). */
    volatile int weights;
    volatile int shifted_blocks;
};
static struct hp_state *st;

void *calloc(unsigned long n, unsigned long size);

static int share_state(void) {
    if (st) return 1;
    st = (struct hp_state *)previous_hook("SHIMMY_HUGEPAGES_STATE");
    if (!st) {
        st = (struct hp_state *)calloc(1, sizeof *st);
        if (!st) return 0;
        remember_hook("SHIMMY_HUGEPAGES_STATE", (void *)st);
    }
    return 1;
}

/*
 * A block for weights read into memory whose usable start is 32 bytes past a 64-byte boundary:
 * llama.cpp's 4-token decode steps on Q8_0 weights ran 10-15% faster here with the weights there than
 * 64-byte aligned (alignWeightsFor in hugepages.ts).
 *
 * ggml frees a CPU buffer with free() on the pointer this returns, and starts its tensors at that
 * pointer rounded up to 32 bytes (ggml_backend_cpu_buffer_get_base, TENSOR_ALIGNMENT). So the block
 * comes from the C library's malloc, 32 bytes bigger than asked: glibc gives a big (mmapped) block 16
 * bytes past a page boundary, which ggml rounds up to 32. A block that would not start 32 bytes past a
 * 64-byte boundary (one under glibc's mmap threshold, at most 32 MiB, may come from the heap, anywhere)
 * is given back, and ggml's own allocator is used as usual.
 */
typedef void *(*malloc_t)(unsigned long size);
typedef void (*free_t)(void *p);
/* The C library's malloc and free, as ggml's libraries call them (TinyCC's own may differ). */
static malloc_t libc_malloc;
static free_t libc_free;

static void *weights_block(unsigned long size) {
    if (!libc_malloc || !libc_free) return 0;
    void *p = libc_malloc(size + 32);
    if (!p) return 0;
    unsigned long base = ((unsigned long)p + 31) & ~31ul;
    if ((base & 63) == 32) {
        st->shifted_blocks++;
        return p;
    }
    libc_free(p);
    return 0;
}

static void *hook_aligned_malloc(unsigned long size) {
    void *p = size >= MIN_BYTES && st->weights > 0 ? weights_block(size) : 0;
    if (!p) p = real_alloc(size);
    if (p && size >= MIN_BYTES && st->paused <= 0) {
        unsigned long start = ((unsigned long)p + HUGE - 1) & ~(HUGE - 1);
        unsigned long end = ((unsigned long)p + size) & ~(HUGE - 1);
        if (end > start && madvise((void *)start, end - start, MADV_HUGEPAGE) == 0) {
            st->marked_bytes += (long)(end - start);
            st->marked_blocks++;
        }
    }
    return p;
}

/*
 * slot: an import slot of ggml_aligned_malloc in a loaded ggml library; real: ggml's own function (not
 * the PLT stub, so lazy binding can never write over the wrapper). The slot's page is made writable
 * first (read-only under full RELRO). Returns 0 on success.
 */
int shimmy_hp_install(void **slot, void *real, void *malloc, void *free) {
    unsigned long page = (unsigned long)getpagesize();
    unsigned long start = (unsigned long)slot & ~(page - 1);
    if (real_alloc && real_alloc != (alloc_t)real) return 1;
    if (!share_state()) return 3;
    if (mprotect((void *)start, page, 3 /* PROT_READ | PROT_WRITE */) != 0) return 2;
    real_alloc = (alloc_t)real;
    libc_malloc = (malloc_t)malloc;
    libc_free = (free_t)free;
    *slot = (void *)hook_aligned_malloc;
    remember_hook("SHIMMY_HUGEPAGES_HOOK", (void *)hook_aligned_malloc);
    return 0;
}

/* The wrapper an earlier copy of this code installed in this process (0 if none). */
void *shimmy_hp_previous(void) {
    return previous_hook("SHIMMY_HUGEPAGES_HOOK");
}

/* Pauses (+1) or resumes (-1) the advice; returns the new pause count. */
int shimmy_hp_pause(int delta) {
    st->paused += delta;
    return st->paused;
}
/* Starts (+1) or ends (-1) the allocation of weights (see weights_block); returns the new count. */
int shimmy_hp_weights(int delta) {
    st->weights += delta;
    return st->weights;
}

/* Blocks allocated by weights_block so far. */
int shimmy_hp_shifted_blocks(void) {
    return st->shifted_blocks;
}

/* Bytes and blocks marked so far (for the debug log and tests). */
long shimmy_hp_marked_bytes(void) {
    return st->marked_bytes;
}

int shimmy_hp_marked_blocks(void) {
    return st->marked_blocks;
}
