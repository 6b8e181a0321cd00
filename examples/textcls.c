/* textcls.c — text classification with SMART: which licence does a line of
 * text come from? The host's model is the shape SMART was made for: token
 * ids -> an embedding table -> mean pooling over the line's tokens -> an MLP
 * -> classes. SMART perturbs the embedding OUTPUT (one row per token), and
 * the gradient with respect to it flows back into the embedding table.
 *
 *   ./examples/textcls [--smart LAMBDA] [--bregman MU] [--teacher-kl W] ...
 *
 * --adv fgm|pgd|freelb|vat attaches adversarial training on the same
 * embedding outputs (REGOPT_REG_ADVERSARIAL; --adv-eps, --adv-alpha,
 * --adv-steps), and --labelled F keeps the labels of a fraction F of the
 * training lines only: the others get task_mask 0 (regopt_batch.task_mask),
 * no task loss, but VAT's consistency term -- semi-supervised training.
 *
 * --teacher-kl W adds a user-defined term with a teacher pass
 * (REGOPT_TERM_PASS_TEACHER): W * KL(teacher || student), the distillation
 * direction, from the EMA teacher the Bregman regularizer keeps (attached
 * with mu 0 when --bregman is not given).
 *
 * The data are the licence texts every Debian system ships in
 * /usr/share/common-licenses (GPL-3, Apache-2.0, MPL-2.0, GFDL-1.3,
 * Artistic): each line of 20 characters or more is one example, labelled by
 * its file. Words are hashed into VOCAB buckets. A batch holds several lines
 * padded to the longest; padding tokens are kept out of the pooling. */
#include "cli.h"

#include <cblas.h>
#include <regopt.h>

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define VOCAB 2048
#define DIM 32     /* embedding width: SMART's input width */
#define MAXTOK 24  /* tokens per line kept */
#define BATCH 32
#define NCLASS 5

static const char *const FILES[NCLASS] = {"GPL-3", "Apache-2.0", "MPL-2.0", "GFDL-1.3",
                                          "Artistic"};

typedef struct example {
    int32_t tok[MAXTOK];
    int32_t len, label;
} example;

static uint32_t hash_word(const char *w, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    size_t i;
    for (i = 0; i < n; i++)
        h = (h ^ (unsigned char)tolower((unsigned char)w[i])) * 16777619u;
    return h;
}

static size_t load(const char *dir, example **out)
{
    size_t n = 0, cap = 4096, c;
    example *ex = malloc(cap * sizeof *ex);
    for (c = 0; ex && c < NCLASS; c++) {
        char path[1024], line[4096];
        FILE *f;
        snprintf(path, sizeof path, "%s/%s", dir, FILES[c]);
        if (!(f = fopen(path, "r"))) {
            fprintf(stderr, "textcls: cannot open %s\n", path);
            free(ex);
            return 0;
        }
        while (fgets(line, sizeof line, f)) {
            example *e;
            size_t i = 0;
            if (strlen(line) < 20)
                continue;
            if (n == cap) {
                example *bigger = realloc(ex, 2 * cap * sizeof *ex);
                if (!bigger)
                    break;
                ex = bigger;
                cap *= 2;
            }
            e = &ex[n];
            e->len = 0;
            e->label = (int32_t)c;
            while (line[i] && e->len < MAXTOK) {
                size_t j = i;
                while (line[j] && isalnum((unsigned char)line[j]))
                    j++;
                if (j > i)
                    e->tok[e->len++] = (int32_t)(hash_word(line + i, j - i) % VOCAB);
                i = line[j] ? j + 1 : j;
            }
            if (e->len >= 3)
                n++;
        }
        fclose(f);
    }
    *out = ex;
    return n;
}

/* ---- the host network ------------------------------------------------------ */

typedef struct tbatch {       /* regopt_batch.data */
    size_t lines, T;          /* T tokens per line after padding */
    int32_t tok[BATCH * MAXTOK];
    int32_t len[BATCH];
} tbatch;

#define SLOTS 3               /* clean pass, SMART's adversarial pass, spare */

typedef struct net {
    size_t hid;
    float drop;
    float *emb, *w1, *b1, *w2, *b2, *gemb, *gw1, *gb1, *gw2, *gb2;
    float pooled[SLOTS][BATCH * DIM], h[SLOTS][BATCH * 256], keep[SLOTS][BATCH * 256];
    const tbatch *b[SLOTS];
    float dh[BATCH * 256], dpool[BATCH * DIM];
} net;

/* e = E[tok] (+ nu), pooled = mean over the line's real tokens,
 * h = dropout(relu(pooled w1 + b1)), z = h w2 + b2 */
static int forward(const regopt_pass *p, void *user)
{
    net *m = user;
    const tbatch *b = p->batch;
    size_t n = p->rows, H = m->hid, i, t, k;
    int s = p->slot;
    if (s < 0 || s >= SLOTS || n > BATCH || p->row_offset != 0 ||
        (p->input_perturbation && p->input_rows != n * b->T))
        return 1;
    m->b[s] = b;
    for (i = 0; i < n; i++) {
        float *pool = m->pooled[s] + i * DIM;
        memset(pool, 0, DIM * sizeof *pool);
        for (t = 0; t < (size_t)b->len[i]; t++) {
            const float *e = m->emb + (size_t)b->tok[i * b->T + t] * DIM;
            const float *nu = p->input_perturbation
                                  ? p->input_perturbation + (i * b->T + t) * DIM : NULL;
            for (k = 0; k < DIM; k++)
                pool[k] += (e[k] + (nu ? nu[k] : 0.0f)) / (float)b->len[i];
        }
        memcpy(m->h[s] + i * H, m->b1, H * sizeof(float));
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)H, DIM, 1.0f,
                m->pooled[s], DIM, m->w1, (int)H, 1.0f, m->h[s], (int)H);
    if ((p->flags & REGOPT_PASS_TRAIN) && m->drop > 0.0f) {
        if (regopt_random_uniform(p->seed, 0, m->keep[s], n * H) != REGOPT_OK)
            return 2;
        for (k = 0; k < n * H; k++)
            m->keep[s][k] = m->keep[s][k] >= m->drop ? 1.0f / (1.0f - m->drop) : 0.0f;
    } else {
        for (k = 0; k < n * H; k++)
            m->keep[s][k] = 1.0f;
    }
    for (k = 0; k < n * H; k++)
        m->h[s][k] = m->h[s][k] > 0.0f ? m->h[s][k] * m->keep[s][k] : 0.0f;
    for (i = 0; i < n; i++)
        memcpy(p->outputs + i * NCLASS, m->b2, NCLASS * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, NCLASS, (int)H, 1.0f,
                m->h[s], (int)H, m->w2, NCLASS, 1.0f, p->outputs, NCLASS);
    return 0;
}

/* Parameter gradients (unless NO_PARAM_GRAD) and, when asked, d(loss)/d(e)
 * for every token row: the pooled gradient spread over the line's tokens
 * (0 for padding). The embedding table gets the same spread, by token id. */
static int backward(const regopt_pass *p, void *user)
{
    net *m = user;
    const tbatch *b = m->b[p->slot];
    size_t n = p->rows, H = m->hid, i, t, k;
    int s = p->slot, params = !(p->flags & REGOPT_PASS_NO_PARAM_GRAD);
    const float *dz = p->d_outputs;
    if (s < 0 || s >= SLOTS || !b || n > BATCH)
        return 1;
    if (params) {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)H, NCLASS, (int)n, 1.0f,
                    m->h[s], (int)H, dz, NCLASS, 1.0f, m->gw2, NCLASS);
        for (i = 0; i < n; i++)
            for (k = 0; k < NCLASS; k++)
                m->gb2[k] += dz[i * NCLASS + k];
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)H, NCLASS, 1.0f, dz,
                NCLASS, m->w2, NCLASS, 0.0f, m->dh, (int)H);
    for (k = 0; k < n * H; k++)
        m->dh[k] = m->h[s][k] > 0.0f ? m->dh[k] * m->keep[s][k] : 0.0f;
    if (params) {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, DIM, (int)H, (int)n, 1.0f,
                    m->pooled[s], DIM, m->dh, (int)H, 1.0f, m->gw1, (int)H);
        for (i = 0; i < n; i++)
            for (k = 0; k < H; k++)
                m->gb1[k] += m->dh[i * H + k];
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, DIM, (int)H, 1.0f, m->dh,
                (int)H, m->w1, (int)H, 0.0f, m->dpool, DIM);
    if (p->d_input)
        memset(p->d_input, 0, n * b->T * DIM * sizeof(float));
    for (i = 0; i < n; i++) {
        float inv = 1.0f / (float)b->len[i];
        for (t = 0; t < (size_t)b->len[i]; t++) {
            float *de = p->d_input ? p->d_input + (i * b->T + t) * DIM : NULL;
            float *ge = m->gemb + (size_t)b->tok[i * b->T + t] * DIM;
            for (k = 0; k < DIM; k++) {
                float g = m->dpool[i * DIM + k] * inv;
                if (de)
                    de[k] = g;
                if (params)
                    ge[k] += g;
            }
        }
    }
    return 0;
}

static float *zeros(size_t n) { return calloc(n, sizeof(float)); }

static int net_init(net *m, size_t hid, float drop, uint64_t seed)
{
    size_t i;
    memset(m, 0, sizeof *m);
    m->hid = hid;
    m->drop = drop;
    m->emb = zeros(VOCAB * DIM);
    m->w1 = zeros(DIM * hid);
    m->b1 = zeros(hid);
    m->w2 = zeros(hid * NCLASS);
    m->b2 = zeros(NCLASS);
    m->gemb = zeros(VOCAB * DIM);
    m->gw1 = zeros(DIM * hid);
    m->gb1 = zeros(hid);
    m->gw2 = zeros(hid * NCLASS);
    m->gb2 = zeros(NCLASS);
    if (!m->emb || !m->w1 || !m->b1 || !m->w2 || !m->b2 || !m->gemb || !m->gw1 || !m->gb1 ||
        !m->gw2 || !m->gb2 || regopt_random_normal(seed, 0, m->emb, VOCAB * DIM) ||
        regopt_random_normal(seed, 1u << 24, m->w1, DIM * hid) ||
        regopt_random_normal(seed, 1u << 26, m->w2, hid * NCLASS))
        return -1;
    for (i = 0; i < DIM * hid; i++)
        m->w1[i] *= sqrtf(2.0f / DIM);
    for (i = 0; i < hid * NCLASS; i++)
        m->w2[i] *= sqrtf(1.0f / (float)hid);
    return 0;
}

static void net_free(net *m)
{
    free(m->emb); free(m->w1); free(m->b1); free(m->w2); free(m->b2);
    free(m->gemb); free(m->gw1); free(m->gb1); free(m->gw2); free(m->gb2);
}

/* Lines idx[first .. first+n) as a padded batch. */
static void make_batch(const example *ex, const size_t *idx, size_t n, tbatch *b,
                       int32_t *labels)
{
    size_t i, T = 0;
    for (i = 0; i < n; i++)
        T = (size_t)ex[idx[i]].len > T ? (size_t)ex[idx[i]].len : T;
    b->lines = n;
    b->T = T;
    memset(b->tok, 0, sizeof b->tok);
    for (i = 0; i < n; i++) {
        memcpy(b->tok + i * T, ex[idx[i]].tok, (size_t)ex[idx[i]].len * sizeof(int32_t));
        b->len[i] = ex[idx[i]].len;
        labels[i] = ex[idx[i]].label;
    }
}

static void fill(regopt_batch *rb, tbatch *b, const int32_t *labels)
{
    regopt_batch_init(rb);
    rb->data = b;
    rb->rows = b->lines;
    rb->labels = labels;
    rb->input_rows = b->lines * b->T; /* one embedding row per (padded) token */
}

static double accuracy(regopt_trainer *t, const example *ex, const size_t *idx, size_t n)
{
    size_t i, r, k, hits = 0;
    for (i = 0; i < n; i += BATCH) {
        size_t m = n - i < BATCH ? n - i : BATCH;
        tbatch b;
        int32_t y[BATCH];
        float out[BATCH * NCLASS];
        regopt_batch rb;
        make_batch(ex, idx + i, m, &b, y);
        fill(&rb, &b, y);
        if (regopt_trainer_evaluate(t, &rb, NULL, out) != REGOPT_OK)
            return -1.0;
        for (r = 0; r < m; r++) {
            size_t best = 0;
            for (k = 1; k < NCLASS; k++)
                best = out[r * NCLASS + k] > out[r * NCLASS + best] ? k : best;
            hits += (int32_t)best == y[r];
        }
    }
    return (double)hits / (double)n;
}

/* ---- a teacher divergence of our own: KL(Q || P) ------------------------------ */

/* value = inv_weight * sum_i w_i KL(Q_i || P_i), P = softmax(student z),
 * Q = softmax(teacher q) detached: d/dz_i = inv_weight * w_i * (P_i - Q_i). */
static int teacher_kl(const regopt_term_view *v, double *value, void *user)
{
    const float *z = v->outputs[0], *q = v->outputs[1];
    size_t i, j, k = v->output_width;
    double sum = 0.0;
    (void)user;
    for (i = 0; i < v->rows; i++) {
        double p[NCLASS], t[NCLASS], mz = z[i * k], mq = q[i * k], sz = 0.0, sq = 0.0, kl = 0.0;
        double w = v->batch->weights ? v->batch->weights[i] : 1.0;
        if (v->batch->mask && !v->batch->mask[i])
            continue;
        for (j = 1; j < k; j++) {
            mz = z[i * k + j] > mz ? z[i * k + j] : mz;
            mq = q[i * k + j] > mq ? q[i * k + j] : mq;
        }
        for (j = 0; j < k; j++) {
            sz += (p[j] = exp(z[i * k + j] - mz));
            sq += (t[j] = exp(q[i * k + j] - mq));
        }
        for (j = 0; j < k; j++) {
            p[j] /= sz;
            t[j] /= sq;
            kl += t[j] * (log(t[j]) - log(p[j]));
            v->d_outputs[0][i * k + j] = (float)(v->inv_weight * w * (p[j] - t[j]));
        }
        sum += w * kl;
    }
    *value = v->inv_weight * sum;
    return 0;
}

static regopt_regularizer *teacher_kl_term(double weight)
{
    regopt_term_ops ops;
    regopt_regularizer *r;
    memset(&ops, 0, sizeof ops);
    ops.size = sizeof ops;
    ops.name = "teacher_kl";
    ops.passes = 1;
    ops.pass_flags[0] = REGOPT_TERM_PASS_TEACHER; /* no forward: the EMA teacher's outputs */
    ops.value = teacher_kl;
    r = regopt_regularizer_create_term(&ops, NULL, NULL, NULL, NULL);
    if (r && regopt_regularizer_set_double(r, REGOPT_TERM_WEIGHT, weight) != REGOPT_OK) {
        (void)regopt_regularizer_free(r);
        return NULL;
    }
    return r;
}

int main(int argc, char **argv)
{
    const char *dir = "/usr/share/common-licenses";
    long epochs = 20, seed = 1;
    double lambda = -1.0, mu = -1.0, lr = 1e-2, min_acc = -1.0, acc = 0.0, tkl = -1.0;
    double adv_eps = -1.0, adv_alpha = 1.0, labelled = 1.0;
    long adv_steps = -1;
    int adv_method = -1;
    regopt_regularizer *adv = NULL;
    example *ex = NULL;
    size_t n, n_train, *idx = NULL, i;
    net m;
    regopt_model *model = NULL;
    regopt_optimizer *opt = NULL;
    regopt_trainer *tr = NULL;
    regopt_regularizer *smart = NULL, *bregman = NULL, *kl = NULL;
    int a, rc = 1;
    long e;
    for (a = 1; a < argc; a++) {
        const char *k = argv[a], *v = a + 1 < argc ? argv[a + 1] : "";
        int bad = 0;
        if (!strcmp(k, "--help")) {
            printf("usage: textcls [--dir DIR] [--smart LAMBDA] [--bregman MU] [--teacher-kl W]\n"
                   "               [--adv fgm|pgd|freelb|vat] [--adv-eps X] [--adv-alpha X]\n"
                   "               [--adv-steps K] [--labelled F]\n"
                   "               [--epochs N] [--lr X] [--seed N] [--min-acc X]\n");
            return 0;
        } else if (!strcmp(k, "--dir")) dir = v;
        else if (!strcmp(k, "--smart")) bad = parse_double(v, 0, 1e4, &lambda);
        else if (!strcmp(k, "--bregman")) bad = parse_double(v, 0, 1e4, &mu);
        else if (!strcmp(k, "--teacher-kl")) bad = parse_double(v, 0, 1e4, &tkl);
        else if (!strcmp(k, "--adv")) {
            static const char *const names[] = {"fgm", "pgd", "freelb", "vat"};
            for (adv_method = 3; adv_method >= 0 && strcmp(v, names[adv_method]); adv_method--)
                ;
            bad = adv_method < 0;
        } else if (!strcmp(k, "--adv-eps")) bad = parse_double(v, 0, 1e4, &adv_eps);
        else if (!strcmp(k, "--adv-alpha")) bad = parse_double(v, 0, 1e4, &adv_alpha);
        else if (!strcmp(k, "--adv-steps")) bad = parse_long(v, 1, 100, &adv_steps);
        else if (!strcmp(k, "--labelled")) bad = parse_double(v, 1e-3, 1, &labelled);
        else if (!strcmp(k, "--epochs")) bad = parse_long(v, 1, 10000, &epochs);
        else if (!strcmp(k, "--seed")) bad = parse_long(v, 0, 2147483647L, &seed);
        else if (!strcmp(k, "--lr")) bad = parse_double(v, 1e-9, 10, &lr);
        else if (!strcmp(k, "--min-acc")) bad = parse_double(v, 0, 1, &min_acc);
        else {
            fprintf(stderr, "textcls: unknown option %s (see --help)\n", k);
            return 2;
        }
        if (bad || a + 1 >= argc) {
            fprintf(stderr, "textcls: bad value for %s: '%s'\n", k, v);
            return 2;
        }
        a++;
    }
    memset(&m, 0, sizeof m);
    n = load(dir, &ex);
    if (n < 100 || !(idx = malloc(n * sizeof *idx)))
        goto done;
    for (i = 0; i < n; i++)
        idx[i] = i;
    for (i = n; i > 1; i--) { /* a fixed shuffle from the library's generator */
        float u;
        size_t j, tmp;
        regopt_random_uniform((uint64_t)seed + 77, i, &u, 1);
        j = (size_t)(u * (float)i) % i;
        tmp = idx[i - 1];
        idx[i - 1] = idx[j];
        idx[j] = tmp;
    }
    n_train = n - n / 5;
    if (net_init(&m, 64, 0.1f, (uint64_t)seed))
        goto done;
    model = regopt_model_create(NULL, NULL);
    opt = regopt_optimizer_create(REGOPT_ADAMW, NULL, NULL);
    if (!model || !opt ||
        regopt_model_add_param(model, "embedding", m.emb, m.gemb, VOCAB * DIM,
                               REGOPT_DTYPE_FLOAT32, 1) ||
        regopt_model_add_param(model, "w1", m.w1, m.gw1, DIM * m.hid, REGOPT_DTYPE_FLOAT32, 0) ||
        regopt_model_add_param(model, "b1", m.b1, m.gb1, m.hid, REGOPT_DTYPE_FLOAT32, 1) ||
        regopt_model_add_param(model, "w2", m.w2, m.gw2, m.hid * NCLASS, REGOPT_DTYPE_FLOAT32, 0) ||
        regopt_model_add_param(model, "b2", m.b2, m.gb2, NCLASS, REGOPT_DTYPE_FLOAT32, 1) ||
        regopt_model_set_output_width(model, NCLASS) ||
        regopt_model_set_input_width(model, DIM) || regopt_model_set_slots(model, SLOTS) ||
        regopt_model_set_callbacks(model, forward, backward, &m, NULL) ||
        regopt_optimizer_set_double(opt, REGOPT_OPT_LR, lr) ||
        regopt_optimizer_set_group(opt, 1, REGOPT_GROUP_WEIGHT_DECAY, 0.0) ||
        !(tr = regopt_trainer_create(model, opt, NULL)) ||
        regopt_trainer_set_int(tr, REGOPT_TRAINER_SEED, seed)) {
        fprintf(stderr, "textcls: setup: %s\n", regopt_last_error_message());
        goto done;
    }
    /* SMART on embeddings of norm ~1: a radius of a few hundredths */
    if (lambda >= 0.0) {
        if (!(smart = regopt_regularizer_create(REGOPT_REG_SMART, NULL, NULL)) ||
            regopt_regularizer_set_double(smart, REGOPT_SMART_LAMBDA, lambda) ||
            regopt_regularizer_set_double(smart, REGOPT_SMART_EPSILON, 0.05) ||
            regopt_regularizer_set_double(smart, REGOPT_SMART_ETA, 0.02) ||
            regopt_regularizer_set_double(smart, REGOPT_SMART_SIGMA, 0.01)) {
            fprintf(stderr, "textcls: SMART: %s\n", smart ? regopt_regularizer_message(smart)
                                                         : regopt_last_error_message());
            goto done;
        }
        if (regopt_trainer_attach(tr, smart)) {
            fprintf(stderr, "textcls: SMART: %s\n", regopt_trainer_message(tr));
            goto done;
        }
    }
    /* Adversarial training on the embedding outputs (norm ~1 per token, a
       few per line): per-example radii of a fraction of a line's norm */
    if (adv_method >= 0) {
        /* FreeLB's radius bounds delta (0: unbounded); VAT's xi is small */
        double eps = adv_eps >= 0.0 ? adv_eps : adv_method == REGOPT_ADV_FREELB ? 0.0 : 1.0;
        if (!(adv = regopt_regularizer_create(REGOPT_REG_ADVERSARIAL, NULL, NULL)) ||
            regopt_regularizer_set_int(adv, REGOPT_ADV_METHOD, adv_method) ||
            regopt_regularizer_set_double(adv, REGOPT_ADV_EPSILON, eps) ||
            regopt_regularizer_set_double(adv, REGOPT_ADV_ALPHA, adv_alpha) ||
            /* K: PGD's ascent steps and FreeLB's passes 3, VAT's power
               iterations 1 (the GLUE scripts' and the official code's) */
            regopt_regularizer_set_int(adv, REGOPT_ADV_STEPS,
                                       adv_steps > 0 ? adv_steps
                                       : adv_method == REGOPT_ADV_VAT ? 1 : 3) ||
            regopt_regularizer_set_double(adv, REGOPT_ADV_STEP, 0.3) ||
            /* VAT's xi (adversarial_text's 0.1), FreeLB's init_mag */
            regopt_regularizer_set_double(adv, REGOPT_ADV_INIT_MAG, 0.1) ||
            regopt_trainer_attach(tr, adv)) {
            fprintf(stderr, "textcls: adversarial: %s %s\n",
                    adv ? regopt_regularizer_message(adv) : regopt_last_error_message(),
                    regopt_trainer_message(tr));
            goto done;
        }
    }
    if (tkl >= 0.0 && mu < 0.0)
        mu = 0.0; /* the teacher without Bregman's own term */
    if (mu >= 0.0) {
        if (!(bregman = regopt_regularizer_create(REGOPT_REG_BREGMAN, NULL, NULL)) ||
            regopt_regularizer_set_double(bregman, REGOPT_BREGMAN_MU, mu)) {
            fprintf(stderr, "textcls: Bregman: %s\n",
                    bregman ? regopt_regularizer_message(bregman) : regopt_last_error_message());
            goto done;
        }
        if (regopt_trainer_attach(tr, bregman)) {
            fprintf(stderr, "textcls: Bregman: %s\n", regopt_trainer_message(tr));
            goto done;
        }
    }
    if (tkl >= 0.0 && (!(kl = teacher_kl_term(tkl)) || regopt_trainer_attach(tr, kl))) {
        fprintf(stderr, "textcls: teacher KL term: %s\n",
                kl ? regopt_trainer_message(tr) : regopt_last_error_message());
        goto done;
    }
    printf("textcls: %zu lines from %d licences (%zu train, %.0f%% labelled), %d hashed words, "
           "embedding %d%s%s%s%s\n",
           n, NCLASS, n_train, 100.0 * labelled, VOCAB, DIM,
           lambda >= 0.0 ? ", SMART adversarial" : "", mu >= 0.0 ? ", Bregman" : "",
           kl ? ", KL(teacher||student) user term" : "", adv ? ", adversarial" : "");
    for (e = 1; e <= epochs; e++) {
        for (i = 0; i + BATCH <= n_train; i += BATCH) {
            tbatch b;
            int32_t y[BATCH];
            regopt_batch rb;
            uint8_t tm[BATCH];
            size_t r;
            make_batch(ex, idx + i, BATCH, &b, y);
            fill(&rb, &b, y);
            /* a fraction `labelled` of the training lines, spread evenly,
               keeps its label; the others are unlabelled */
            for (r = 0; r < BATCH; r++)
                tm[r] = (uint8_t)(floor((double)(i + r + 1) * labelled) >
                                  floor((double)(i + r) * labelled));
            if (labelled < 1.0)
                rb.task_mask = tm;
            if (regopt_trainer_step(tr, &rb, 1) != REGOPT_OK) {
                fprintf(stderr, "textcls: step: %s\n", regopt_trainer_message(tr));
                goto done;
            }
        }
        if (e % 5 == 0 || e == epochs) {
            double rs = 0.0, nn = 0.0;
            acc = accuracy(tr, ex, idx + n_train, n - n_train);
            printf("epoch %3ld  held-out accuracy %.4f", e, acc);
            if (kl) {
                double d = 0.0;
                regopt_regularizer_get_double(kl, REGOPT_STAT_TERM_VALUE, &d);
                printf("  KL(teacher||student) %.5f", d);
            }
            if (smart) { /* statistics are read from the regularizer's handle */
                regopt_regularizer_get_double(smart, REGOPT_STAT_SMART_RS, &rs);
                regopt_regularizer_get_double(smart, REGOPT_STAT_SMART_NOISE_NORM, &nn);
                printf("  R_s %.5f  ||nu|| %.4f", rs, nn);
            }
            if (adv) {
                double al = 0.0, an = 0.0;
                regopt_regularizer_get_double(adv, REGOPT_STAT_ADV_LOSS, &al);
                regopt_regularizer_get_double(adv, REGOPT_STAT_ADV_NORM, &an);
                printf("  adv %.5f  ||r|| %.4f", al, an);
            }
            printf("\n");
        }
    }
    printf("RESULT model=textcls smart_lambda=%g bregman_mu=%g teacher_kl=%g adv=%d "
           "labelled=%g heldout_acc=%.4f\n",
           lambda >= 0.0 ? lambda : 0.0, mu >= 0.0 ? mu : 0.0, tkl >= 0.0 ? tkl : 0.0,
           adv_method, labelled, acc);
    rc = min_acc >= 0.0 && acc < min_acc ? 1 : 0;
done:
    regopt_trainer_free(tr); /* detaches the regularizers: free them after it */
    regopt_regularizer_free(smart);
    regopt_regularizer_free(bregman);
    regopt_regularizer_free(kl);
    regopt_regularizer_free(adv);
    regopt_optimizer_free(opt);
    regopt_model_free(model);
    net_free(&m);
    free(ex);
    free(idx);
    return rc;
}
