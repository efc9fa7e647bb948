/*
 * Shared by greedy.c and hugepages.c (native-source.ts puts it in front of them): the wrapper that a
 * previous copy of that code installed in this process, if any. shimmy's modules can be evaluated
 * more than once in a process (bun test --parallel gives each test file fresh globals), and the
 * process environment is the one place all copies share, so each install records its wrapper's
 * address there and a later copy may take its slots over.
 */

char *getenv(const char *name);
int setenv(const char *name, const char *value, int overwrite);
int snprintf(char *buf, unsigned long size, const char *fmt, ...);
unsigned long strtoul(const char *s, char **end, int base);

static void *previous_hook(const char *var) {
    const char *v = getenv(var);
    return v ? (void *)strtoul(v, 0, 16) : 0;
}

static void remember_hook(const char *var, void *hook) {
    char buf[32];
    snprintf(buf, sizeof buf, "%lx", (unsigned long)hook);
    setenv(var, buf, 1);
}
