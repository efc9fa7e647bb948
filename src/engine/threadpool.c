/*
 * Persistent ggml CPU threadpools for node-llama-cpp contexts (compiled at run time by bun:ffi's TinyCC;
 * see threadpool.ts for why). No #include: the few libc functions used are declared here, so it
 * compiles without system headers.
 *
 * node-llama-cpp never attaches a threadpool to its llama_context, so every decode call makes ggml
 * create and join a fresh set of worker threads ("disposable threadpool"). llama.cpp's own tools
 * (llama-server, llama-cli, llama-bench) attach a persistent pool whose workers poll for the next graph.
 *
 * llama_context looks up `ggml_backend_cpu_set_threadpool` through the CPU backend registry's
 * get_proc_address on every graph computation, and `ggml_backend_set_n_threads` once when it is created.
 * This file replaces the registry's get_proc_address with one that hands out wrappers:
 *   - set_n_threads(backend, n >= 2): gives the backend its own pool of n threads (created on first use,
 *     replaced when n grows) and attaches it;
 *   - set_threadpool(backend, NULL): attaches that backend's pool instead of NULL.
 * A backend's pool is used only by that backend, and a llama_context never computes two graphs at once,
 * so a pool never runs two graphs at once and is never switched away from (switching pauses a pool).
 * When the backend is freed (its `free` is wrapped on first sight), its pool is freed too.
 *
 * Pinning (shimmy_tp_install's pin): a pinned pool is made with ggml's strict CPU placement over the
 * first n CPUs the process may use, so worker j (1..n-1) stays on CPU j-1. The thread that calls into
 * llama.cpp is whichever of the addon's worker threads runs the decode; ggml pins only the one that made
 * the pool, so set_threadpool moves the calling thread to the n-th CPU before every graph.
 *
 * Layout assumptions, checked before anything is changed: ggml_backend_reg is {int api_version (2);
 * iface {get_name, get_device_count, get_device, get_proc_address}; context}; ggml_backend is
 * {guid; iface {get_name, free, ...}; ...}; both CPU objects name themselves "CPU".
 */

typedef void *(*gpa_t)(void *reg, const char *name);
typedef const char *(*name_t)(void *obj);
typedef void (*set_tp_t)(void *backend, void *tp);
typedef void (*set_nt_t)(void *backend, int n);
typedef void (*free_t)(void *backend);
typedef void *(*tp_new_t)(void *params);
typedef void (*tp_free_t)(void *tp);
typedef void (*params_init_t)(void *params, int n_threads);

int pthread_mutex_init(void *mutex, void *attr);
int pthread_mutex_lock(void *mutex);
int pthread_mutex_unlock(void *mutex);
int sched_getaffinity(int pid, unsigned long size, unsigned long *mask);
int sched_setaffinity(int pid, unsigned long size, const unsigned long *mask);

#define NSLOT 64

static gpa_t real_gpa;
static set_tp_t real_set_tp;
static set_nt_t real_set_nt;
static free_t real_free;
static tp_new_t tp_new;
static tp_free_t tp_free;
static params_init_t params_init;
static unsigned poll_level;
/* Pinning (shimmy_tp_install's pin): 0 never, 1 always, -1 when a pool's threads are as many as the CPUs allowed. */
static int pin_mode;
/* The CPUs this process may run on (its affinity at install), in order; at most 512 (ggml's mask size). */
static int cpu_list[512];
static int cpu_count;
/* Per pinned pool: the CPU of the thread that calls into ggml (ggml's worker 0), or -1. */
static int slot_main_cpu[NSLOT];

/* pthread_mutex_t is at most 64 bytes on the platforms Bun supports; initialised by shimmy_tp_install. */
static long long mutex_mem[16];
/* struct ggml_threadpool_params: bool cpumask[512]; int n_threads; int prio; uint32_t poll; bool strict_cpu; bool paused. */
static long long params_mem[80];

static void *slot_backend[NSLOT];
static void *slot_pool[NSLOT];
static int slot_threads[NSLOT];
static int pools_created;
static int pools_live;
static int pools_refused;
static int pools_pinned;

static int streq(const char *a, const char *b) {
    if (!a || !b) return 0;
    while (*a && *a == *b) { a++; b++; }
    return *a == *b;
}

static int find_slot(void *backend) {
    int i;
    for (i = 0; i < NSLOT; i++) if (slot_backend[i] == backend) return i;
    return -1;
}

static void *backend_fn(void *backend, int index) {
    return ((void **)((char *)backend + sizeof(void *)))[index];
}

static void hook_free(void *backend) {
    void *pool = 0;
    int i;
    pthread_mutex_lock(mutex_mem);
    i = find_slot(backend);
    if (i >= 0) {
        pool = slot_pool[i];
        slot_backend[i] = 0;
        slot_pool[i] = 0;
        slot_threads[i] = 0;
        pools_live--;
    }
    pthread_mutex_unlock(mutex_mem);
    real_free(backend);
    if (pool) tp_free(pool);
}

static void hook_set_tp(void *backend, void *tp) {
    int i;
    int cpu = -1;
    unsigned long mask[8];
    if (!tp) {
        pthread_mutex_lock(mutex_mem);
        i = find_slot(backend);
        if (i >= 0) {
            tp = slot_pool[i];
            cpu = slot_main_cpu[i];
        }
        pthread_mutex_unlock(mutex_mem);
    }
    /* A pinned pool: the thread about to compute (any of the addon's worker threads) goes to worker 0's CPU. */
    if (cpu >= 0) {
        for (i = 0; i < 8; i++) mask[i] = 0;
        mask[cpu / 64] = 1ul << (cpu % 64);
        sched_setaffinity(0, sizeof(mask), mask);
    }
    real_set_tp(backend, tp);
}

static void hook_set_nt(void *backend, int n) {
    int pin, k;
    void *pool;
    void *old = 0;
    void **free_slot;
    int i;
    real_set_nt(backend, n);
    if (n < 2) return;
    pthread_mutex_lock(mutex_mem);
    i = find_slot(backend);
    if (i >= 0 && slot_threads[i] >= n) {
        pthread_mutex_unlock(mutex_mem);
        return;
    }
    if (i < 0) {
        /* First sight of this backend: it must be a CPU backend whose free we can wrap. */
        free_slot = (void **)((char *)backend + 2 * sizeof(void *));
        if (!real_free && streq(((name_t)backend_fn(backend, 0))(backend), "CPU") && *free_slot != (void *)hook_free) real_free = (free_t)*free_slot;
        if (!streq(((name_t)backend_fn(backend, 0))(backend), "CPU") || *free_slot != (void *)real_free) {
            pools_refused++;
            pthread_mutex_unlock(mutex_mem);
            return;
        }
        i = find_slot(0);
        if (i < 0) {
            pools_refused++;
            pthread_mutex_unlock(mutex_mem);
            return;
        }
    }
    params_init(params_mem, n);
    ((unsigned *)((char *)params_mem + 512 + 8))[0] = poll_level;
    pin = pin_mode > 0 ? n <= cpu_count : pin_mode < 0 ? n == cpu_count : 0;
    if (pin) {
        /* ggml's strict placement: workers 1..n-1 on the first n-1 CPUs, worker 0 (the caller) on the n-th. */
        for (k = 0; k < n; k++) ((char *)params_mem)[cpu_list[k]] = 1;
        ((char *)params_mem)[512 + 12] = 1;
    }
    pool = tp_new(params_mem);
    if (!pool) {
        pools_refused++;
        pthread_mutex_unlock(mutex_mem);
        return;
    }
    if (slot_backend[i] == backend) old = slot_pool[i];
    else {
        slot_backend[i] = backend;
        *(void **)((char *)backend + 2 * sizeof(void *)) = (void *)hook_free;
        pools_live++;
    }
    slot_pool[i] = pool;
    slot_threads[i] = n;
    slot_main_cpu[i] = pin ? cpu_list[n - 1] : -1;
    if (pin) pools_pinned++;
    pools_created++;
    pthread_mutex_unlock(mutex_mem);
    /* Attaching the new pool pauses the old one, which only this backend used; then it can go. */
    real_set_tp(backend, pool);
    if (old) tp_free(old);
}

static void *hook_gpa(void *reg, const char *name) {
    if (streq(name, "ggml_backend_cpu_set_threadpool")) return (void *)hook_set_tp;
    if (streq(name, "ggml_backend_set_n_threads")) return (void *)hook_set_nt;
    return real_gpa(reg, name);
}

/*
 * reg: the CPU backend registry (ggml_backend_reg_by_name("CPU")); init: ggml_threadpool_params_init;
 * poll: ggml's polling level 0..100 (llama.cpp's default is 50); pin: 1 pins every pool of at most as many
 * threads as allowed CPUs, -1 only pools of exactly that many, 0 none. Returns 0 when installed, or a reason
 * code. The CPU backend's own free is learned from the first CPU backend seen (all share it).
 */
int shimmy_tp_install(void *reg, void *init, int poll, int pin) {
    unsigned long mask[8];
    int c;
    int *api_version = (int *)reg;
    void **iface = (void **)((char *)reg + sizeof(void *));
    gpa_t gpa;
    if (real_gpa) return 1;
    if (!reg || !init) return 2;
    if (*api_version != 2) return 3;
    if (!streq(((name_t)iface[0])(reg), "CPU")) return 4;
    gpa = (gpa_t)iface[3];
    real_set_tp = (set_tp_t)gpa(reg, "ggml_backend_cpu_set_threadpool");
    real_set_nt = (set_nt_t)gpa(reg, "ggml_backend_set_n_threads");
    tp_new = (tp_new_t)gpa(reg, "ggml_threadpool_new");
    tp_free = (tp_free_t)gpa(reg, "ggml_threadpool_free");
    if (!real_set_tp || !real_set_nt || !tp_new || !tp_free) return 5;
    params_init = (params_init_t)init;
    params_init(params_mem, 2);
    if (((int *)((char *)params_mem + 512))[0] != 2 || ((unsigned *)((char *)params_mem + 512 + 8))[0] != 50) return 6;
    poll_level = poll < 0 ? 0 : poll > 100 ? 100 : (unsigned)poll;
    cpu_count = 0;
    if (pin && sched_getaffinity(0, sizeof(mask), mask) == 0)
        for (c = 0; c < 512; c++) if (mask[c / 64] >> (c % 64) & 1) cpu_list[cpu_count++] = c;
    pin_mode = cpu_count ? pin : 0;
    for (c = 0; c < NSLOT; c++) slot_main_cpu[c] = -1;
    pthread_mutex_init(mutex_mem, 0);
    real_gpa = gpa;
    iface[3] = (void *)hook_gpa;
    return 0;
}

int shimmy_tp_created(void) { return pools_created; }
int shimmy_tp_live(void) { return pools_live; }
int shimmy_tp_refused(void) { return pools_refused; }
int shimmy_tp_pinned(void) { return pools_pinned; }
