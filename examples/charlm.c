/* charlm.c — a token-level task with padded batches: a character language
 * model trained through libregopt, with or without R-Drop.
 *
 *   ./examples/charlm [--text FILE] [--rdrop ALPHA] [--epochs N] ...
 *
 * Every line of a text (default: the GNU GPL v3 that every Debian system
 * ships in /usr/share/common-licenses) is a sequence; a batch holds several
 * lines padded to the longest one, one row per character position. The
 * model predicts each character from the CTX characters before it: an
 * embedding table, a hidden layer with ReLU and dropout, and a softmax over
 * the character set. Padded positions carry mask 0 (the library's
 * convention: 1 = keep, 0 = padding) and whatever label; the library gives
 * them no loss and no gradient, in the task loss and in R-Drop's KL term.
 *
 * It prints the held-out cross-entropy in bits per character. */
#include "cli.h"

#include <cblas.h>
#include <regopt.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#define VOCAB 96 /* 0 = start/padding, 1..95 = printable ASCII 32..126 */
#define CTX 4    /* characters of context */
#define EMB 16   /* embedding width */
#define MAXLEN 80
#define SLOTS 2  /* R-Drop's two passes */

/* ---- data ----------------------------------------------------------------- */

typedef struct corpus {
    size_t n;          /* lines */
    int32_t *tok;      /* n x MAXLEN character ids */
    size_t *len;       /* characters per line (1..MAXLEN) */
} corpus;

static int char_id(int c) { return c >= 32 && c <= 126 ? c - 31 : 0; }

static int load_lines(const char *path, corpus *c)
{
    FILE *f = fopen(path, "r");
    char line[4096];
    size_t cap = 1024;
    if (!f) {
        fprintf(stderr, "charlm: cannot open %s\n", path);
        return -1;
    }
    c->n = 0;
    c->tok = malloc(cap * MAXLEN * sizeof *c->tok);
    c->len = malloc(cap * sizeof *c->len);
    while (c->tok && c->len && fgets(line, sizeof line, f)) {
        size_t i = 0, k = 0;
        while (line[i] == ' ' || line[i] == '\t')
            i++;
        for (; line[i] && line[i] != '\n' && k < MAXLEN; i++)
            if (char_id((unsigned char)line[i]))
                c->tok[c->n * MAXLEN + k++] = char_id((unsigned char)line[i]);
        if (k < 2)
            continue;
        c->len[c->n++] = k;
        if (c->n == cap) {
            int32_t *t = realloc(c->tok, 2 * cap * MAXLEN * sizeof *t);
            size_t *l = realloc(c->len, 2 * cap * sizeof *l);
            if (t)
                c->tok = t;
            if (l)
                c->len = l;
            if (!t || !l)
                break;
            cap *= 2;
        }
    }
    fclose(f);
    return c->n >= 20 ? 0 : -1;
}

/* A padded batch of lines [first, first + count): row r = line b, position
 * i (r = b * T + i) predicts tok[i] from tok[i - CTX .. i - 1]. */
typedef struct lm_batch {
    size_t rows, T;
    int32_t ctx[64 * MAXLEN * CTX];
    int32_t labels[64 * MAXLEN];
    uint8_t mask[64 * MAXLEN];
} lm_batch;

static void make_batch(const corpus *c, size_t first, size_t count, lm_batch *b)
{
    size_t i, j, k, T = 0;
    for (i = 0; i < count; i++)
        T = c->len[first + i] > T ? c->len[first + i] : T;
    b->T = T;
    b->rows = count * T;
    for (i = 0; i < count; i++) {
        const int32_t *t = c->tok + (first + i) * MAXLEN;
        for (j = 0; j < T; j++) {
            size_t r = i * T + j;
            int real = j < c->len[first + i];
            for (k = 0; k < CTX; k++)
                b->ctx[r * CTX + k] = real && j >= CTX - k ? t[j - (CTX - k)] : 0;
            b->mask[r] = (uint8_t)real;
            b->labels[r] = real ? t[j] : -100; /* padding: any value, ignored */
        }
    }
}

/* ---- the model ------------------------------------------------------------ */

typedef struct lm {
    size_t hid, max_rows;
    float drop;
    float *emb, *w1, *b1, *w2, *b2;      /* VOCAB x EMB, CTX*EMB x hid, hid, hid x VOCAB, VOCAB */
    float *gemb, *gw1, *gb1, *gw2, *gb2;
    float *x[SLOTS], *h[SLOTS], *keep[SLOTS]; /* per slot: embedded input, hidden, dropout */
    const int32_t *ids[SLOTS];
    float *dh, *dx;
} lm;

static int lm_forward(const regopt_pass *p, void *user)
{
    lm *m = user;
    const lm_batch *b = p->batch;
    size_t n = p->rows, H = m->hid, D = CTX * EMB, r, k;
    int s = p->slot;
    if (s < 0 || s >= SLOTS || n > m->max_rows)
        return 1;
    m->ids[s] = b->ctx + p->row_offset * CTX;
    for (r = 0; r < n; r++) /* embedding lookup, concatenated */
        for (k = 0; k < CTX; k++)
            memcpy(m->x[s] + r * D + k * EMB, m->emb + (size_t)m->ids[s][r * CTX + k] * EMB,
                   EMB * sizeof(float));
    for (r = 0; r < n; r++)
        memcpy(m->h[s] + r * H, m->b1, H * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)H, (int)D, 1.0f,
                m->x[s], (int)D, m->w1, (int)H, 1.0f, m->h[s], (int)H);
    if ((p->flags & REGOPT_PASS_TRAIN) && m->drop > 0.0f) {
        float inv = 1.0f / (1.0f - m->drop);
        if (regopt_random_uniform(p->seed, p->row_offset * H, m->keep[s], n * H) != REGOPT_OK)
            return 2;
        for (k = 0; k < n * H; k++)
            m->keep[s][k] = m->keep[s][k] >= m->drop ? inv : 0.0f;
    } else {
        for (k = 0; k < n * H; k++)
            m->keep[s][k] = 1.0f;
    }
    for (k = 0; k < n * H; k++)
        m->h[s][k] = m->h[s][k] > 0.0f ? m->h[s][k] * m->keep[s][k] : 0.0f;
    for (r = 0; r < n; r++)
        memcpy(p->outputs + r * VOCAB, m->b2, VOCAB * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, VOCAB, (int)H, 1.0f, m->h[s],
                (int)H, m->w2, VOCAB, 1.0f, p->outputs, VOCAB);
    return 0;
}

static int lm_backward(const regopt_pass *p, void *user)
{
    lm *m = user;
    size_t n = p->rows, H = m->hid, D = CTX * EMB, r, k, j;
    int s = p->slot;
    const float *dz = p->d_outputs;
    if (s < 0 || s >= SLOTS || n > m->max_rows || (p->flags & REGOPT_PASS_NO_PARAM_GRAD))
        return 1;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)H, VOCAB, (int)n, 1.0f, m->h[s],
                (int)H, dz, VOCAB, 1.0f, m->gw2, VOCAB);
    for (r = 0; r < n; r++)
        for (j = 0; j < VOCAB; j++)
            m->gb2[j] += dz[r * VOCAB + j];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)H, VOCAB, 1.0f, dz, VOCAB,
                m->w2, VOCAB, 0.0f, m->dh, (int)H);
    for (k = 0; k < n * H; k++)
        m->dh[k] = m->h[s][k] > 0.0f ? m->dh[k] * m->keep[s][k] : 0.0f;
    for (r = 0; r < n; r++)
        for (j = 0; j < H; j++)
            m->gb1[j] += m->dh[r * H + j];
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)D, (int)H, (int)n, 1.0f, m->x[s],
                (int)D, m->dh, (int)H, 1.0f, m->gw1, (int)H);
    /* into the embedding table: scatter-add d(input) by token id */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)D, (int)H, 1.0f, m->dh,
                (int)H, m->w1, (int)H, 0.0f, m->dx, (int)D);
    for (r = 0; r < n; r++)
        for (k = 0; k < CTX; k++)
            cblas_saxpy(EMB, 1.0f, m->dx + r * D + k * EMB, 1,
                        m->gemb + (size_t)m->ids[s][r * CTX + k] * EMB, 1);
    return 0;
}

static float *zeros(size_t n) { return calloc(n ? n : 1, sizeof(float)); }

static int lm_init(lm *m, size_t hid, size_t max_rows, float drop, uint64_t seed)
{
    size_t D = CTX * EMB, i, s;
    memset(m, 0, sizeof *m);
    m->hid = hid;
    m->max_rows = max_rows;
    m->drop = drop;
    m->emb = zeros(VOCAB * EMB);
    m->w1 = zeros(D * hid);
    m->b1 = zeros(hid);
    m->w2 = zeros(hid * VOCAB);
    m->b2 = zeros(VOCAB);
    m->gemb = zeros(VOCAB * EMB);
    m->gw1 = zeros(D * hid);
    m->gb1 = zeros(hid);
    m->gw2 = zeros(hid * VOCAB);
    m->gb2 = zeros(VOCAB);
    m->dh = zeros(max_rows * hid);
    m->dx = zeros(max_rows * D);
    if (!m->emb || !m->w1 || !m->b1 || !m->w2 || !m->b2 || !m->gemb || !m->gw1 || !m->gb1 ||
        !m->gw2 || !m->gb2 || !m->dh || !m->dx)
        return -1;
    for (s = 0; s < SLOTS; s++) {
        m->x[s] = zeros(max_rows * D);
        m->h[s] = zeros(max_rows * hid);
        m->keep[s] = zeros(max_rows * hid);
        if (!m->x[s] || !m->h[s] || !m->keep[s])
            return -1;
    }
    if (regopt_random_normal(seed, 0, m->emb, VOCAB * EMB) ||
        regopt_random_normal(seed, 1u << 20, m->w1, D * hid) ||
        regopt_random_normal(seed, 1u << 24, m->w2, hid * VOCAB))
        return -1;
    for (i = 0; i < VOCAB * EMB; i++)
        m->emb[i] *= 0.5f;
    for (i = 0; i < D * hid; i++)
        m->w1[i] *= sqrtf(2.0f / (float)D);
    for (i = 0; i < hid * VOCAB; i++)
        m->w2[i] *= sqrtf(1.0f / (float)hid);
    return 0;
}

static void lm_free(lm *m)
{
    size_t s;
    free(m->emb); free(m->w1); free(m->b1); free(m->w2); free(m->b2);
    free(m->gemb); free(m->gw1); free(m->gb1); free(m->gw2); free(m->gb2);
    free(m->dh); free(m->dx);
    for (s = 0; s < SLOTS; s++) {
        free(m->x[s]);
        free(m->h[s]);
        free(m->keep[s]);
    }
}

static regopt_status lm_register(lm *m, regopt_model *model)
{
    regopt_status st;
    size_t D = CTX * EMB;
    if ((st = regopt_model_add_param(model, "emb", m->emb, m->gemb, VOCAB * EMB,
                                     REGOPT_DTYPE_FLOAT32, 1)) ||
        (st = regopt_model_add_param(model, "w1", m->w1, m->gw1, D * m->hid,
                                     REGOPT_DTYPE_FLOAT32, 0)) ||
        (st = regopt_model_add_param(model, "b1", m->b1, m->gb1, m->hid,
                                     REGOPT_DTYPE_FLOAT32, 1)) ||
        (st = regopt_model_add_param(model, "w2", m->w2, m->gw2, m->hid * VOCAB,
                                     REGOPT_DTYPE_FLOAT32, 0)) ||
        (st = regopt_model_add_param(model, "b2", m->b2, m->gb2, VOCAB,
                                     REGOPT_DTYPE_FLOAT32, 1)) ||
        (st = regopt_model_set_output_width(model, VOCAB)) ||
        (st = regopt_model_set_slots(model, SLOTS)))
        return st;
    return regopt_model_set_callbacks(model, lm_forward, lm_backward, m, NULL);
}

/* ---- training --------------------------------------------------------------- */

#define BATCH_LINES 16

/* Mean cross-entropy over the real characters of lines [first, last). */
static int held_out_bits(regopt_trainer *t, const corpus *c, size_t first, size_t last,
                         lm_batch *b, double *bits)
{
    double sum = 0.0, chars = 0.0;
    size_t i, r;
    for (i = first; i < last; i += BATCH_LINES) {
        size_t count = last - i < BATCH_LINES ? last - i : BATCH_LINES, real = 0;
        regopt_batch rb;
        double loss;
        make_batch(c, i, count, b);
        regopt_batch_init(&rb);
        rb.data = b;
        rb.rows = b->rows;
        rb.labels = b->labels;
        rb.mask = b->mask;
        if (regopt_trainer_evaluate(t, &rb, &loss, NULL) != REGOPT_OK) {
            fprintf(stderr, "charlm: evaluate: %s\n", regopt_trainer_message(t));
            return -1;
        }
        for (r = 0; r < b->rows; r++)
            real += b->mask[r];
        sum += loss * (double)real;
        chars += (double)real;
    }
    *bits = sum / chars / log(2.0);
    return 0;
}

int main(int argc, char **argv)
{
    const char *path = "/usr/share/common-licenses/GPL-3";
    long epochs = 12, hidden = 128, seed = 1;
    double alpha = -1.0, lr = 1e-2, drop = 0.3, max_bits = -1.0;
    corpus c = {0, NULL, NULL};
    lm m;
    lm_batch *b = NULL;
    regopt_model *model = NULL;
    regopt_optimizer *opt = NULL;
    regopt_trainer *tr = NULL;
    regopt_regularizer *rdrop = NULL;
    size_t n_train, i;
    long e;
    int a, rc = 1;
    double bits = 0.0;
    for (a = 1; a < argc; a++) {
        const char *k = argv[a], *v = a + 1 < argc ? argv[a + 1] : "";
        int bad = 0;
        if (!strcmp(k, "--help")) {
            printf("usage: charlm [--text FILE] [--rdrop ALPHA] [--epochs N] [--hidden N]\n"
                   "              [--lr X] [--dropout X] [--seed N] [--max-bits X]\n");
            return 0;
        } else if (!strcmp(k, "--text")) path = v;
        else if (!strcmp(k, "--rdrop")) bad = parse_double(v, 0, 1e4, &alpha);
        else if (!strcmp(k, "--epochs")) bad = parse_long(v, 1, 10000, &epochs);
        else if (!strcmp(k, "--hidden")) bad = parse_long(v, 1, 4096, &hidden);
        else if (!strcmp(k, "--seed")) bad = parse_long(v, 0, 2147483647L, &seed);
        else if (!strcmp(k, "--lr")) bad = parse_double(v, 1e-9, 10, &lr);
        else if (!strcmp(k, "--dropout")) bad = parse_double(v, 0, 0.9, &drop);
        else if (!strcmp(k, "--max-bits")) bad = parse_double(v, 0, 100, &max_bits);
        else {
            fprintf(stderr, "charlm: unknown option %s (see --help)\n", k);
            return 2;
        }
        if (bad || a + 1 >= argc) {
            fprintf(stderr, "charlm: bad value for %s: '%s'\n", k, v);
            return 2;
        }
        a++;
    }
    memset(&m, 0, sizeof m);
    b = malloc(sizeof *b);
    if (!b || load_lines(path, &c) != 0) {
        fprintf(stderr, "charlm: no usable text in %s\n", path);
        goto done;
    }
    n_train = c.n - c.n / 10;
    if (lm_init(&m, (size_t)hidden, BATCH_LINES * MAXLEN, (float)drop, (uint64_t)seed))
        goto done;
    model = regopt_model_create(NULL, NULL);
    opt = regopt_optimizer_create(REGOPT_ADAMW, NULL, NULL);
    if (!model || !opt || lm_register(&m, model) ||
        regopt_optimizer_set_double(opt, REGOPT_OPT_LR, lr) ||
        regopt_optimizer_set_group(opt, 1, REGOPT_GROUP_WEIGHT_DECAY, 0.0) ||
        !(tr = regopt_trainer_create(model, opt, NULL)) ||
        regopt_trainer_set_int(tr, REGOPT_TRAINER_SEED, seed) ||
        regopt_trainer_reserve(tr, BATCH_LINES * MAXLEN)) {
        fprintf(stderr, "charlm: setup: %s\n", tr ? regopt_trainer_message(tr)
                                                  : regopt_last_error_message());
        goto done;
    }
    if (alpha >= 0.0) { /* the regularizer is a handle: create, configure, attach */
        if (!(rdrop = regopt_regularizer_create(REGOPT_REG_RDROP, NULL, NULL)) ||
            regopt_regularizer_set_double(rdrop, REGOPT_RDROP_ALPHA, alpha)) {
            fprintf(stderr, "charlm: R-Drop: %s\n", rdrop ? regopt_regularizer_message(rdrop)
                                                         : regopt_last_error_message());
            goto done;
        }
        if (regopt_trainer_attach(tr, rdrop)) {
            fprintf(stderr, "charlm: R-Drop: %s\n", regopt_trainer_message(tr));
            goto done;
        }
    }
    printf("charlm: %zu lines of %s (%zu train), context %d, hidden %ld, dropout %.2f%s\n", c.n,
           path, n_train, CTX, hidden, drop, alpha >= 0.0 ? ", R-Drop" : "");
    for (e = 1; e <= epochs; e++) {
        for (i = 0; i + BATCH_LINES <= n_train; i += BATCH_LINES) {
            regopt_batch rb;
            make_batch(&c, i, BATCH_LINES, b);
            regopt_batch_init(&rb);
            rb.data = b;
            rb.rows = b->rows;
            rb.labels = b->labels;
            rb.mask = b->mask; /* 1 = a real character, 0 = padding */
            if (regopt_trainer_step(tr, &rb, 1) != REGOPT_OK) {
                fprintf(stderr, "charlm: step: %s\n", regopt_trainer_message(tr));
                goto done;
            }
        }
        if (held_out_bits(tr, &c, n_train, c.n, b, &bits))
            goto done;
        printf("epoch %2ld  held-out %.4f bits/char\n", e, bits);
    }
    printf("RESULT model=charlm rdrop_alpha=%g heldout_bits_per_char=%.4f\n",
           alpha >= 0.0 ? alpha : 0.0, bits);
    rc = max_bits >= 0.0 && bits > max_bits ? 1 : 0;
    if (rc)
        fprintf(stderr, "charlm: %.4f bits/char is above the required %.4f\n", bits, max_bits);
done:
    regopt_trainer_free(tr); /* detaches R-Drop: free it after */
    regopt_regularizer_free(rdrop);
    regopt_optimizer_free(opt);
    regopt_model_free(model);
    lm_free(&m);
    free(c.tok);
    free(c.len);
    free(b);
    return rc;
}
