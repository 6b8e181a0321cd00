/* fuzz_checkpoint.c — the checkpoint loader against arbitrary bytes.
 *
 * Input: one control byte, then the checkpoint (format 2). Control bits 1-2
 * pick the trainer the bytes are loaded into (plain AdamW, AdamW+SAM, AdamW+
 * SMART+Bregman, SGD+R-Drop; regularizers are handles attached to it, freed
 * after it); bit 0 asks the harness to repair every CRC (each
 * section's, then the header's) before loading, so that mutations reach the
 * section parsers and the validation behind the CRCs instead of dying at
 * the first CRC check; bit 3 picks the read-callback path instead of the
 * buffer; bits 4-5 are the load flags (REGOPT_CHECKPOINT_PARAMS, _OPTIONS);
 * bit 6 attaches a user term with 8 bytes of state as well (its load_state
 * refuses sizes other than 8 and counts above 2^40).
 *
 * Invariants: every status is a documented code and the message sane; a
 * refused load leaves the trainer's whole state and the host's tensors
 * bit-identical, and its regularizers attached as they were; an accepted
 * one round-trips (save, load, save gives the same bytes) and a step after
 * it either succeeds or fails cleanly.
 *
 * Build with -DFUZZ_SEED_MAIN (and without replay_main.c) for a program
 * that writes the seed corpus: a valid checkpoint of each trainer, with and
 * without tensors and options:
 *   cc -Iinclude -DFUZZ_SEED_MAIN fuzz/fuzz_checkpoint.c -Llib -lregopt -lm \
 *      -o seeds && ./seeds fuzz/corpus/checkpoint */
#include "fuzz.h"

#define NW 6 /* w: 3 inputs x 2 outputs */
#define NB 2

typedef struct host {
    float w[NW], b[NB], gw[NW], gb[NB], frozen[2];
    float u[3][4 * 3]; /* per slot: the (perturbed) inputs of up to 4 rows */
} host;

static int forward(const regopt_pass *p, void *user)
{
    host *h = user;
    const float *x = p->batch;
    float *u = h->u[p->slot];
    size_t i, j, k;
    if (p->rows > 4 || p->slot < 0 || p->slot > 2)
        return 1;
    for (i = 0; i < p->rows * 3; i++)
        u[i] = x[p->row_offset * 3 + i] + (p->input_perturbation ? p->input_perturbation[i] : 0);
    for (i = 0; i < p->rows; i++)
        for (k = 0; k < 2; k++) {
            float z = h->b[k];
            for (j = 0; j < 3; j++)
                z += u[i * 3 + j] * h->w[j * 2 + k];
            p->outputs[i * 2 + k] = z;
        }
    return 0;
}

static int backward(const regopt_pass *p, void *user)
{
    host *h = user;
    const float *u = h->u[p->slot];
    size_t i, j, k;
    for (i = 0; i < p->rows; i++)
        for (j = 0; j < 3; j++) {
            float s = 0;
            for (k = 0; k < 2; k++)
                s += p->d_outputs[i * 2 + k] * h->w[j * 2 + k];
            if (p->d_input)
                p->d_input[i * 3 + j] = s;
        }
    if (p->flags & REGOPT_PASS_NO_PARAM_GRAD)
        return 0;
    for (i = 0; i < p->rows; i++)
        for (k = 0; k < 2; k++) {
            h->gb[k] += p->d_outputs[i * 2 + k];
            for (j = 0; j < 3; j++)
                h->gw[j * 2 + k] += u[i * 3 + j] * p->d_outputs[i * 2 + k];
        }
    return 0;
}

typedef struct rig {
    host h;
    regopt_model *m;
    regopt_optimizer *o;
    regopt_trainer *t;
    regopt_regularizer *reg[3]; /* attached, freed after the trainer */
    size_t nreg;
    uint64_t commits; /* the user term's state */
} rig;

/* The user term: 0.001 sum_k z_ik^2 per row, a weighted mean; its state is
 * the number of updates it has seen. */
static int term_value(const regopt_term_view *v, double *value, void *user)
{
    size_t i, k;
    double sum = 0;
    (void)user;
    for (i = 0; i < v->rows; i++) {
        double wi = (v->batch->mask && !v->batch->mask[i]) ? 0.0 : 1.0;
        if (v->batch->weights)
            wi *= v->batch->weights[i];
        for (k = 0; k < v->output_width; k++) {
            float z = v->outputs[0][i * v->output_width + k];
            sum += wi * 0.001 * (double)z * z;
            v->d_outputs[0][i * v->output_width + k] = (float)(v->inv_weight * wi * 0.002 * z);
        }
    }
    *value = v->inv_weight * sum;
    return 0;
}

static size_t term_size(void *user)
{
    (void)user;
    return 8;
}

static int term_save(void *buf, size_t size, void *user)
{
    if (size != 8)
        return 1;
    memcpy(buf, user, 8);
    return 0;
}

static int term_load(const void *buf, size_t size, void *user)
{
    uint64_t v;
    if (size != 8)
        return 1;
    memcpy(&v, buf, 8);
    if (v > (uint64_t)1 << 40)
        return 1;
    memcpy(user, &v, 8);
    return 0;
}

static void term_committed(uint64_t step, void *user)
{
    (void)step;
    ++*(uint64_t *)user;
}

/* Create a regularizer of `kind` and attach it; 0 on success. */
static int rig_attach(rig *r, regopt_regularizer_kind kind)
{
    regopt_regularizer *g = regopt_regularizer_create(kind, NULL, NULL);
    if (!g)
        return 1;
    r->reg[r->nreg++] = g;
    return regopt_trainer_attach(r->t, g) != REGOPT_OK;
}

static int rig_make(rig *r, int config, int term)
{
    size_t i;
    memset(r, 0, sizeof *r);
    for (i = 0; i < NW; i++)
        r->h.w[i] = 0.1f * (float)i - 0.2f;
    r->h.frozen[0] = 1.0f;
    r->m = regopt_model_create(NULL, NULL);
    r->o = regopt_optimizer_create(config == 3 ? REGOPT_SGD : REGOPT_ADAMW, NULL, NULL);
    if (!r->m || !r->o ||
        regopt_model_add_param(r->m, "w", r->h.w, r->h.gw, NW, REGOPT_DTYPE_FLOAT32, 0) ||
        regopt_model_add_param(r->m, "b", r->h.b, r->h.gb, NB, REGOPT_DTYPE_FLOAT32, 1) ||
        regopt_model_add_param(r->m, "frozen", r->h.frozen, NULL, 2, REGOPT_DTYPE_FLOAT32, 1) ||
        regopt_model_set_output_width(r->m, 2) || regopt_model_set_input_width(r->m, 3) ||
        regopt_model_set_slots(r->m, 3) ||
        regopt_model_set_callbacks(r->m, forward, backward, &r->h, NULL))
        return 1;
    if (config == 3 && regopt_optimizer_set_double(r->o, REGOPT_OPT_MOMENTUM, 0.9))
        return 1;
    r->t = regopt_trainer_create(r->m, r->o, NULL);
    if (!r->t)
        return 1;
    if (term) {
        regopt_term_ops ops;
        memset(&ops, 0, sizeof ops);
        ops.size = sizeof ops;
        ops.name = "fz.term";
        ops.value = term_value;
        ops.state_size = term_size;
        ops.save_state = term_save;
        ops.load_state = term_load;
        ops.committed = term_committed;
        r->reg[r->nreg] = regopt_regularizer_create_term(&ops, &r->commits, NULL, NULL, NULL);
        if (!r->reg[r->nreg])
            return 1;
        if (regopt_trainer_attach(r->t, r->reg[r->nreg++]) != REGOPT_OK)
            return 1;
    }
    if (config == 1)
        return rig_attach(r, REGOPT_REG_SAM);
    if (config == 2)
        return rig_attach(r, REGOPT_REG_SMART) || rig_attach(r, REGOPT_REG_BREGMAN);
    if (config == 3)
        return rig_attach(r, REGOPT_REG_RDROP);
    return 0;
}

static void rig_free(rig *r)
{
    size_t i;
    regopt_trainer_free(r->t); /* detaches the regularizers */
    for (i = 0; i < r->nreg; i++)
        regopt_regularizer_free(r->reg[i]);
    regopt_optimizer_free(r->o);
    regopt_model_free(r->m);
}


static regopt_status rig_step(rig *r, int s)
{
    float x[4 * 3];
    int32_t y[4];
    regopt_batch b;
    size_t i;
    for (i = 0; i < 12; i++)
        x[i] = (float)((int)((i + (size_t)s) * 5 % 7) - 3) * 0.25f;
    for (i = 0; i < 4; i++)
        y[i] = (int32_t)((i + (size_t)s) % 2);
    regopt_batch_init(&b);
    b.data = x;
    b.rows = 4;
    b.labels = y;
    return regopt_trainer_step(r->t, &b, 1);
}

#define ALL (REGOPT_CHECKPOINT_PARAMS | REGOPT_CHECKPOINT_OPTIONS)

#ifndef FUZZ_SEED_MAIN
/* The regularizers are still attached, in the same number (a load never
 * attaches or detaches anything). */
static int rig_regs_intact(const rig *r)
{
    size_t i;
    if (regopt_trainer_regularizer_count(r->t) != r->nreg)
        return 0;
    for (i = 0; i < r->nreg; i++)
        if (regopt_regularizer_get_trainer(r->reg[i]) != r->t)
            return 0;
    return 1;
}


/* The trainer's whole state (malloc'ed; NULL on failure). */
static uint8_t *snapshot(rig *r, size_t *n)
{
    uint8_t *buf;
    if (regopt_trainer_checkpoint_size(r->t, ALL, n) != REGOPT_OK)
        return NULL;
    buf = malloc(*n);
    if (buf && regopt_trainer_save_buffer(r->t, ALL, buf, *n, NULL) != REGOPT_OK) {
        free(buf);
        return NULL;
    }
    return buf;
}


static uint32_t crc32_bits(const uint8_t *p, size_t n, uint32_t crc)
{
    size_t i;
    int b;
    crc = ~crc;
    for (i = 0; i < n; i++) {
        crc ^= p[i];
        for (b = 0; b < 8; b++)
            crc = crc & 1 ? 0xEDB88320u ^ (crc >> 1) : crc >> 1;
    }
    return ~crc;
}

static uint64_t rd64(const uint8_t *p)
{
    uint64_t v = 0;
    int i;
    for (i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void wr32(uint8_t *p, uint32_t v)
{
    int i;
    for (i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Recompute the CRC of every section that lies inside the buffer, then the
 * header's (over its first 28 bytes and the table). */
static void repair(uint8_t *c, size_t n)
{
    uint32_t count, i;
    if (n < 32)
        return;
    count = (uint32_t)c[12] | (uint32_t)c[13] << 8 | (uint32_t)c[14] << 16 |
            (uint32_t)c[15] << 24;
    if (count > 64 || 32 + (size_t)count * 48 > n)
        return;
    for (i = 0; i < count; i++) {
        uint8_t *e = c + 32 + 48 * i;
        uint64_t off = rd64(e + 24), len = rd64(e + 32);
        if (off <= n && len <= n - off)
            wr32(e + 40, crc32_bits(c + off, (size_t)len, 0));
    }
    wr32(c + 28, crc32_bits(c + 32, (size_t)count * 48, crc32_bits(c, 28, 0)));
}

typedef struct reader {
    const uint8_t *p;
    size_t n, pos;
} reader;

static int read_cb(void *dst, size_t size, void *user)
{
    reader *r = user;
    if (size > r->n - r->pos)
        return 1;
    memcpy(dst, r->p + r->pos, size);
    r->pos += size;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    rig r;
    uint8_t *ck, *before, *after;
    size_t n = size ? size - 1 : 0, nb = 0, na = 0;
    int ctl = size ? data[0] : 0;
    uint32_t flags = (uint32_t)(ctl >> 4) & ALL;
    regopt_status st;
    FZ_CHECK(rig_make(&r, (ctl >> 1) & 3, (ctl >> 6) & 1) == 0, "setup failed");
    FZ_CHECK(rig_step(&r, 0) == REGOPT_OK, "first step failed: %s", regopt_trainer_message(r.t));
    ck = malloc(n ? n : 1);
    FZ_CHECK(ck != NULL, "out of memory");
    if (n)
        memcpy(ck, data + 1, n);
    if (ctl & 1)
        repair(ck, n);
    before = snapshot(&r, &nb);
    FZ_CHECK(before != NULL, "snapshot failed");
    if (ctl & 8) {
        reader rd = {ck, n, 0};
        st = regopt_trainer_load(r.t, flags, read_cb, &rd);
    } else {
        st = regopt_trainer_load_buffer(r.t, flags, ck, n);
    }
    FZ_CHECK(fz_known_status(st), "load returned %d", (int)st);
    FZ_CHECK(fz_sane_message(regopt_trainer_message(r.t)), "bad message");
    FZ_CHECK(rig_regs_intact(&r), "the load changed the attached regularizers");
    after = snapshot(&r, &na);
    FZ_CHECK(after != NULL, "snapshot after the load failed");
    if (st != REGOPT_OK) {
        FZ_CHECK(na == nb && memcmp(before, after, nb) == 0,
                 "a refused load (%s) changed the trainer", regopt_trainer_message(r.t));
    } else {
        /* accepted: what it holds now saves and loads back to the same bytes */
        uint8_t *again;
        size_t ng = 0;
        FZ_CHECK(regopt_trainer_load_buffer(r.t, ALL, after, na) == REGOPT_OK,
                 "its own checkpoint was refused: %s", regopt_trainer_message(r.t));
        again = snapshot(&r, &ng);
        FZ_CHECK(again && ng == na && memcmp(again, after, na) == 0, "no round trip");
        free(again);
        st = rig_step(&r, 1);
        FZ_CHECK(fz_known_status(st), "step returned %d", (int)st);
    }
    free(after);
    free(before);
    free(ck);
    rig_free(&r);
    return 0;
}

#else /* FUZZ_SEED_MAIN: write the seed corpus */

static int write_seed(const char *dir, const char *name, int ctl, const uint8_t *ck, size_t n)
{
    char path[512];
    FILE *f;
    uint8_t c = (uint8_t)ctl;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    f = fopen(path, "wb");
    if (!f || fwrite(&c, 1, 1, f) != 1 || fwrite(ck, 1, n, f) != n) {
        fprintf(stderr, "seeds: cannot write %s\n", path);
        if (f)
            fclose(f);
        return 1;
    }
    return fclose(f) != 0;
}

int main(int argc, char **argv)
{
    static const char *const names[4] = {"adamw", "sam", "smart_bregman", "sgd_rdrop"};
    int config, bad = 0;
    if (argc != 2) {
        fprintf(stderr, "usage: seeds DIR\n");
        return 2;
    }
    for (config = 0; config < 8; config++) {
        rig r;
        uint8_t buf[16384];
        size_t n = 0;
        char name[64];
        uint32_t flags;
        int term = config >> 2, kind = config & 3;
        if (rig_make(&r, kind, term) || rig_step(&r, 0) || rig_step(&r, 1)) {
            fprintf(stderr, "seeds: setup %s%s failed\n", names[kind], term ? "_term" : "");
            return 1;
        }
        for (flags = 0; flags <= ALL; flags += ALL) {
            if (regopt_trainer_save_buffer(r.t, flags, buf, sizeof buf, &n) != REGOPT_OK) {
                fprintf(stderr, "seeds: %s\n", regopt_trainer_message(r.t));
                return 1;
            }
            snprintf(name, sizeof name, "%s%s%s", names[kind], term ? "_term" : "",
                     flags ? "_all" : "_state");
            bad |= write_seed(argv[1], name, term << 6 | kind << 1 | (int)flags << 4, buf, n);
            snprintf(name, sizeof name, "%s%s%s_stream", names[kind], term ? "_term" : "",
                     flags ? "_all" : "_state");
            bad |= write_seed(argv[1], name, term << 6 | kind << 1 | 8 | (int)flags << 4, buf,
                              n);
        }
        rig_free(&r);
    }
    return bad;
}

#endif
