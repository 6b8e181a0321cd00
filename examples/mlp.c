/* mlp.c — train a small perceptron on the UCI handwritten digits through
 * libregopt with AdamW, a linear warm-up/decay schedule and dropout, plain
 * or wrapped in a sharpness-aware method and/or R-Drop, and report train and
 * test accuracy.
 *
 *   ./examples/mlp --data data/digits.csv [--method sam] [--bn] ...
 *
 * The host (digits_mlp.h) owns the network; the library zeroes gradients,
 * computes the loss and its gradient, runs SAM's extra passes, clips,
 * schedules and updates. With --bn the host has a batch-norm layer whose
 * running statistics it updates only in passes without
 * REGOPT_PASS_PERTURBED_WEIGHTS: the program checks they moved exactly once
 * per step. With --probe it measures flatness at the end
 * (regopt_trainer_flatness) and checks that the weights did not move. */
#include "digits_mlp.h"
#include "half_host.h"

#include <stdarg.h>
#include <time.h>

typedef struct options {
    const char *data, *method;
    long epochs, batch, hidden, seed, m_rows, every;
    double lr, wd, dropout, min_test_acc, test_fraction, rho, rdrop, smart, bregman;
    int quiet, bn, two_call, probe;
    const char *save, *resume; /* checkpoint paths */
    long stop_after;           /* stop after this many epochs (0: run all) */
    double ema, mesa;          /* EMA decay, MESA's lambda (-1: off) */
    long swa, mesa_start;      /* SWA's first epoch (0: off); MESA's term after epoch N */
    const char *precision;     /* fp32 (default), bf16 or fp16 parameter buffers */
} options;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: mlp [options]\n"
            "  --data PATH          digits CSV (default data/digits.csv)\n"
            "  --epochs N           passes over the training set (default 40)\n"
            "  --batch N            rows per step (default 64)\n"
            "  --hidden N           hidden units (default 128)\n"
            "  --lr X               AdamW learning rate (default 3e-3)\n"
            "  --weight-decay X     AdamW weight decay (default 1e-2, none on biases)\n"
            "  --dropout X          dropout probability of the hidden layer (default 0.1)\n"
            "  --seed N             seed of the split, the weights and dropout (default 1)\n"
            "  --test-fraction X    share of the data held out for testing (default 0.2)\n"
            "  --method M           adamw (default), sam, asam or gsam (each wraps AdamW)\n"
            "  --rho X              SAM radius (default 0.05; asam 1.0)\n"
            "  --m-rows N           m-sharpness: one ascent per N rows (default 0 = batch)\n"
            "  --every K            SAM ascent every K-th step (default 1)\n"
            "  --bn                 batch normalisation after the first layer\n"
            "  --rdrop ALPHA        add R-Drop with this consistency weight (e.g. 1)\n"
            "  --two-call           R-Drop as two forward calls, not one doubled batch\n"
            "  --smart LAMBDA       add SMART's adversarial term on the pixels (e.g. 1)\n"
            "  --bregman MU         add SMART's Bregman proximal term (e.g. 1)\n"
            "  --mesa LAMBDA        MESA: the Bregman term as KL(EMA teacher || student),\n"
            "                       tau 5, decay 0.9998 (paper: lambda 0.3)\n"
            "  --mesa-start N       MESA's term from epoch N + 1 on (default 0)\n"
            "  --ema DECAY          keep an EMA of the weights (e.g. 0.999) and report the\n"
            "                       accuracy of the averaged weights too\n"
            "  --swa N              keep SWA's mean of the weights at the end of epochs\n"
            "                       N, N+1, ... instead (with --bn: recalibrated)\n"
            "  --save PATH          save a checkpoint (state, weights, options) after\n"
            "                       every epoch, atomically\n"
            "  --resume PATH        continue from a checkpoint written by --save\n"
            "  --stop-after N       stop after epoch N (to simulate an interruption)\n"
            "  --min-test-acc X     exit with status 1 if test accuracy is below X\n"
            "  --probe              measure flatness on the training set at the end\n"
            "                       (regopt_trainer_flatness: worst- and average-case\n"
            "                       sharpness, top Hessian eigenvalue, Hessian trace)\n"
            "  --precision P        fp32 (default), bf16 or fp16: 16-bit parameter and\n"
            "                       gradient buffers with the library's fp32 master and\n"
            "                       loss scaling (fp16: dynamic from 2^16); the host\n"
            "                       converts and computes in float32\n"
            "  --quiet              print only the final line\n"
            "  --help               this text\n");
}

static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("mlp: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("\n", stderr);
    va_end(ap);
    return 2;
}

static int parse_args(int argc, char **argv, options *o)
{
    int i;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(a, "--quiet")) {
            o->quiet = 1;
            continue;
        } else if (!strcmp(a, "--bn")) {
            o->bn = 1;
            continue;
        } else if (!strcmp(a, "--two-call")) {
            o->two_call = 1;
            continue;
        } else if (!strcmp(a, "--probe")) {
            o->probe = 1;
            continue;
        }
        if (!v)
            return fail("%s needs a value (see --help)", a);
        if (!strcmp(a, "--data")) o->data = v;
        else if (!strcmp(a, "--method")) {
            o->method = v;
            bad = strcmp(v, "adamw") && strcmp(v, "sam") && strcmp(v, "asam") && strcmp(v, "gsam");
        }
        else if (!strcmp(a, "--rho")) bad = parse_double(v, 0, 100, &o->rho);
        else if (!strcmp(a, "--rdrop")) bad = parse_double(v, 0, 1e4, &o->rdrop);
        else if (!strcmp(a, "--smart")) bad = parse_double(v, 0, 1e4, &o->smart);
        else if (!strcmp(a, "--bregman")) bad = parse_double(v, 0, 1e4, &o->bregman);
        else if (!strcmp(a, "--mesa")) bad = parse_double(v, 0, 1e4, &o->mesa);
        else if (!strcmp(a, "--mesa-start")) bad = parse_long(v, 0, 100000, &o->mesa_start);
        else if (!strcmp(a, "--ema")) bad = parse_double(v, 0, 0.999999, &o->ema);
        else if (!strcmp(a, "--swa")) bad = parse_long(v, 1, 100000, &o->swa);
        else if (!strcmp(a, "--m-rows")) bad = parse_long(v, 0, 100000, &o->m_rows);
        else if (!strcmp(a, "--every")) bad = parse_long(v, 1, 100000, &o->every);
        else if (!strcmp(a, "--epochs")) bad = parse_long(v, 1, 100000, &o->epochs);
        else if (!strcmp(a, "--batch")) bad = parse_long(v, 1, 100000, &o->batch);
        else if (!strcmp(a, "--hidden")) bad = parse_long(v, 1, 100000, &o->hidden);
        else if (!strcmp(a, "--seed")) bad = parse_long(v, 0, 2147483647L, &o->seed);
        else if (!strcmp(a, "--lr")) bad = parse_double(v, 1e-12, 1e3, &o->lr);
        else if (!strcmp(a, "--weight-decay")) bad = parse_double(v, 0, 1e3, &o->wd);
        else if (!strcmp(a, "--dropout")) bad = parse_double(v, 0, 0.95, &o->dropout);
        else if (!strcmp(a, "--test-fraction")) bad = parse_double(v, 0.01, 0.99, &o->test_fraction);
        else if (!strcmp(a, "--precision")) {
            o->precision = v;
            bad = strcmp(v, "fp32") && strcmp(v, "bf16") && strcmp(v, "fp16");
        } else if (!strcmp(a, "--save")) o->save = v;
        else if (!strcmp(a, "--resume")) o->resume = v;
        else if (!strcmp(a, "--stop-after")) bad = parse_long(v, 1, 100000, &o->stop_after);
        else if (!strcmp(a, "--min-test-acc")) bad = parse_double(v, 0, 1, &o->min_test_acc);
        else return fail("unknown option %s (see --help)", a);
        if (bad)
            return fail("bad value for %s: '%s' (see --help for the range)", a, v);
        i++;
    }
    if (o->ema >= 0.0 && o->swa > 0)
        return fail("--ema and --swa keep one average each: give one of them");
    if (o->mesa >= 0.0 && o->bregman >= 0.0)
        return fail("--mesa is the Bregman term with MESA's divergence: not with --bregman");
    return 0;
}

/* Gather rows idx[0..n) of the data set into contiguous buffers. */
static void gather(const digits *d, const size_t *idx, size_t n, float *x, int32_t *y)
{
    size_t i;
    for (i = 0; i < n; i++) {
        memcpy(x + i * DIGITS_FEATURES, d->x + idx[i] * DIGITS_FEATURES,
               DIGITS_FEATURES * sizeof *x);
        y[i] = d->y[idx[i]];
    }
}

/* Accuracy and loss of the current weights on n rows (dropout off). */
/* FNV-1a over the bytes of every weight: equal hashes = equal bits, so two
 * runs (say, one interrupted and resumed) can be compared from their output. */
static unsigned long weights_hash(const mlp *m)
{
    const float *arrays[8] = {m->w1, m->b1, m->w2, m->b2, m->gamma, m->beta, m->run_mean,
                              m->run_var};
    size_t sizes[8] = {m->in * m->hid, m->hid, m->hid * m->out, m->out, m->hid, m->hid,
                       m->hid, m->hid};
    uint32_t h = 2166136261u;
    size_t a, i;
    for (a = 0; a < 8; a++) {
        const unsigned char *p = (const unsigned char *)arrays[a];
        if (!p || (a >= 4 && !m->bn))
            continue;
        for (i = 0; i < sizes[a] * sizeof(float); i++)
            h = (h ^ p[i]) * 16777619u;
    }
    return (unsigned long)h;
}

static int evaluate(regopt_trainer *t, const float *x, const int32_t *y, size_t n,
                    float *out, double *acc, double *loss)
{
    mlp_batch hb;
    regopt_batch b;
    regopt_status st;
    hb.x = x;
    hb.row_base = 0;
    regopt_batch_init(&b);
    b.data = &hb;
    b.rows = n;
    b.labels = y;
    st = regopt_trainer_evaluate(t, &b, loss, out);
    if (st != REGOPT_OK)
        return fail("evaluate: %s", regopt_trainer_message(t));
    *acc = accuracy(out, y, n, DIGITS_CLASSES);
    return 0;
}

#define PROBE_ROWS 256 /* rows per batch handed to the probe */

/* --probe: every flatness measure on the training set, in batches of
 * PROBE_ROWS rows; the weights and the whole training state must come back
 * unchanged (regopt_trainer_flatness changes nothing). */
static int probe(regopt_trainer *t, const mlp *net, const float *x, const int32_t *y,
                 size_t n)
{
    size_t nb = (n + PROBE_ROWS - 1) / PROBE_ROWS, i;
    mlp_batch hb[64];
    regopt_batch b[64];
    regopt_flatness_request rq;
    regopt_flatness res;
    unsigned long before = weights_hash(net);
    regopt_status st;
    clock_t c0;
    if (nb > 64)
        return fail("--probe: more than %d batches", 64);
    for (i = 0; i < nb; i++) {
        hb[i].x = x + i * PROBE_ROWS * DIGITS_FEATURES;
        hb[i].row_base = i * PROBE_ROWS;
        regopt_batch_init(&b[i]);
        b[i].data = &hb[i];
        b[i].rows = n - i * PROBE_ROWS < PROBE_ROWS ? n - i * PROBE_ROWS : PROBE_ROWS;
        b[i].labels = y + i * PROBE_ROWS;
    }
    regopt_flatness_request_init(&rq); /* every measure, the defaults */
    res.size = sizeof res;
    c0 = clock();
    st = regopt_trainer_flatness(t, b, nb, &rq, &res);
    if (st != REGOPT_OK)
        return fail("regopt_trainer_flatness: %s (%s)", regopt_status_string(st),
                    regopt_trainer_message(t));
    printf("FLATNESS rows=%zu loss=%.5f worst_l2(rho=%g)=%.5f [%u it, %u halvings] "
           "average(sigma=%g)=%.6f+-%.1e top_eigenvalue=%.4f [%u it%s] trace=%.3f+-%.2f "
           "[%u samples] passes=%llu+%llu cpu=%.2fs\n",
           n, res.loss, rq.rho, res.worst_case, res.worst_iterations, res.worst_halvings,
           rq.sigma, res.average_case, res.average_stderr, res.eigenvalue,
           res.eigen_iterations, res.eigen_converged ? ", converged" : "", res.trace,
           res.trace_stderr, res.trace_samples, (unsigned long long)res.forward_calls,
           (unsigned long long)res.backward_calls,
           (double)(clock() - c0) / CLOCKS_PER_SEC);
    if (weights_hash(net) != before)
        return fail("--probe: the weights changed");
    if (!(res.worst_case >= 0.0) || !(res.trace == res.trace))
        return fail("--probe: implausible measures");
    return 0;
}

/* Test accuracy of the averaged weights: swapped into the network's buffers
 * (with --bn, batch norm recomputed for them over the training set and the
 * trained statistics put back afterwards, as torch's update_bn on a copy),
 * evaluated, swapped back bit for bit. */
static int evaluate_average(regopt_trainer *t, regopt_regularizer *avg, mlp *net,
                            const float *xtr, size_t n_train, size_t batch, const float *xte,
                            const int32_t *yte, size_t n_test, float *out, double *acc,
                            double *loss)
{
    size_t H = net->hid, nb = (n_train + batch - 1) / batch, i;
    float *saved = net->bn ? malloc(2 * H * sizeof(float)) : NULL;
    mlp_batch *hb = net->bn ? calloc(nb, sizeof *hb) : NULL;
    regopt_batch *bs = net->bn ? calloc(nb, sizeof *bs) : NULL;
    regopt_status st;
    int rc = 0;
    if (net->bn && (!saved || !hb || !bs)) {
        free(saved); free(hb); free(bs);
        return fail("out of memory for the recalibration");
    }
    if ((st = regopt_regularizer_swap_average(avg)) != REGOPT_OK) {
        free(saved); free(hb); free(bs);
        return fail("swap_average: %s", regopt_regularizer_message(avg));
    }
    if (net->bn) {
        memcpy(saved, net->run_mean, H * sizeof(float));
        memcpy(saved + H, net->run_var, H * sizeof(float));
        for (i = 0; i < nb; i++) {
            hb[i].x = xtr + i * batch * DIGITS_FEATURES;
            hb[i].row_base = 0;
            regopt_batch_init(&bs[i]);
            bs[i].data = &hb[i];
            bs[i].rows = n_train - i * batch < batch ? n_train - i * batch : batch;
        }
        if ((st = regopt_regularizer_recalibrate(avg, bs, nb)) != REGOPT_OK)
            rc = fail("recalibrate: %s", regopt_regularizer_message(avg));
    }
    if (rc == 0)
        rc = evaluate(t, xte, yte, n_test, out, acc, loss);
    if (regopt_regularizer_swap_average(avg) != REGOPT_OK && rc == 0)
        rc = fail("swap_average: %s", regopt_regularizer_message(avg));
    if (net->bn) {
        memcpy(net->run_mean, saved, H * sizeof(float));
        memcpy(net->run_var, saved + H, H * sizeof(float));
    }
    free(saved); free(hb); free(bs);
    return rc;
}

#define CHECK(call, handle_msg)                                                      \
    do {                                                                            \
        regopt_status st_ = (call);                                                 \
        if (st_ != REGOPT_OK) {                                                     \
            rc = fail("%s failed: %s (%s)", #call, regopt_status_string(st_), handle_msg); \
            goto done;                                                              \
        }                                                                           \
    } while (0)

/* A new regularizer of `kind` with its defaults into `reg`. */
#define CREATE(reg, kind)                                                            \
    do {                                                                            \
        regopt_status cst_ = REGOPT_OK;                                             \
        if (((reg) = regopt_regularizer_create((kind), NULL, &cst_)) == NULL) {      \
            rc = fail("regopt_regularizer_create(%s) failed: %s (%s)", #kind,        \
                      regopt_status_string(cst_), regopt_last_error_message());     \
            goto done;                                                              \
        }                                                                           \
    } while (0)

int main(int argc, char **argv)
{
    options o = {"data/digits.csv", "adamw", 40, 64, 128, 1, 0, 1,
                 3e-3, 1e-2, 0.1, -1.0, 0.2, -1.0, -1.0, -1.0, -1.0, 0, 0, 0, 0, NULL, NULL,
                 0, -1.0, -1.0, 0, 0, "fp32"};
    digits d = {0, NULL, NULL};
    mlp net;
    half_host hh;
    regopt_dtype dtype = REGOPT_DTYPE_FLOAT32;
    regopt_model *model = NULL;
    regopt_optimizer *opt = NULL;
    regopt_trainer *tr = NULL;
    regopt_regularizer *sam = NULL, *rdrop = NULL, *smart = NULL, *bregman = NULL;
    regopt_regularizer *avg = NULL;
    regopt_status st;
    size_t *idx = NULL, n_test, n_train, steps_per_epoch, i;
    float *xtr = NULL, *xte = NULL, *out = NULL, *xb;
    int32_t *ytr = NULL, *yte = NULL, *yb;
    double tr_acc = 0, te_acc = 0, tr_loss = 0, te_loss = 0;
    long e, first = 1;
    int64_t resumed_at = 0; /* steps done before this process started */
    int rc = parse_args(argc, argv, &o);
    if (rc)
        return rc;
    memset(&net, 0, sizeof net);
    memset(&hh, 0, sizeof hh);
    if (!strcmp(o.precision, "bf16"))
        dtype = REGOPT_DTYPE_BFLOAT16;
    else if (!strcmp(o.precision, "fp16"))
        dtype = REGOPT_DTYPE_FLOAT16;
    if (digits_load(o.data, &d))
        return 2;

    /* split */
    n_test = (size_t)((double)d.n * o.test_fraction + 0.5);
    n_train = d.n - n_test;
    idx = malloc(d.n * sizeof *idx);
    xtr = malloc(n_train * DIGITS_FEATURES * sizeof *xtr);
    xte = malloc(n_test * DIGITS_FEATURES * sizeof *xte);
    ytr = malloc(n_train * sizeof *ytr);
    yte = malloc(n_test * sizeof *yte);
    xb = malloc((size_t)o.batch * DIGITS_FEATURES * sizeof *xb);
    yb = malloc((size_t)o.batch * sizeof *yb);
    out = malloc(d.n * DIGITS_CLASSES * sizeof *out);
    if (!idx || !xtr || !xte || !ytr || !yte || !xb || !yb || !out) {
        rc = fail("out of memory");
        goto done;
    }
    shuffle_indices(idx, d.n, (uint64_t)o.seed);
    gather(&d, idx, n_train, xtr, ytr);
    gather(&d, idx + n_train, n_test, xte, yte);

    /* host network + library handles */
    if (mlp_init(&net, (size_t)o.hidden, d.n, (float)o.dropout, o.bn, (uint64_t)o.seed)) {
        rc = fail("out of memory");
        goto done;
    }
    model = regopt_model_create(NULL, &st);
    opt = regopt_optimizer_create(REGOPT_ADAMW, NULL, &st);
    if (!model || !opt) {
        rc = fail("create: %s", regopt_last_error_message());
        goto done;
    }
    if (dtype == REGOPT_DTYPE_FLOAT32)
        CHECK(mlp_register(&net, model), regopt_model_message(model));
    else
        CHECK(hh_register(&hh, &net, dtype, model), regopt_model_message(model));
    steps_per_epoch = (n_train + (size_t)o.batch - 1) / (size_t)o.batch;
    CHECK(regopt_optimizer_set_double(opt, REGOPT_OPT_LR, o.lr), regopt_optimizer_message(opt));
    CHECK(regopt_optimizer_set_double(opt, REGOPT_OPT_WEIGHT_DECAY, o.wd),
          regopt_optimizer_message(opt));
    CHECK(regopt_optimizer_set_group(opt, 1, REGOPT_GROUP_WEIGHT_DECAY, 0.0),
          regopt_optimizer_message(opt));
    CHECK(regopt_optimizer_set_int(opt, REGOPT_OPT_SCHEDULE, REGOPT_SCHEDULE_LINEAR),
          regopt_optimizer_message(opt));
    CHECK(regopt_optimizer_set_int(opt, REGOPT_OPT_TOTAL_STEPS,
                                   (int64_t)(steps_per_epoch * (size_t)o.epochs)),
          regopt_optimizer_message(opt));
    CHECK(regopt_optimizer_set_int(opt, REGOPT_OPT_WARMUP_STEPS, (int64_t)steps_per_epoch),
          regopt_optimizer_message(opt));
    CHECK(regopt_optimizer_set_double(opt, REGOPT_OPT_CLIP_NORM, 5.0),
          regopt_optimizer_message(opt));
    tr = regopt_trainer_create(model, opt, &st);
    if (!tr) {
        rc = fail("regopt_trainer_create: %s", regopt_last_error_message());
        goto done;
    }
    CHECK(regopt_trainer_set_int(tr, REGOPT_TRAINER_SEED, o.seed), regopt_trainer_message(tr));
    CHECK(regopt_trainer_reserve(tr, d.n), regopt_trainer_message(tr));
    /* the regularizers: each a handle of its own, configured through its
       keys, attached to the trainer, freed after it */
    if (strcmp(o.method, "adamw") != 0) {
        int asam = !strcmp(o.method, "asam");
        CREATE(sam, REGOPT_REG_SAM);
        CHECK(regopt_regularizer_set_double(sam, REGOPT_SAM_RHO,
                                            o.rho >= 0 ? o.rho : asam ? 1.0 : 0.05),
              regopt_regularizer_message(sam));
        CHECK(regopt_regularizer_set_int(sam, REGOPT_SAM_ADAPTIVE, asam),
              regopt_regularizer_message(sam));
        /* ASAM scales weights only (SamsungLabs): not biases nor batch-norm */
        CHECK(regopt_regularizer_set_group(sam, 1, REGOPT_SAM_GROUP_ADAPTIVE, 0),
              regopt_regularizer_message(sam));
        CHECK(regopt_regularizer_set_int(sam, REGOPT_SAM_GSAM, !strcmp(o.method, "gsam")),
              regopt_regularizer_message(sam));
        CHECK(regopt_regularizer_set_int(sam, REGOPT_SAM_M_ROWS, o.m_rows),
              regopt_regularizer_message(sam));
        CHECK(regopt_regularizer_set_int(sam, REGOPT_SAM_EVERY, o.every),
              regopt_regularizer_message(sam));
        CHECK(regopt_trainer_attach(tr, sam), regopt_trainer_message(tr));
    }

    if (o.rdrop >= 0.0) {
        CREATE(rdrop, REGOPT_REG_RDROP);
        CHECK(regopt_regularizer_set_double(rdrop, REGOPT_RDROP_ALPHA, o.rdrop),
              regopt_regularizer_message(rdrop));
        CHECK(regopt_regularizer_set_int(rdrop, REGOPT_RDROP_DOUBLED, !o.two_call),
              regopt_regularizer_message(rdrop));
        CHECK(regopt_trainer_attach(tr, rdrop), regopt_trainer_message(tr));
    }
    if (o.smart >= 0.0) { /* perturb the pixels: a tenth of their 0..1 range */
        CREATE(smart, REGOPT_REG_SMART);
        CHECK(regopt_regularizer_set_double(smart, REGOPT_SMART_LAMBDA, o.smart),
              regopt_regularizer_message(smart));
        CHECK(regopt_regularizer_set_double(smart, REGOPT_SMART_EPSILON, 0.1),
              regopt_regularizer_message(smart));
        CHECK(regopt_regularizer_set_double(smart, REGOPT_SMART_ETA, 0.05),
              regopt_regularizer_message(smart));
        CHECK(regopt_regularizer_set_double(smart, REGOPT_SMART_SIGMA, 0.01),
              regopt_regularizer_message(smart));
        CHECK(regopt_trainer_attach(tr, smart), regopt_trainer_message(tr));
    }
    if (o.bregman >= 0.0) {
        CREATE(bregman, REGOPT_REG_BREGMAN);
        CHECK(regopt_regularizer_set_double(bregman, REGOPT_BREGMAN_MU, o.bregman),
              regopt_regularizer_message(bregman));
        CHECK(regopt_trainer_attach(tr, bregman), regopt_trainer_message(tr));
    }
    if (o.mesa >= 0.0) { /* MESA's preset (include/regopt.h, "MESA") */
        CREATE(bregman, REGOPT_REG_BREGMAN);
        CHECK(regopt_regularizer_set_double(bregman, REGOPT_BREGMAN_MU, o.mesa),
              regopt_regularizer_message(bregman));
        CHECK(regopt_regularizer_set_int(bregman, REGOPT_BREGMAN_DIVERGENCE,
                                         REGOPT_BREGMAN_KL_TEACHER),
              regopt_regularizer_message(bregman));
        CHECK(regopt_regularizer_set_double(bregman, REGOPT_BREGMAN_TAU, 5.0),
              regopt_regularizer_message(bregman));
        CHECK(regopt_regularizer_set_double(bregman, REGOPT_BREGMAN_BETA, 0.9998),
              regopt_regularizer_message(bregman));
        CHECK(regopt_regularizer_set_double(bregman, REGOPT_BREGMAN_BETA_LATE, 0.9998),
              regopt_regularizer_message(bregman));
        CHECK(regopt_regularizer_set_int(bregman, REGOPT_BREGMAN_START_STEP,
                                         o.mesa_start * (long)steps_per_epoch),
              regopt_regularizer_message(bregman));
        CHECK(regopt_trainer_attach(tr, bregman), regopt_trainer_message(tr));
    }
    if (o.ema >= 0.0 || o.swa > 0) {
        CREATE(avg, REGOPT_REG_AVERAGE);
        if (o.ema >= 0.0)
            CHECK(regopt_regularizer_set_double(avg, REGOPT_AVERAGE_DECAY, o.ema),
                  regopt_regularizer_message(avg));
        else { /* the weights at the end of epochs swa, swa + 1, ... */
            CHECK(regopt_regularizer_set_int(avg, REGOPT_AVERAGE_MODE, REGOPT_AVERAGE_SWA),
                  regopt_regularizer_message(avg));
            CHECK(regopt_regularizer_set_int(avg, REGOPT_AVERAGE_START,
                                             o.swa * (long)steps_per_epoch - 1),
                  regopt_regularizer_message(avg));
            CHECK(regopt_regularizer_set_int(avg, REGOPT_AVERAGE_EVERY, (long)steps_per_epoch),
                  regopt_regularizer_message(avg));
        }
        CHECK(regopt_trainer_attach(tr, avg), regopt_trainer_message(tr));
    }
    if (!o.quiet)
        printf("digits: %zu train, %zu test; MLP 64-%ld-10%s, dropout %.2f; %s%s over AdamW "
               "lr %g, wd %g; %ld epochs of %zu steps\n",
               n_train, n_test, o.hidden, o.bn ? " with batch norm" : "", o.dropout, o.method,
               o.rdrop >= 0.0 ? " + R-Drop" : "", o.lr, o.wd, o.epochs, steps_per_epoch);
    if (!o.quiet && (o.smart >= 0.0 || o.bregman >= 0.0))
        printf("        + SMART%s%s\n", o.smart >= 0.0 ? " adversarial" : "",
               o.bregman >= 0.0 ? " Bregman" : "");
    if (o.resume) {
        /* everything the library holds: weights (batch-norm statistics
           included, registered frozen), moments, step, seed, teacher */
        int64_t done = 0;
        CHECK(regopt_trainer_load_file(tr, REGOPT_CHECKPOINT_PARAMS | REGOPT_CHECKPOINT_OPTIONS,
                                       o.resume),
              regopt_trainer_message(tr));
        CHECK(regopt_trainer_get_int(tr, REGOPT_STAT_STEP, &done), regopt_trainer_message(tr));
        if (done % (int64_t)steps_per_epoch != 0) {
            rc = fail("%s: %lld steps is not a whole number of epochs", o.resume,
                      (long long)done);
            goto done;
        }
        first = 1 + (long)(done / (int64_t)steps_per_epoch);
        resumed_at = done;
        if (!o.quiet)
            printf("resumed from %s after epoch %ld\n", o.resume, first - 1);
    }
    for (e = first; e <= o.epochs; e++) {
        size_t *order = idx; /* reuse: a fresh permutation of the training rows */
        double loss_sum = 0.0;
        shuffle_indices(order, n_train, (uint64_t)o.seed * 1000003u + (uint64_t)e);
        for (i = 0; i < n_train; i += (size_t)o.batch) {
            size_t n = n_train - i < (size_t)o.batch ? n_train - i : (size_t)o.batch, r;
            mlp_batch hb;
            regopt_batch b;
            double l;
            for (r = 0; r < n; r++) {
                memcpy(xb + r * DIGITS_FEATURES, xtr + order[i + r] * DIGITS_FEATURES,
                       DIGITS_FEATURES * sizeof *xb);
                yb[r] = ytr[order[i + r]];
            }
            hb.x = xb;
            hb.row_base = 0;
            regopt_batch_init(&b);
            b.data = &hb;
            b.rows = n;
            b.labels = yb;
            CHECK(regopt_trainer_step(tr, &b, 1), regopt_trainer_message(tr));
            CHECK(regopt_trainer_get_double(tr, REGOPT_STAT_LOSS, &l), regopt_trainer_message(tr));
            loss_sum += l * (double)n;
        }
        if (!o.quiet && (e % 5 == 0 || e == 1)) {
            double sharp = 0.0;
            if ((rc = evaluate(tr, xte, yte, n_test, out, &te_acc, &te_loss)) != 0)
                goto done;
            printf("epoch %3ld  train loss %.4f  test loss %.4f  test acc %.4f", e,
                   loss_sum / (double)n_train, te_loss, te_acc);
            if (sam &&
                regopt_regularizer_get_double(sam, REGOPT_STAT_SAM_SHARPNESS, &sharp) == REGOPT_OK)
                printf("  sharpness %.4f", sharp);
            printf("\n");
        }
        if (o.save)
            CHECK(regopt_trainer_save_file(tr, REGOPT_CHECKPOINT_PARAMS |
                                                   REGOPT_CHECKPOINT_OPTIONS, o.save),
                  regopt_trainer_message(tr));
        if (o.stop_after && e == o.stop_after) {
            printf("stopped after epoch %ld%s%s\n", e, o.save ? "; checkpoint in " : "",
                   o.save ? o.save : "");
            goto done;
        }
    }
    if ((rc = evaluate(tr, xtr, ytr, n_train, out, &tr_acc, &tr_loss)) != 0 ||
        (rc = evaluate(tr, xte, yte, n_test, out, &te_acc, &te_loss)) != 0)
        goto done;
    printf("RESULT method=%s%s%s%s%s train_acc=%.4f test_acc=%.4f test_loss=%.4f "
           "weights=%08lx\n", o.method,
           o.rdrop >= 0.0 ? "+rdrop" : "", o.smart >= 0.0 ? "+smart" : "",
           o.bregman >= 0.0 ? "+bregman" : "", o.mesa >= 0.0 ? "+mesa" : "", tr_acc, te_acc,
           te_loss, weights_hash(&net));
    if (avg) {
        double avg_acc = 0.0, avg_loss = 0.0;
        int64_t count = 0;
        CHECK(regopt_regularizer_get_int(avg, REGOPT_STAT_AVERAGE_COUNT, &count),
              regopt_regularizer_message(avg));
        if (count > 0) {
            if ((rc = evaluate_average(tr, avg, &net, xtr, n_train, (size_t)o.batch, xte, yte,
                                       n_test, out, &avg_acc, &avg_loss)) != 0)
                goto done;
            printf("AVERAGE %s updates=%lld test_acc=%.4f test_loss=%.6f\n",
                   o.swa > 0 ? "swa" : "ema", (long long)count, avg_acc, avg_loss);
        }
    }
    if (dtype != REGOPT_DTYPE_FLOAT32) {
        int64_t skipped = 0;
        double scale = 0;
        CHECK(regopt_trainer_get_int(tr, REGOPT_STAT_SKIPPED_STEPS, &skipped),
              regopt_trainer_message(tr));
        CHECK(regopt_trainer_get_double(tr, REGOPT_STAT_LOSS_SCALE, &scale),
              regopt_trainer_message(tr));
        printf("PRECISION %s skipped_steps=%lld loss_scale=%g\n", o.precision,
               (long long)skipped, scale);
    }
    if (o.probe && (rc = probe(tr, &net, xtr, ytr, n_train)) != 0)
        goto done;
    if (o.bn) {
        int64_t steps = 0;
        CHECK(regopt_trainer_get_int(tr, REGOPT_STAT_STEP, &steps), regopt_trainer_message(tr));
        /* once per clean training pass at w: R-Drop makes two; SAM's
           perturbed passes, SMART's adversarial and teacher passes none */
        long per_step = o.rdrop >= 0.0 ? 2 : 1;
        printf("batch norm: running statistics moved %ld times in %lld steps\n",
               net.bn_updates, (long long)steps);
        if (net.bn_updates != per_step * (long)(steps - resumed_at)) {
            fprintf(stderr, "mlp: batch-norm statistics must move %ld time(s) per step\n",
                    per_step);
            rc = 1;
        }
    }
    if (o.min_test_acc >= 0.0 && te_acc < o.min_test_acc) {
        fprintf(stderr, "mlp: test accuracy %.4f is below the required %.4f\n", te_acc,
                o.min_test_acc);
        rc = 1;
    }
done:
    regopt_trainer_free(tr); /* detaches the regularizers: free them after it */
    regopt_regularizer_free(sam);
    regopt_regularizer_free(rdrop);
    regopt_regularizer_free(smart);
    regopt_regularizer_free(bregman);
    regopt_regularizer_free(avg);
    regopt_optimizer_free(opt);
    regopt_model_free(model);
    mlp_free(&net);
    hh_free(&hh);
    digits_free(&d);
    free(idx); free(xtr); free(xte); free(ytr); free(yte); free(xb); free(yb); free(out);
    return rc;
}
