/* pool_os.h — the operating-system threads of this process (Linux /proc)
 * for suite pool: counts, settling, the workers a run started and their
 * CPU time (the rig: pool_rig.h). */
#ifndef REGOPT_POOL_OS_H
#define REGOPT_POOL_OS_H

#include "pool_rig.h"

/* ---- operating-system threads of this process (Linux /proc) --------------- */

static inline int pl_os_threads(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    int n = -1;
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "Threads: %d", &n) == 1)
            break;
    fclose(f);
    return n;
}

static inline void *pl_nothing(void *arg) { return arg; }

/* The baseline count, taken after one thread has come and gone (some
 * runtimes, ThreadSanitizer's, start a thread of their own at the first
 * pthread_create), as the least of a few reads over about 10 ms: threads
 * joined just before may still be counted for a moment, never fewer than
 * are alive. -1 without /proc. */
static inline int pl_os_base(void)
{
    struct timespec ms = {0, 1000000L};
    pthread_t th;
    int i, n, least;
    if (pthread_create(&th, NULL, pl_nothing, NULL) == 0)
        pthread_join(th, NULL);
    least = pl_os_threads();
    for (i = 0; i < 10 && least >= 0; i++) {
        nanosleep(&ms, NULL);
        n = pl_os_threads();
        least = n < least ? n : least;
    }
    return least;
}

/* The count once it equals want, or what it was after about 5 s: a joined
 * thread may leave the kernel's count shortly after pthread_join returns.
 * Without /proc, want (nothing to check). */
static inline int pl_os_threads_settle(int want)
{
    struct timespec ms = {0, 1000000L};
    int i, n = pl_os_threads();
    if (n < 0)
        return want;
    for (i = 0; i < 5000 && n != want; i++) {
        nanosleep(&ms, NULL);
        n = pl_os_threads();
    }
    return n;
}

/* The kernel thread ids of this process (/proc/self/task); 0 without. */
static inline size_t pl_tasks(long *tids, size_t cap)
{
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    size_t n = 0;
    if (!d)
        return 0;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.' && n < cap)
            tids[n++] = strtol(e->d_name, NULL, 10);
    closedir(d);
    return n;
}

/* Nanoseconds thread `tid` has run (/proc/.../schedstat), -1 if unknown. */
static inline long long pl_runtime(long tid)
{
    char path[64];
    long long ns = -1;
    FILE *f;
    snprintf(path, sizeof path, "/proc/self/task/%ld/schedstat", tid);
    f = fopen(path, "r");
    if (!f)
        return -1;
    if (fscanf(f, "%lld", &ns) != 1)
        ns = -1;
    fclose(f);
    return ns;
}

/* The threads that setting trainer.threads to n started: the tasks that
 * were not there before. Returns how many (0 without /proc). */
static inline size_t pl_new_workers(pl_run *r, int n, long *workers, size_t cap)
{
    long before[64], after[64];
    size_t nb, na, i, j, k = 0;
    (void)pl_os_base(); /* a runtime's own thread, if any, starts now */
    nb = pl_tasks(before, 64);
    pl_threads(r, n);
    na = pl_tasks(after, 64);
    for (i = 0; i < na; i++) {
        for (j = 0; j < nb && before[j] != after[i]; j++)
            ;
        if (j == nb && k < cap)
            workers[k++] = after[i];
    }
    return nb ? k : 0;
}

static inline long long pl_workers_runtime(const long *w, size_t n)
{
    long long sum = 0;
    size_t i;
    for (i = 0; i < n; i++) {
        long long ns = pl_runtime(w[i]);
        if (ns < 0)
            return -1;
        sum += ns;
    }
    return sum;
}

#endif
