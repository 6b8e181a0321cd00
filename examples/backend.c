/* backend.c — parameters the library never touches: a backend
 * (regopt_model_set_backend) for a host whose tensors live where the CPU
 * cannot read them, such as a GPU.
 *
 * The "device" here: every tensor the host registers is a PROT_NONE
 * mapping, so the library reading or writing any of them would end the
 * program with SIGSEGV. The host computes on its own arrays (the digits MLP
 * of digits_mlp.h), and its backend carries out each operation the library
 * asks for (REGOPT_VOP_*) on those arrays by translating the handles and
 * running the library's CPU backend on them (regopt_backend_cpu_create). A
 * GPU host writes the same run() with its device's kernels instead
 * (python/regopt/_torch_backend.py does it with torch).
 *
 * It trains SAM + R-Drop + MESA on AdamW twice, through the backend and on
 * ordinary buffers, and shows the weights end bit for bit the same.
 *
 *   ./examples/backend [--data data/digits.csv] [--epochs E] [--check]
 */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */
#include "digits_mlp.h"

#include <sys/mman.h>

#define MAX_T 4 /* w1, b1, w2, b2 */

/* ---- the backend ------------------------------------------------------- */

typedef struct device {
    regopt_backend cpu;       /* the library's CPU backend, run on the real arrays */
    void *handle[2][MAX_T];   /* what the library was given: PROT_NONE mappings */
    float *real[2][MAX_T];    /* what they stand for: the host's data and gradients */
    size_t bytes[MAX_T];
    long calls[32];           /* operations by code */
} device;

static float *real_of(const device *d, void *h)
{
    int i, k;
    for (i = 0; i < 2; i++)
        for (k = 0; k < MAX_T; k++)
            if (d->handle[i][k] == h)
                return d->real[i][k];
    return NULL;
}

/* BIND hands over the registered handles: translate them once; every other
 * operation names vectors by id and goes through unchanged. */
static int device_run(void *user, regopt_vop *op)
{
    device *d = user;
    if (op->code > 0 && op->code < 32)
        d->calls[op->code]++;
    if (op->code == REGOPT_VOP_BIND) {
        void *data[MAX_T], *grad[MAX_T];
        regopt_vop o = *op;
        size_t k;
        if (op->tensors > MAX_T)
            return 1;
        for (k = 0; k < op->tensors; k++)
            if (!(data[k] = real_of(d, op->data[k])) || !(grad[k] = real_of(d, op->grad[k])))
                return 2;
        o.data = data;
        o.grad = grad;
        return d->cpu.run(d->cpu.user, &o);
    }
    return d->cpu.run(d->cpu.user, op);
}

/* Register the MLP's tensors as PROT_NONE handles. */
static regopt_status register_guarded(mlp *m, regopt_model *model, device *d)
{
    float *data[MAX_T] = {m->w1, m->b1, m->w2, m->b2}, *grad[MAX_T] = {m->g1, m->gb1, m->g2,
                                                                       m->gb2};
    size_t count[MAX_T] = {m->in * m->hid, m->hid, m->hid * m->out, m->out};
    static const char *const name[MAX_T] = {"w1", "b1", "w2", "b2"};
    regopt_status st = REGOPT_OK;
    int i, k;
    for (k = 0; k < MAX_T && st == REGOPT_OK; k++) {
        d->bytes[k] = count[k] * sizeof(float);
        for (i = 0; i < 2; i++) {
            d->handle[i][k] = mmap(NULL, d->bytes[k], PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS,
                                   -1, 0);
            if (d->handle[i][k] == MAP_FAILED)
                return REGOPT_ERR_NO_MEMORY;
            d->real[i][k] = i ? grad[k] : data[k];
        }
        st = regopt_model_add_param(model, name[k], d->handle[0][k], d->handle[1][k], count[k],
                                    REGOPT_DTYPE_FLOAT32, k % 2);
    }
    if (st == REGOPT_OK)
        st = regopt_model_set_output_width(model, m->out);
    if (st == REGOPT_OK)
        st = regopt_model_set_slots(model, MLP_SLOTS);
    if (st == REGOPT_OK)
        st = regopt_model_set_capabilities(model, REGOPT_CAP_DOUBLED_BATCH);
    if (st == REGOPT_OK)
        st = regopt_model_set_callbacks(model, mlp_forward, mlp_backward, m, NULL);
    return st;
}

/* ---- one training run -------------------------------------------------- */

typedef struct run {
    mlp net;
    device dev;
    regopt_model *model;
    regopt_optimizer *opt;
    regopt_trainer *t;
    regopt_regularizer *reg[3];
    double acc;
} run;

static regopt_status setup(run *r, int guarded, size_t rows)
{
    static const regopt_regularizer_kind kinds[3] = {REGOPT_REG_SAM, REGOPT_REG_RDROP,
                                                     REGOPT_REG_BREGMAN};
    regopt_status st = REGOPT_OK;
    int i;
    if (mlp_init(&r->net, 64, rows, 0.1f, 0, 7))
        return REGOPT_ERR_NO_MEMORY;
    r->model = regopt_model_create(NULL, &st);
    if (st == REGOPT_OK && guarded && (st = regopt_backend_cpu_create(&r->dev.cpu)) == REGOPT_OK) {
        regopt_backend table;
        table.size = sizeof table;
        table.run = device_run;
        table.user = &r->dev;
        st = regopt_model_set_backend(r->model, &table);
    }
    if (st == REGOPT_OK)
        st = guarded ? register_guarded(&r->net, r->model, &r->dev)
                     : mlp_register(&r->net, r->model);
    if (st == REGOPT_OK)
        r->opt = regopt_optimizer_create(REGOPT_ADAMW, NULL, &st);
    if (st == REGOPT_OK)
        st = regopt_optimizer_set_double(r->opt, REGOPT_OPT_LR, 1e-2);
    if (st == REGOPT_OK)
        r->t = regopt_trainer_create(r->model, r->opt, &st);
    for (i = 0; i < 3 && st == REGOPT_OK; i++) {
        r->reg[i] = regopt_regularizer_create(kinds[i], NULL, &st);
        if (st == REGOPT_OK && i == 2) /* MESA: a teacher of decay 0.99, KL at tau 2 */
            st = regopt_regularizer_set_int(r->reg[i], REGOPT_BREGMAN_DIVERGENCE,
                                            REGOPT_BREGMAN_KL_TEACHER);
        if (st == REGOPT_OK && i == 2)
            st = regopt_regularizer_set_double(r->reg[i], REGOPT_BREGMAN_TAU, 2.0);
        if (st == REGOPT_OK)
            st = regopt_trainer_attach(r->t, r->reg[i]);
    }
    return st;
}

static void teardown(run *r)
{
    int i, k;
    regopt_trainer_free(r->t);
    for (i = 0; i < 3; i++)
        regopt_regularizer_free(r->reg[i]);
    regopt_optimizer_free(r->opt);
    regopt_model_free(r->model);
    if (r->dev.cpu.run)
        regopt_backend_cpu_free(&r->dev.cpu);
    for (k = 0; k < MAX_T; k++)
        for (i = 0; i < 2; i++)
            if (r->dev.handle[i][k])
                munmap(r->dev.handle[i][k], r->dev.bytes[k]);
    mlp_free(&r->net);
}

static regopt_status train(run *r, const digits *d, size_t n_train, long epochs)
{
    size_t *order = malloc(n_train * sizeof *order), i, j;
    float *x = malloc(32 * DIGITS_FEATURES * sizeof *x), *out = NULL;
    int32_t y[32];
    regopt_status st = order && x ? REGOPT_OK : REGOPT_ERR_NO_MEMORY;
    long e;
    for (e = 1; e <= epochs && st == REGOPT_OK; e++) {
        shuffle_indices(order, n_train, 1000u + (uint64_t)e);
        for (i = 0; i + 32 <= n_train && st == REGOPT_OK; i += 32) {
            mlp_batch hb = {x, 0};
            regopt_batch b;
            for (j = 0; j < 32; j++) {
                memcpy(x + j * DIGITS_FEATURES, d->x + order[i + j] * DIGITS_FEATURES,
                       DIGITS_FEATURES * sizeof *x);
                y[j] = d->y[order[i + j]];
            }
            regopt_batch_init(&b);
            b.data = &hb;
            b.rows = 32;
            b.labels = y;
            st = regopt_trainer_step(r->t, &b, 1);
        }
    }
    if (st == REGOPT_OK && (out = malloc((d->n - n_train) * DIGITS_CLASSES * sizeof *out))) {
        mlp_batch hb = {d->x + n_train * DIGITS_FEATURES, 0};
        regopt_batch b;
        regopt_batch_init(&b);
        b.data = &hb;
        b.rows = d->n - n_train;
        b.labels = d->y + n_train;
        st = regopt_trainer_evaluate(r->t, &b, NULL, out);
        r->acc = accuracy(out, d->y + n_train, b.rows, DIGITS_CLASSES);
    }
    free(order);
    free(x);
    free(out);
    return st;
}

/* The rows in a fixed random order: the last fifth is the test set. */
static int shuffle_rows(digits *d)
{
    size_t *idx = malloc(d->n * sizeof *idx), i;
    float *x = malloc(d->n * DIGITS_FEATURES * sizeof *x);
    int32_t *y = malloc(d->n * sizeof *y);
    if (!idx || !x || !y) {
        free(idx);
        free(x);
        free(y);
        return 1;
    }
    shuffle_indices(idx, d->n, 42);
    for (i = 0; i < d->n; i++) {
        memcpy(x + i * DIGITS_FEATURES, d->x + idx[i] * DIGITS_FEATURES,
               DIGITS_FEATURES * sizeof *x);
        y[i] = d->y[idx[i]];
    }
    free(d->x);
    free(d->y);
    d->x = x;
    d->y = y;
    free(idx);
    return 0;
}

static const char *const op_name[] = {
    "", "BIND", "ALLOC", "FREE", "ZERO", "COPY", "SUM_SQUARES", "ABS_MAX", "UPDATE",
    "UPDATE_CHECK", "SAM_PERTURB", "SAM_SQUARES", "SWAP", "EMA", "SWA", "SCALE", "AXPBY", "DOT"};

int main(int argc, char **argv)
{
    const char *path = "data/digits.csv";
    long epochs = 20;
    int check = 0, i, same, ok;
    digits d;
    run *r = calloc(2, sizeof *r);
    size_t n_train;
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--check"))
            check = 1;
        else if (!strcmp(argv[i], "--data") && i + 1 < argc)
            path = argv[++i];
        else if (!strcmp(argv[i], "--epochs") && i + 1 < argc &&
                 !parse_long(argv[++i], 1, 1000, &epochs))
            ;
        else {
            fprintf(stderr, "usage: backend [--data CSV] [--epochs E] [--check]\n");
            return 2;
        }
    }
    if (!r || digits_load(path, &d))
        return 2;
    if (shuffle_rows(&d))
        return 2;
    n_train = d.n - d.n / 5;
    for (i = 0; i < 2; i++) {
        regopt_status st = setup(&r[i], i, d.n);
        if (st == REGOPT_OK)
            st = train(&r[i], &d, n_train, epochs);
        if (st != REGOPT_OK) {
            fprintf(stderr, "backend: %s run: %s: %s\n", i ? "backend" : "built-in",
                    regopt_status_string(st), r[i].t ? regopt_trainer_message(r[i].t)
                                                     : regopt_last_error_message());
            return 1;
        }
    }
    same = !memcmp(r[0].net.w1, r[1].net.w1, r[0].net.in * r[0].net.hid * sizeof(float)) &&
           !memcmp(r[0].net.w2, r[1].net.w2, r[0].net.hid * r[0].net.out * sizeof(float)) &&
           !memcmp(r[0].net.b1, r[1].net.b1, r[0].net.hid * sizeof(float)) &&
           !memcmp(r[0].net.b2, r[1].net.b2, r[0].net.out * sizeof(float));
    printf("SAM + R-Drop + MESA on AdamW, %ld epochs of digits:\n", epochs);
    printf("  built-in          test accuracy %.4f\n", r[0].acc);
    printf("  through a backend test accuracy %.4f  (tensors PROT_NONE to the library)\n",
           r[1].acc);
    printf("  final weights: %s\n", same ? "the same bits" : "DIFFERENT");
    printf("  backend operations per step:");
    for (i = REGOPT_VOP_ZERO; i < (int)(sizeof op_name / sizeof *op_name); i++)
        if (r[1].dev.calls[i])
            printf(" %s %.0f", op_name[i],
                   (double)r[1].dev.calls[i] / (double)(epochs * (long)(n_train / 32)));
    printf("\n");
    ok = same && r[0].acc >= 0.95;
    for (i = 0; i < 2; i++)
        teardown(&r[i]);
    digits_free(&d);
    free(r);
    return check && !ok ? 1 : 0;
}
