/* fuzz_batch.c — batch descriptors against a tiny host model: a step with
 * fuzzed descriptors (size field and stride, rows, labels, targets, mask,
 * weights, input_rows, micro-batch count) under a fuzzed loss and set of
 * regularizers (handles, attached to the trainer and freed after it).
 *
 * The host keeps its side of the contract (every array holds what `rows`
 * says; the library must not read past it, which ASan checks). Invariants:
 * a documented status, a sane message, and a failed step leaves weights,
 * step count and optimizer untouched (the transactional promise); an
 * accepted step leaves finite weights. */
#include "fuzz.h"

#define D 3       /* input (embedding) width */
#define K 3       /* outputs */
#define MAXB 4    /* micro-batches */
#define MAXR 9    /* rows per micro-batch */
#define NW (D * K + K)

typedef struct host {
    float w[NW], g[NW];
    float xin[2 * MAXR * D]; /* inputs of the last forward, perturbation added */
} host;

typedef struct hbatch {
    float x[MAXR * D];
    size_t rows;
} hbatch;

static int forward(const regopt_pass *p, void *user)
{
    host *h = user;
    const hbatch *hb = p->batch;
    size_t i, j, k, n = p->rows, half = n;
    FZ_CHECK(p->size >= sizeof(regopt_pass), "pass size %zu", p->size);
    if (p->flags & REGOPT_PASS_DOUBLED)
        half = n / 2;
    FZ_CHECK(p->row_offset + half <= hb->rows, "pass rows [%zu, +%zu) of a %zu-row batch",
             p->row_offset, half, hb->rows);
    for (i = 0; i < n; i++)
        for (j = 0; j < D; j++) {
            size_t r = p->row_offset + (i < half ? i : i - half);
            float v = hb->x[r * D + j];
            /* the perturbation covers input_rows rows of this pass */
            if (p->input_perturbation && i < p->input_rows)
                v += p->input_perturbation[i * D + j];
            h->xin[i * D + j] = v;
        }
    for (i = 0; i < n; i++)
        for (k = 0; k < K; k++) {
            float z = h->w[D * K + k];
            for (j = 0; j < D; j++)
                z += h->xin[i * D + j] * h->w[j * K + k];
            p->outputs[i * K + k] = z;
        }
    return 0;
}

static int backward(const regopt_pass *p, void *user)
{
    host *h = user;
    size_t i, j, k;
    for (i = 0; i < p->rows; i++)
        for (k = 0; k < K; k++) {
            float d = p->d_outputs[i * K + k];
            if (!(p->flags & REGOPT_PASS_NO_PARAM_GRAD)) {
                h->g[D * K + k] += d;
                for (j = 0; j < D; j++)
                    h->g[j * K + k] += h->xin[i * D + j] * d;
            }
            if (p->d_input && i < p->input_rows)
                for (j = 0; j < D; j++)
                    p->d_input[i * D + j] += d * h->w[j * K + k];
        }
    return 0;
}

/* Descriptor arrays, sized by what each descriptor claims. */
typedef struct arrays {
    int32_t labels[MAXB][MAXR];
    float targets[MAXB][MAXR * K];
    uint8_t mask[MAXB][MAXR];
    float weights[MAXB][MAXR];
    hbatch hb[MAXB];
} arrays;

static float fz_float(fz *f) { return (float)fz_double(f); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz f = {data, size};
    host h;
    arrays a;
    /* descriptors at a fuzzed stride; 64-bit words keep them aligned */
    uint64_t store[MAXB * (sizeof(regopt_batch) + 64) / 8 + 1];
    regopt_batch *desc[MAXB];
    regopt_model *m;
    regopt_optimizer *o;
    regopt_trainer *t;
    regopt_regularizer *reg[4] = {NULL, NULL, NULL, NULL};
    static const regopt_regularizer_kind kinds[4] = {REGOPT_REG_SAM, REGOPT_REG_RDROP,
                                                     REGOPT_REG_SMART, REGOPT_REG_BREGMAN};
    regopt_status st;
    size_t i, j, count, stride;
    uint8_t cfg, regs;
    int steps;

    memset(&h, 0, sizeof h);
    memset(&a, 0, sizeof a);
    for (i = 0; i < NW; i++)
        h.w[i] = 0.1f * (float)((int)(i * 5 % 7) - 3);

    cfg = fz_u8(&f);
    regs = fz_u8(&f);
    m = regopt_model_create(NULL, NULL);
    FZ_CHECK(m, "model");
    FZ_CHECK(!regopt_model_add_param(m, "w", h.w, h.g, D * K, REGOPT_DTYPE_FLOAT32, 0) &&
                 !regopt_model_add_param(m, "b", h.w + D * K, h.g + D * K, K,
                                         REGOPT_DTYPE_FLOAT32, 1) &&
                 !regopt_model_set_output_width(m, K) &&
                 !regopt_model_set_callbacks(m, forward, backward, &h, NULL),
             "model setup");
    if (cfg & 1)
        FZ_CHECK(!regopt_model_set_input_width(m, D), "input width");
    if (cfg & 2)
        FZ_CHECK(!regopt_model_set_slots(m, 2), "slots");
    if (cfg & 4)
        FZ_CHECK(!regopt_model_set_capabilities(m, REGOPT_CAP_DOUBLED_BATCH), "caps");
    o = regopt_optimizer_create(cfg & 8 ? REGOPT_SGD : REGOPT_ADAMW, NULL, NULL);
    FZ_CHECK(o, "optimizer");
    FZ_CHECK(!regopt_optimizer_set_double(o, REGOPT_OPT_LR, 0.01), "lr");
    t = regopt_trainer_create(m, o, NULL);
    FZ_CHECK(t, "trainer: %s", regopt_last_error_message());
    st = regopt_trainer_set_int(t, REGOPT_TRAINER_LOSS, (cfg >> 4) % 3); /* CE, MSE, CALLBACK */
    FZ_CHECK(fz_known_status(st), "loss");
    if (cfg & 0x40)
        regopt_trainer_set_double(t, REGOPT_TRAINER_LABEL_SMOOTHING, 0.1);
    /* each regularizer may fail to attach to this model (slots, input
     * width): that is fine, but then it is not attached and nothing else is */
    for (i = 0; i < 4; i++) {
        size_t n_before;
        if (!(regs & (1u << i)))
            continue;
        reg[i] = regopt_regularizer_create(kinds[i], NULL, &st);
        FZ_CHECK(reg[i] != NULL, "create %d: %s", (int)kinds[i], regopt_status_string(st));
        n_before = regopt_trainer_regularizer_count(t);
        st = regopt_trainer_attach(t, reg[i]);
        FZ_CHECK(fz_known_status(st), "attach returned %d", (int)st);
        FZ_CHECK(fz_sane_message(regopt_trainer_message(t)), "message");
        FZ_CHECK((regopt_regularizer_get_trainer(reg[i]) == t) == (st == REGOPT_OK) &&
                     regopt_trainer_regularizer_count(t) == n_before + (st == REGOPT_OK),
                 "attach %d -> %d, but attached %d, %zu -> %zu", (int)kinds[i], (int)st,
                 regopt_regularizer_get_trainer(reg[i]) == t, n_before,
                 regopt_trainer_regularizer_count(t));
    }
    /* options of the handles, attached or not (the input is read as in
     * 0.x, so the committed corpus keeps its meaning) */
    if (regs & 16) {
        int64_t m_rows = 1 + (int64_t)fz_below(&f, 4);
        if (reg[0])
            FZ_CHECK(regopt_regularizer_set_int(reg[0], REGOPT_SAM_M_ROWS, m_rows) == REGOPT_OK,
                     "sam.m_rows %lld: %s", (long long)m_rows,
                     regopt_regularizer_message(reg[0]));
    }
    if ((regs & 32) && reg[1])
        FZ_CHECK(regopt_regularizer_set_int(reg[1], REGOPT_RDROP_DOUBLED, 0) == REGOPT_OK,
                 "rdrop.doubled 0: %s", regopt_regularizer_message(reg[1]));
    if (regs & 64)
        regopt_trainer_reserve(t, fz_below(&f, 2 * MAXR));

    for (steps = 0; steps < 3 && f.n; steps++) {
        float saved[NW];
        double before_step = 0, after_step = 0;
        uint8_t how = fz_u8(&f);
        count = 1 + fz_below(&f, MAXB);
        /* the stride is the first descriptor's size: ours, the oldest
         * accepted, a newer (larger) one, or nonsense */
        switch (how & 3) {
        case 0: stride = sizeof(regopt_batch); break;
        case 1: stride = sizeof(regopt_batch) + 8 * (1 + fz_below(&f, 8)); break;
        case 2: stride = 8 * fz_below(&f, sizeof(regopt_batch) / 8 + 1); break;
        default: stride = sizeof(regopt_batch); break;
        }
        if (stride < sizeof(size_t))
            stride = sizeof(size_t);
        memset(store, 0, sizeof store);
        for (i = 0; i < count; i++) {
            regopt_batch *b = (regopt_batch *)(void *)((unsigned char *)store + i * stride);
            size_t rows = fz_below(&f, MAXR + 1), r;
            uint8_t fields = fz_u8(&f);
            desc[i] = b;
            if (stride < sizeof(regopt_batch)) { /* too small to hold one: only size */
                b->size = stride;
                continue;
            }
            b->size = stride;
            if ((how & 3) == 3 && i > 0) /* a later descriptor disagreeing on its size */
                b->size = (size_t)fz_int64(&f);
            a.hb[i].rows = rows;
            for (r = 0; r < rows * D; r++)
                a.hb[i].x[r] = (float)((int)((i * 31 + r * 7) % 13) - 6) / 4.0f;
            b->data = &a.hb[i];
            b->rows = (fields & 0x80) ? (size_t)fz_int64(&f) : rows;
            if (b->rows > rows) /* the host never lies about its arrays */
                b->rows = rows;
            for (r = 0; r < rows; r++) {
                a.labels[i][r] = (fields & 0x40) ? (int32_t)fz_u32(&f) : (int32_t)(r % K);
                a.mask[i][r] = fz_u8(&f);
                a.weights[i][r] = (fields & 0x20) ? fz_float(&f) : 1.0f;
            }
            for (r = 0; r < rows * K; r++)
                a.targets[i][r] = (fields & 0x10) ? fz_float(&f) : (float)(r % 2);
            b->labels = (fields & 1) ? NULL : a.labels[i];
            b->targets = (fields & 2) ? NULL : a.targets[i];
            b->mask = (fields & 4) ? a.mask[i] : NULL;
            b->weights = (fields & 8) ? a.weights[i] : NULL;
            /* embedding rows: the host has one per row; 0 means "rows" */
            b->input_rows = (fields & 0x80) ? fz_below(&f, rows + 1) : 0;
            /* bytes of a newer header's fields: zero is the only safe value */
            if (stride > sizeof(regopt_batch) && (how & 4))
                ((unsigned char *)b)[sizeof(regopt_batch) + fz_below(&f, stride -
                                                                     sizeof(regopt_batch))] =
                    fz_u8(&f);
        }
        memcpy(saved, h.w, sizeof saved);
        regopt_trainer_get_double(t, REGOPT_STAT_STEP, &before_step);
        st = regopt_trainer_step(t, desc[0], count);
        FZ_CHECK(fz_known_status(st), "step returned %d", (int)st);
        FZ_CHECK(fz_sane_message(regopt_trainer_message(t)), "message");
        regopt_trainer_get_double(t, REGOPT_STAT_STEP, &after_step);
        if (st != REGOPT_OK) {
            FZ_CHECK(memcmp(saved, h.w, sizeof saved) == 0, "failed step (%s) moved the weights",
                     regopt_trainer_message(t));
            FZ_CHECK(after_step == before_step, "failed step counted");
        } else {
            FZ_CHECK(after_step == before_step + 1, "step count %g -> %g", before_step,
                     after_step);
            for (j = 0; j < NW; j++)
                FZ_CHECK(isfinite(h.w[j]), "accepted step left weight %zu = %g", j, h.w[j]);
        }
    }
    regopt_trainer_free(t);
    for (i = 0; i < 4; i++) {
        FZ_CHECK(!reg[i] || regopt_regularizer_get_trainer(reg[i]) == NULL,
                 "still attached after the trainer was freed");
        regopt_regularizer_free(reg[i]);
    }
    regopt_optimizer_free(o);
    regopt_model_free(m);
    return 0;
}
