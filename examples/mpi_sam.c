/* mpi_sam.c — data-parallel SAM on the digits MLP with Open MPI.
 *
 *   mpirun -np 2 ./examples/mpi_sam --data data/digits.csv [--sync-ascent]
 *
 * Every rank holds the whole data set and the same model; each global batch
 * is cut into one shard per rank. The library calls the all-reduce callback
 * (MPI_Allreduce, MPI_SUM) once per step on the final gradient, so all ranks
 * apply the same update and stay bit-identical. SAM's ascent uses each rank's
 * own shard gradient (m-sharpness with m = shard) unless --sync-ascent, which
 * averages it too: then a run on N ranks computes what one process computes
 * on the whole batch. Dropout masks are drawn per global row, for the same
 * reason.
 *
 * --dump PREFIX writes the final parameters of rank r to PREFIX.r (one value
 * per line, %.9g), which the tests compare. */
#include "digits_mlp.h"

#include <mpi.h>

static int allreduce_sum(float *buf, size_t count, void *user)
{
    (void)user;
    if (count > (size_t)0x7fffffff)
        return 1;
    return MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD) ==
                   MPI_SUCCESS
               ? 0
               : 2;
}

typedef struct options {
    const char *data, *dump;
    long epochs, batch, hidden, seed;
    double lr, rho, dropout;
    int sync_ascent, quiet;
} options;

static int parse_args(int argc, char **argv, options *o, int rank)
{
    int i;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "--help")) {
            if (rank == 0)
                printf("usage: mpirun -np N mpi_sam [--data PATH] [--epochs N] [--batch N]\n"
                       "       [--hidden N] [--lr X] [--rho X] [--dropout X] [--seed N]\n"
                       "       [--sync-ascent] [--dump PREFIX] [--quiet]\n");
            return 1;
        }
        if (!strcmp(a, "--sync-ascent")) {
            o->sync_ascent = 1;
            continue;
        }
        if (!strcmp(a, "--quiet")) {
            o->quiet = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "mpi_sam: %s needs a value\n", a);
            return 2;
        }
        if (!strcmp(a, "--data")) o->data = v;
        else if (!strcmp(a, "--dump")) o->dump = v;
        else if (!strcmp(a, "--epochs")) bad = parse_long(v, 1, 100000, &o->epochs);
        else if (!strcmp(a, "--batch")) bad = parse_long(v, 1, 100000, &o->batch);
        else if (!strcmp(a, "--hidden")) bad = parse_long(v, 1, 100000, &o->hidden);
        else if (!strcmp(a, "--seed")) bad = parse_long(v, 0, 2147483647L, &o->seed);
        else if (!strcmp(a, "--lr")) bad = parse_double(v, 1e-12, 1e3, &o->lr);
        else if (!strcmp(a, "--rho")) bad = parse_double(v, 0, 100, &o->rho);
        else if (!strcmp(a, "--dropout")) bad = parse_double(v, 0, 0.95, &o->dropout);
        else {
            fprintf(stderr, "mpi_sam: unknown option %s (see --help)\n", a);
            return 2;
        }
        if (bad) {
            fprintf(stderr, "mpi_sam: bad value for %s: '%s'\n", a, v);
            return 2;
        }
        i++;
    }
    return 0;
}

static int dump(const char *prefix, int rank, const mlp *net)
{
    char path[4096];
    FILE *f;
    size_t i;
    snprintf(path, sizeof path, "%s.%d", prefix, rank);
    f = fopen(path, "w");
    if (!f)
        return -1;
    for (i = 0; i < net->in * net->hid; i++) fprintf(f, "%.9g\n", net->w1[i]);
    for (i = 0; i < net->hid; i++) fprintf(f, "%.9g\n", net->b1[i]);
    for (i = 0; i < net->hid * net->out; i++) fprintf(f, "%.9g\n", net->w2[i]);
    for (i = 0; i < net->out; i++) fprintf(f, "%.9g\n", net->b2[i]);
    return fclose(f);
}

#define TRY(call, what)                                                              \
    do {                                                                            \
        if ((call) != REGOPT_OK) {                                                  \
            fprintf(stderr, "mpi_sam rank %d: %s: %s\n", rank, what, regopt_trainer_message(tr)); \
            rc = 1;                                                                 \
            goto done;                                                              \
        }                                                                           \
    } while (0)

int main(int argc, char **argv)
{
    options o = {"data/digits.csv", NULL, 3, 64, 64, 1, 3e-3, 0.05, 0.1, 0, 0};
    int rank = 0, size = 1, rc;
    digits d = {0, NULL, NULL};
    mlp net;
    regopt_model *model = NULL;
    regopt_optimizer *opt = NULL;
    regopt_trainer *tr = NULL;
    regopt_regularizer *sam = NULL;
    size_t *idx = NULL, n_train, n_test, i, steps = 0;
    float *out = NULL;
    long e;
    double acc;

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    memset(&net, 0, sizeof net);
    rc = parse_args(argc, argv, &o, rank);
    if (rc) {
        MPI_Finalize();
        return rc == 1 ? 0 : rc;
    }
    if (o.batch < size) {
        fprintf(stderr, "mpi_sam: --batch %ld is smaller than the %d ranks\n", o.batch, size);
        MPI_Finalize();
        return 2;
    }
    if (digits_load(o.data, &d)) {
        MPI_Finalize();
        return 2;
    }
    /* the same split and order on every rank (the library's generator) */
    n_test = d.n / 5;
    n_train = d.n - n_test;
    idx = malloc(d.n * sizeof *idx);
    out = malloc(n_test * DIGITS_CLASSES * sizeof *out);
    /* activations for a training shard or the whole test set */
    rc = !idx || !out ||
         mlp_init(&net, (size_t)o.hidden, n_test > (size_t)o.batch ? n_test : (size_t)o.batch,
                  (float)o.dropout, 0, (uint64_t)o.seed);
    if (rc) {
        fprintf(stderr, "mpi_sam: out of memory\n");
        goto done;
    }
    shuffle_indices(idx, d.n, (uint64_t)o.seed);

    model = regopt_model_create(NULL, NULL);
    opt = regopt_optimizer_create(REGOPT_ADAMW, NULL, NULL);
    if (!model || !opt || mlp_register(&net, model) != REGOPT_OK ||
        regopt_optimizer_set_double(opt, REGOPT_OPT_LR, o.lr) != REGOPT_OK ||
        (tr = regopt_trainer_create(model, opt, NULL)) == NULL) {
        fprintf(stderr, "mpi_sam: setup failed: %s\n", regopt_last_error_message());
        rc = 1;
        goto done;
    }
    TRY(regopt_trainer_set_int(tr, REGOPT_TRAINER_SEED, o.seed), "seed");
    /* SAM is a handle of its own: create, configure, attach (freed after the trainer) */
    sam = regopt_regularizer_create(REGOPT_REG_SAM, NULL, NULL);
    if (!sam || regopt_regularizer_set_double(sam, REGOPT_SAM_RHO, o.rho) != REGOPT_OK ||
        regopt_regularizer_set_int(sam, REGOPT_SAM_SYNC_ASCENT, o.sync_ascent) != REGOPT_OK) {
        fprintf(stderr, "mpi_sam rank %d: SAM: %s\n", rank,
                sam ? regopt_regularizer_message(sam) : regopt_last_error_message());
        rc = 1;
        goto done;
    }
    TRY(regopt_trainer_attach(tr, sam), "attach SAM");
    if (size > 1)
        TRY(regopt_trainer_set_allreduce(tr, allreduce_sum, NULL, NULL), "all-reduce");

    {
        float *xb = malloc((size_t)o.batch * DIGITS_FEATURES * sizeof *xb);
        int32_t *yb = malloc((size_t)o.batch * sizeof *yb);
        if (!xb || !yb) {
            free(xb);
            free(yb);
            rc = 1;
            goto done;
        }
        for (e = 0; e < o.epochs && rc == 0; e++) {
            for (i = 0; i + (size_t)o.batch <= n_train && rc == 0; i += (size_t)o.batch) {
                /* this rank's shard of global batch [i, i + batch) */
                size_t lo = (size_t)o.batch * (size_t)rank / (size_t)size;
                size_t hi = (size_t)o.batch * (size_t)(rank + 1) / (size_t)size, r;
                mlp_batch hb;
                regopt_batch b;
                for (r = lo; r < hi; r++) {
                    size_t src = idx[i + r];
                    memcpy(xb + (r - lo) * DIGITS_FEATURES, d.x + src * DIGITS_FEATURES,
                           DIGITS_FEATURES * sizeof *xb);
                    yb[r - lo] = d.y[src];
                }
                hb.x = xb;
                hb.row_base = lo;
                regopt_batch_init(&b);
                b.data = &hb;
                b.rows = hi - lo;
                b.labels = yb;
                if (regopt_trainer_step(tr, &b, 1) != REGOPT_OK) {
                    fprintf(stderr, "mpi_sam rank %d: step: %s\n", rank,
                            regopt_trainer_message(tr));
                    rc = 1;
                }
                steps++;
            }
        }
        free(xb);
        free(yb);
        if (rc)
            goto done;
    }

    {
        /* every rank evaluates the whole test set (they hold the same model) */
        float *xt = malloc(n_test * DIGITS_FEATURES * sizeof *xt);
        int32_t *yt = malloc(n_test * sizeof *yt);
        mlp_batch hb;
        regopt_batch b;
        double loss;
        regopt_status st;
        if (!xt || !yt) {
            free(xt);
            free(yt);
            rc = 1;
            goto done;
        }
        for (i = 0; i < n_test; i++) {
            memcpy(xt + i * DIGITS_FEATURES, d.x + idx[n_train + i] * DIGITS_FEATURES,
                   DIGITS_FEATURES * sizeof *xt);
            yt[i] = d.y[idx[n_train + i]];
        }
        hb.x = xt;
        hb.row_base = 0;
        regopt_batch_init(&b);
        b.data = &hb;
        b.rows = n_test;
        b.labels = yt;
        st = regopt_trainer_evaluate(tr, &b, &loss, out);
        acc = st == REGOPT_OK ? accuracy(out, yt, n_test, DIGITS_CLASSES) : -1.0;
        free(xt);
        free(yt);
        if (st != REGOPT_OK) {
            fprintf(stderr, "mpi_sam rank %d: evaluate: %s\n", rank, regopt_trainer_message(tr));
            rc = 1;
            goto done;
        }
    }
    if (!o.quiet || rank == 0)
        printf("RESULT rank=%d ranks=%d sync_ascent=%d steps=%zu test_acc=%.4f\n", rank, size,
               o.sync_ascent, steps, acc);
    if (o.dump && dump(o.dump, rank, &net)) {
        fprintf(stderr, "mpi_sam rank %d: cannot write %s.%d\n", rank, o.dump, rank);
        rc = 1;
    }
done:
    regopt_trainer_free(tr); /* detaches SAM: free it after */
    regopt_regularizer_free(sam);
    regopt_optimizer_free(opt);
    regopt_model_free(model);
    mlp_free(&net);
    digits_free(&d);
    free(idx);
    free(out);
    MPI_Finalize();
    return rc;
}
