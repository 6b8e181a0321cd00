/* bench.c — libregopt's step benchmark. Trains an MLP on synthetic data with
 * every method and reports, per method, milliseconds per step, how the step
 * splits between the host's callbacks and the library, allocations per step
 * and the GFLOP/s achieved against the SGEMM rate measured between the
 * runs; before that, the optimizer's throughput (a library step around a
 * host that does nothing) against the copy/triad bandwidth. Timings on a
 * shared machine are noisy, so every figure is a median over several runs
 * and the targets are ratios of numbers measured side by side.
 *
 * Output: human-readable lines start with '#'; machine-readable lines are
 *   BENCH kind=<env|sgemm|bandwidth|optimizer|sgemm_interleaved|step|
 *              rdrop_doubled_speedup|flatness|memory> key=value ...
 *   RATIO kind=<traffic|cost> key=value ... (traffic.c: the library's time
 *              against its traffic bound, a step against a plain step)
 * Run ./bench/bench --help for the options. */
#define _POSIX_C_SOURCE 200112L
#include "host_mlp.h"
#include "bench.h"
#include "../examples/cli.h" /* parse_long: one strict parser for all programs */

#include <cblas.h>
#include <regopt.h>

#include <pthread.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- methods ----------------------------------------------------------- */

const char *const method_name[M_COUNT] = {"plain", "sam", "asam", "rdrop_twocall",
                                         "rdrop_doubled", "smart", "smart_sam", "msam",
                                         "looksam", "fsam", "vasso", "wsam", "mesa",
                                         "ema", "freelb", "vat", "mesa_swap"};

/* ---- one benchmarked training setup ------------------------------------ */

typedef struct setup {
    int method;
    host_mlp host;
    counter count;
    regopt_model *model;
    regopt_optimizer *opt;
    regopt_trainer *trainer;
    regopt_backend backend; /* --backend: the CPU backend (regopt_backend_cpu_create) */
    int has_backend;
    regopt_regularizer *regs[MAX_REGS]; /* the method's, freed after the trainer */
    int n_regs;
    long first_allocs;      /* allocations made by the first step */
    double *step_ms;        /* per run: median step time */
    double *cb_share;       /* per run: callback time / step time (the library's
                               share is the rest) */
    double *lib_ms;         /* per run: mean (step - callbacks) */
    double flops;           /* per step, counted by the host */
    long timed_allocs;      /* allocations in all timed steps */
    long timed_steps;
} setup;

typedef struct config {
    const size_t *widths;
    size_t layers, batch;
    const char *size_name;
    long runs, steps, warmup;
    int ref_n;              /* the reference SGEMM: ref_n^3, before every run */
    int smoke;              /* also check the doubled host against two calls */
    double sgemm_gflops;    /* its median over the runs */
    double triad_gbs;       /* triad over buffers of the model's size, median */
} config;

/* --lib-threads: REGOPT_TRAINER_THREADS of every trainer benchmarked. */
long lib_threads = 1;
/* --backend: every model's parameter memory behind the CPU backend. */
static int use_backend;

static int setup_create(setup *s, int method, const config *c)
{
    regopt_allocator a;
    regopt_status st;
    const char *why = NULL;
    memset(s, 0, sizeof *s);
    s->method = method;
    a.size = sizeof a;
    a.alloc = count_alloc;
    a.free = count_free;
    a.user = &s->count;
    if (host_mlp_init(&s->host, c->widths, c->layers, c->batch, 0.1f, 42) != 0) {
        fprintf(stderr, "bench: out of memory for the host network\n");
        return -1;
    }
    s->host.swap_teacher = method == M_MESA_SWAP;
    s->model = regopt_model_create(&a, &st);
    if (s->model && use_backend) {
        st = regopt_backend_cpu_create(&s->backend);
        s->has_backend = st == REGOPT_OK;
        if (st == REGOPT_OK)
            st = regopt_model_set_backend(s->model, &s->backend);
    }
    if (s->model && st == REGOPT_OK)
        st = host_mlp_register(&s->host, s->model);
    if (st == REGOPT_OK)
        s->opt = regopt_optimizer_create(REGOPT_ADAMW, &a, &st);
    if (st == REGOPT_OK) /* the peer: torch.optim.AdamW(lr=1e-4), weight decay 1e-2 */
        st = regopt_optimizer_set_double(s->opt, REGOPT_OPT_LR, 1e-4);
    if (st == REGOPT_OK)
        s->trainer = regopt_trainer_create(s->model, s->opt, &st);
    if (st == REGOPT_OK)
        st = regopt_trainer_set_int(s->trainer, REGOPT_TRAINER_THREADS, lib_threads);
    if (st == REGOPT_OK)
        st = configure(s->trainer, method, &a, s->regs, &s->n_regs, &why);
    if (st != REGOPT_OK) {
        if (!why)
            why = s->trainer ? regopt_trainer_message(s->trainer) : regopt_last_error_message();
        fprintf(stderr, "bench: setting up %s: %s %s\n", method_name[method],
                regopt_status_string(st), why);
        return -1;
    }
    s->step_ms = calloc((size_t)c->runs, sizeof(double));
    s->cb_share = calloc((size_t)c->runs, sizeof(double));
    s->lib_ms = calloc((size_t)c->runs, sizeof(double));
    return s->step_ms && s->cb_share && s->lib_ms ? 0 : -1;
}

static void setup_free(setup *s)
{
    int i;
    regopt_trainer_free(s->trainer); /* detaches the regularizers: free them after it */
    for (i = 0; i < s->n_regs; i++)
        regopt_regularizer_free(s->regs[i]);
    regopt_optimizer_free(s->opt);
    regopt_model_free(s->model);
    if (s->has_backend)
        regopt_backend_cpu_free(&s->backend);
    host_mlp_free(&s->host);
    free(s->step_ms);
    free(s->cb_share);
    free(s->lib_ms);
}

static int one_step(setup *s, const regopt_batch *b)
{
    regopt_status st = regopt_trainer_step(s->trainer, b, 1);
    if (st != REGOPT_OK) {
        fprintf(stderr, "bench: %s step failed: %s %s\n", method_name[s->method],
                regopt_status_string(st), regopt_trainer_message(s->trainer));
        return -1;
    }
    return 0;
}

/* The first step may grow scratch buffers; count what it allocates, then
 * warm caches and BLAS threads up. */
static int setup_warm(setup *s, const regopt_batch *b, long warmup)
{
    long before = s->count.allocs, i;
    if (one_step(s, b) != 0)
        return -1;
    s->first_allocs = s->count.allocs - before;
    for (i = 1; i < warmup; i++)
        if (one_step(s, b) != 0)
            return -1;
    return 0;
}

/* The median over windows of `period` consecutive steps of their mean: a
 * method whose steps differ by period (LookSAM's one SAM step in k) costs
 * its mean over a whole period; period 1 is the median step. */
static double window_median(double *ms, size_t n, size_t period)
{
    size_t w, j, windows = n / period;
    if (windows == 0) { /* fewer steps than a period: their mean */
        windows = 1;
        period = n;
    }
    for (w = 0; w < windows; w++) {
        double sum = 0.0;
        for (j = 0; j < period; j++)
            sum += ms[w * period + j];
        ms[w] = sum / (double)period;
    }
    return median(ms, windows);
}

static int setup_run(setup *s, const regopt_batch *b, long run, long steps, double *scratch)
{
    double sum_step = 0.0, sum_cb = 0.0, flops0 = s->host.flops;
    long allocs0 = s->count.allocs, i;
    for (i = 0; i < steps; i++) {
        double cb0 = s->host.cb_seconds, t0 = host_now(), dt;
        if (one_step(s, b) != 0)
            return -1;
        dt = host_now() - t0;
        scratch[i] = dt * 1e3;
        sum_step += dt;
        sum_cb += s->host.cb_seconds - cb0;
    }
    s->step_ms[run] = window_median(scratch, (size_t)steps, s->method == M_LOOKSAM ? 5 : 1);
    s->cb_share[run] = sum_cb / sum_step;
    s->lib_ms[run] = (sum_step - sum_cb) * 1e3 / (double)steps;
    s->flops = (s->host.flops - flops0) / (double)steps;
    s->timed_allocs += s->count.allocs - allocs0;
    s->timed_steps += steps;
    return 0;
}

static void setup_report(setup *s, const config *c, double *rdrop2_ms, double *step_ms,
                         double *lib_ms)
{
    long r = c->runs;
    double *tmp = malloc((size_t)r * sizeof *tmp);
    double ms, lo, hi, share, lib, gf;
    if (!tmp)
        return;
    lo = min_of(s->step_ms, (size_t)r);
    hi = max_of(s->step_ms, (size_t)r);
    memcpy(tmp, s->step_ms, (size_t)r * sizeof *tmp);
    ms = median(tmp, (size_t)r);
    memcpy(tmp, s->cb_share, (size_t)r * sizeof *tmp);
    share = median(tmp, (size_t)r);
    memcpy(tmp, s->lib_ms, (size_t)r * sizeof *tmp);
    lib = median(tmp, (size_t)r);
    gf = s->flops / (ms * 1e-3) * 1e-9;
    printf("# %-7s %-14s %9.3f ms (%.3f .. %.3f)  host %5.1f %%  library %5.1f %% (%.3f ms)"
           "  allocs/step %.2f (first %ld)  %6.1f GFLOP/s = %.2f x sgemm\n",
           c->size_name, method_name[s->method], ms, lo, hi, 100.0 * share,
           100.0 * (1.0 - share), lib, (double)s->timed_allocs / (double)s->timed_steps,
           s->first_allocs, gf, gf / c->sgemm_gflops);
    printf("BENCH kind=step size=%s method=%s batch=%zu runs=%ld steps=%ld ms_median=%.4f "
           "ms_min=%.4f ms_max=%.4f callback_share=%.4f library_share=%.4f library_ms=%.4f "
           "allocs_per_step=%.4f first_step_allocs=%ld gflop_per_step=%.4f gflops=%.3f "
           "gflops_ratio_sgemm=%.4f\n",
           c->size_name, method_name[s->method], c->batch, r, c->steps, ms, lo, hi, share,
           1.0 - share, lib, (double)s->timed_allocs / (double)s->timed_steps, s->first_allocs,
           s->flops * 1e-9, gf, gf / c->sgemm_gflops);
    *step_ms = ms;
    *lib_ms = lib;
    if (s->method == M_RDROP2)
        *rdrop2_ms = ms;
    if (s->method == M_RDROP && *rdrop2_ms > 0.0)
        printf("BENCH kind=rdrop_doubled_speedup size=%s value=%.4f\n", c->size_name,
               *rdrop2_ms / ms);
    free(tmp);
}

/* All methods of one model size, interleaved run by run so that a burst
 * of load from elsewhere hits every method alike. */
/* The host's doubled pass (first layer shared by both halves) and its two
 * separate passes train the same network: after the same steps, weights
 * agree to rounding (the sums run in different orders). */
static int same_training(const setup *s, int n, int method_a, int method_b)
{
    const setup *a = NULL, *b = NULL;
    double worst = 0.0;
    size_t l, j;
    int i;
    for (i = 0; i < n; i++) {
        if (s[i].method == method_a)
            a = &s[i];
        if (s[i].method == method_b)
            b = &s[i];
    }
    if (!a || !b)
        return 0;
    for (l = 0; l < a->host.layers; l++)
        for (j = 0; j < a->host.size[l] * a->host.size[l + 1]; j++) {
            double x = a->host.w[l][j], y = b->host.w[l][j];
            double e = fabs(x - y) / (fabs(x) + fabs(y) + 1e-3);
            worst = e > worst ? e : worst;
        }
    printf("# %s vs %s: largest relative weight difference %.2e\n", method_name[method_a],
           method_name[method_b], worst);
    if (!(worst < 1e-4)) {
        fprintf(stderr, "bench: %s and %s trained different networks\n", method_name[method_a],
                method_name[method_b]);
        return -1;
    }
    return 0;
}

/* regopt_trainer_flatness on the first method's trained network, one
 * measure at a time with the request's defaults (smoke: a few passes): its
 * time and passes. The first call allocates the probe's scratch; the timed
 * second one must not allocate. */
static int bench_flatness(setup *s, const regopt_batch *b, const config *c)
{
    static const uint32_t bits[4] = {REGOPT_FLAT_WORST_CASE, REGOPT_FLAT_AVERAGE_CASE,
                                     REGOPT_FLAT_EIGENVALUE, REGOPT_FLAT_TRACE};
    static const char *names[4] = {"worst_case", "average_case", "eigenvalue", "trace"};
    int i;
    for (i = 0; i < 4; i++) {
        regopt_flatness_request rq;
        regopt_flatness res;
        double t0 = 0.0, ms = 0.0;
        long allocs0 = 0;
        regopt_status st;
        regopt_flatness_request_init(&rq);
        rq.measures = bits[i];
        if (c->smoke) {
            rq.worst_iterations = 3;
            rq.average_samples = rq.eigen_iterations = rq.trace_samples = 2;
        }
        res.size = sizeof res;
        st = regopt_trainer_flatness(s->trainer, b, 1, &rq, &res);
        if (st == REGOPT_OK) {
            allocs0 = s->count.allocs;
            t0 = host_now();
            st = regopt_trainer_flatness(s->trainer, b, 1, &rq, &res);
            ms = (host_now() - t0) * 1e3;
        }
        if (st != REGOPT_OK || s->count.allocs != allocs0) {
            fprintf(stderr, "bench: flatness %s: %s %s\n", names[i], regopt_status_string(st),
                    st != REGOPT_OK ? regopt_trainer_message(s->trainer)
                                    : "(a second probe allocated)");
            return -1;
        }
        printf("# flatness %s (%s, %s): %.2f ms for %llu forwards + %llu backwards\n",
               names[i], c->size_name, method_name[s->method], ms,
               (unsigned long long)res.forward_calls, (unsigned long long)res.backward_calls);
        printf("BENCH kind=flatness size=%s method=%s measure=%s ms=%.3f forwards=%llu "
               "backwards=%llu ms_per_pass=%.4f\n", c->size_name, method_name[s->method],
               names[i], ms, (unsigned long long)res.forward_calls,
               (unsigned long long)res.backward_calls,
               ms / (double)(res.forward_calls + res.backward_calls));
    }
    return 0;
}

/* The traffic, memory and cost lines of every method of one size. */
static void report_lines(const setup *s, int n, const config *c, const double *ms,
                         const double *lib)
{
    size_t params = host_mlp_params(&s[0].host), inputs = c->batch * c->widths[0];
    double plain = 0.0;
    int i;
    for (i = 0; i < n; i++) {
        traffic_report(c->size_name, s[i].method, params, inputs, lib[i], c->triad_gbs);
        if (s[i].method == M_PLAIN)
            plain = ms[i];
    }
    for (i = 0; i < n; i++)
        memory_report(c->size_name, s[i].method, params, s[i].count.live);
    for (i = 0; plain > 0.0 && i < n; i++)
        cost_report(c->size_name, s[i].method, ms[i], plain);
}

static int bench_size(const config *cfg, const int *methods, int n_methods,
                      long *allocs_after)
{
    config cc = *cfg, *c = &cc;
    double *sg = calloc((size_t)cfg->runs, sizeof *sg);
    double *tri = calloc((size_t)cfg->runs, sizeof *tri);
    double *ms = calloc((size_t)n_methods, sizeof *ms), *lib = calloc((size_t)n_methods,
                                                                        sizeof *lib);
    setup *s = calloc((size_t)n_methods, sizeof *s);
    double *scratch = malloc((size_t)c->steps * sizeof *scratch), rdrop2_ms = 0.0;
    float *x = malloc(c->batch * c->widths[0] * sizeof *x);
    int32_t *y = malloc(c->batch * sizeof *y);
    float *u = malloc(c->batch * sizeof *u);
    regopt_batch b;
    int i, rc = -1, made = 0;
    long r;
    size_t k = c->widths[c->layers], j;
    if (!sg || !tri || !ms || !lib || !s || !scratch || !x || !y || !u)
        goto out;
    /* the peer's data: x ~ N(0, 1), uniformly random labels, one fixed batch */
    if (regopt_random_normal(7, 0, x, c->batch * c->widths[0]) != REGOPT_OK ||
        regopt_random_uniform(8, 0, u, c->batch) != REGOPT_OK)
        goto out;
    for (j = 0; j < c->batch; j++) {
        y[j] = (int32_t)(u[j] * (float)k);
        if (y[j] >= (int32_t)k)
            y[j] = (int32_t)k - 1;
    }
    regopt_batch_init(&b);
    b.data = x;
    b.rows = c->batch;
    b.labels = y;
    for (i = 0; i < n_methods; i++, made++)
        if (setup_create(&s[i], methods[i], c) != 0 || setup_warm(&s[i], &b, c->warmup) != 0)
            goto out;
    for (r = 0; r < c->runs; r++) {
        /* the GEMM reference is measured between the runs too, so that the
           ratios compare numbers taken under the same load */
        double copy_gbs;
        sg[r] = sgemm_rate(c->ref_n, c->ref_n, c->ref_n, 3);
        /* the traffic bound's bandwidth: triad over three buffers of the
           model's size, which sit where the step's buffers sit (a cache or
           memory) */
        if (bandwidth(host_mlp_params(&s[0].host) / 16 * 16 + 16, 5, (int)lib_threads,
                      &copy_gbs, &tri[r]) != 0)
            goto out;
        for (i = 0; i < n_methods; i++)
            if (setup_run(&s[i], &b, r, c->steps, scratch) != 0)
                goto out;
    }
    c->sgemm_gflops = median(sg, (size_t)c->runs);
    printf("# sgemm %d^3 between the runs: %.1f GFLOP/s (the reference below)\n", c->ref_n,
           c->sgemm_gflops);
    printf("BENCH kind=sgemm_interleaved size=%s m=%d n=%d k=%d gflops=%.3f\n", c->size_name,
           c->ref_n, c->ref_n, c->ref_n, c->sgemm_gflops);
    c->triad_gbs = median(tri, (size_t)c->runs);
    printf("# triad over %zu-element buffers between the runs: %.1f GB/s\n",
           host_mlp_params(&s[0].host), c->triad_gbs);
    for (i = 0; i < n_methods; i++) {
        setup_report(&s[i], c, &rdrop2_ms, &ms[i], &lib[i]);
        *allocs_after += s[i].timed_allocs;
    }
    report_lines(s, n_methods, c, ms, lib);
    if (c->smoke && same_training(s, n_methods, M_RDROP2, M_RDROP) != 0)
        goto out;
    if (!use_backend && bench_flatness(&s[0], &b, c) != 0) /* refused with a backend */
        goto out;
    rc = 0;
out:
    for (i = 0; s && i < made + (rc != 0 && made < n_methods); i++)
        setup_free(&s[i]);
    free(s);
    free(sg);
    free(tri);
    free(ms);
    free(lib);
    free(scratch);
    free(x);
    free(y);
    free(u);
    if (rc != 0)
        fprintf(stderr, "bench: size %s failed\n", c->size_name);
    return rc;
}

/* ---- main -------------------------------------------------------------- */

static const size_t large_widths[] = {784, 1024, 1024, 10};
static const size_t small_widths[] = {64, 256, 256, 10};

static void usage(void)
{
    printf("usage: bench [--size large|small|all] [--methods m1,m2,...] [--runs R]\n"
           "             [--steps S] [--warmup W] [--opt-n N] [--no-kernels] [--no-steps]\n"
           "             [--lib-threads T] [--smoke] [--backend]\n"
           "methods: plain sam asam rdrop_twocall rdrop_doubled smart smart_sam msam looksam\n"
           "         fsam vasso wsam mesa ema freelb vat mesa_swap (default all;\n"
           "         mesa_swap: MESA with a host that does not read its weights\n"
           "         through pass->weights, so the teacher is swapped in)\n"
           "large: 784-1024-1024-10 batch 128; small: 64-256-256-10 batch 32; ReLU,\n"
           "dropout 0.1, AdamW lr 1e-4. Threads: OPENBLAS_NUM_THREADS for the host's\n"
           "BLAS, --lib-threads (default 1) for the library's loops and the\n"
           "copy/triad reference.\n"
           "--smoke: small size, 3 steps, tiny kernels; fails if a step allocates.\n"
           "--backend: the parameters behind the CPU backend (regopt_backend_cpu_create):\n"
           "           every parameter-sized operation one call of its table, one thread.\n");
}

static int parse_methods(const char *list, int *methods, int *n)
{
    char buf[256], *tok, *save = NULL;
    int i;
    if (strlen(list) >= sizeof buf)
        return -1;
    strcpy(buf, list);
    *n = 0;
    for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        for (i = 0; i < M_COUNT && strcmp(tok, method_name[i]) != 0; i++)
            ;
        if (i == M_COUNT || *n >= M_COUNT)
            return -1;
        methods[(*n)++] = i;
    }
    return *n > 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    const char *size = "all", *threads = getenv("OPENBLAS_NUM_THREADS");
    int methods[M_COUNT], n_methods = M_COUNT, kernels = 1, steps_on = 1, smoke = 0, i;
    long runs = 5, steps = -1, warmup = 3, opt_n = 10000000, allocs_after = 0;
    double sgemm, copy_gbs = 0.0, triad_gbs = 0.0;
    for (i = 0; i < M_COUNT; i++)
        methods[i] = i;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage();
            return 0;
        } else if (!strcmp(a, "--no-kernels")) {
            kernels = 0;
        } else if (!strcmp(a, "--no-steps")) {
            steps_on = 0;
        } else if (!strcmp(a, "--smoke")) {
            smoke = 1;
        } else if (!strcmp(a, "--backend")) {
            use_backend = 1;
        } else if (!v) {
            bad = 1;
        } else if (!strcmp(a, "--size")) {
            size = v;
            bad = strcmp(v, "large") && strcmp(v, "small") && strcmp(v, "all");
            i++;
        } else if (!strcmp(a, "--methods")) {
            bad = parse_methods(v, methods, &n_methods) != 0;
            i++;
        } else if (!strcmp(a, "--runs")) {
            bad = parse_long(v, 1, 1000, &runs) != 0;
            i++;
        } else if (!strcmp(a, "--steps")) {
            bad = parse_long(v, 1, 1000000, &steps) != 0;
            i++;
        } else if (!strcmp(a, "--warmup")) {
            bad = parse_long(v, 1, 1000000, &warmup) != 0;
            i++;
        } else if (!strcmp(a, "--lib-threads")) {
            bad = parse_long(v, 1, 256, &lib_threads) != 0;
            i++;
        } else if (!strcmp(a, "--opt-n")) {
            bad = parse_long(v, 1000, 1000000000L, &opt_n) != 0;
            i++;
        } else {
            bad = 1;
        }
        if (bad) {
            fprintf(stderr, "bench: bad argument %s%s%s (try --help)\n", a, v ? " " : "",
                    v ? v : "");
            return 2;
        }
    }
    if (smoke) {
        size = "small";
        runs = 1;
        steps = 3;
        warmup = 1;
        opt_n = 100000;
    }
    printf("BENCH kind=env version=%s openblas_threads=%s openblas_coretype=%s "
           "lib_threads=%ld\n",
           regopt_version_string(), threads ? threads : "unset",
           getenv("OPENBLAS_CORETYPE") ? getenv("OPENBLAS_CORETYPE") : "auto", lib_threads);

    /* the GEMM reference: a square product large enough to run at the BLAS's
       full rate, and the large model's own first-layer product */
    sgemm = sgemm_rate(smoke ? 256 : 1024, smoke ? 256 : 1024, smoke ? 256 : 1024,
                       smoke ? 2 : 10);
    printf("# sgemm %d^3: %.1f GFLOP/s\n", smoke ? 256 : 1024, sgemm);
    printf("BENCH kind=sgemm m=%d n=%d k=%d gflops=%.3f\n", smoke ? 256 : 1024,
           smoke ? 256 : 1024, smoke ? 256 : 1024, sgemm);
    if (!smoke) {
        /* the large model's first layer, at R-Drop's doubled rows too: what
           one product of 2n rows can gain over two of n */
        int m;
        for (m = 128; m <= 256; m += 128) {
            double g = sgemm_rate(m, 1024, 784, 20);
            printf("# sgemm %dx784 * 784x1024 (large model, layer 1): %.1f GFLOP/s\n", m, g);
            printf("BENCH kind=sgemm m=%d n=1024 k=784 gflops=%.3f\n", m, g);
        }
    }

    if (kernels) {
        if (bandwidth((size_t)opt_n, smoke ? 2 : 10, (int)lib_threads, &copy_gbs, &triad_gbs) != 0)
            return 1;
        printf("# bandwidth n=%ld threads=%ld: copy %.2f GB/s, triad %.2f GB/s\n", opt_n,
               lib_threads, copy_gbs, triad_gbs);
        printf("BENCH kind=bandwidth n=%ld threads=%ld copy_gbs=%.3f triad_gbs=%.3f\n", opt_n,
               lib_threads, copy_gbs, triad_gbs);
        if (optimizer_rate(REGOPT_SGD, "sgd_momentum", (size_t)opt_n, smoke ? 2 : 10,
                           triad_gbs) != 0 ||
            optimizer_rate(REGOPT_ADAM, "adam", (size_t)opt_n, smoke ? 2 : 10, triad_gbs) != 0 ||
            optimizer_rate(REGOPT_ADAMW, "adamw", (size_t)opt_n, smoke ? 2 : 10, triad_gbs) != 0 ||
            precision_rate((size_t)opt_n, smoke ? 2 : 10) != 0)
            return 1;
    }

    if (steps_on) {
        config c;
        c.smoke = smoke;
        c.sgemm_gflops = sgemm;
        c.ref_n = smoke ? 256 : 1024;
        c.runs = runs;
        c.warmup = warmup;
        c.layers = 3;
        if (!strcmp(size, "large") || !strcmp(size, "all")) {
            c.widths = large_widths;
            c.batch = 128;
            c.size_name = "large";
            c.steps = steps > 0 ? steps : 20;
            if (bench_size(&c, methods, n_methods, &allocs_after) != 0)
                return 1;
        }
        if (!strcmp(size, "small") || !strcmp(size, "all")) {
            c.widths = small_widths;
            c.batch = 32;
            c.size_name = "small";
            c.steps = steps > 0 ? steps : 200;
            if (bench_size(&c, methods, n_methods, &allocs_after) != 0)
                return 1;
        }
    }
    if (smoke && allocs_after != 0) {
        fprintf(stderr, "bench: %ld allocations in steps after the first\n", allocs_after);
        return 1;
    }
    return 0;
}
