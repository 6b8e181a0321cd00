/* checkpoint_rig.h — the rig of suite checkpoint (check_checkpoint*.c): the
 * host (described in check_checkpoint.c), its model and user term, the
 * configurations the resume tests train, the reference runs, the victim
 * of the damage tests, and an independent writer and parser of format 2
 * (split, join, crc32_ref) the forgeries use instead of the library's
 * code. Include it after #define _XOPEN_SOURCE 700, before any other header. */
#ifndef REGOPT_CHECKPOINT_RIG_H
#define REGOPT_CHECKPOINT_RIG_H

#include "tests.h"
/* test_util.h's stat() reads a statistic; here stat(2) is needed too */
#define stat stat_of_trainer
#include "test_util.h"
#undef stat

#include <dirent.h>
#include <float.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define CD 5
#define CK 3
#define CROWS 6
#define CSLOTS 3
#define CP 0.2f /* dropout */

typedef struct ck_host {
    float w[CD * CK], b[CK], gw[CD * CK], gb[CK], frozen[2];
    float u[CSLOTS][CROWS * CD], m[CSLOTS][CROWS * CD]; /* per slot: inputs, mask */
} ck_host;

static inline int ck_forward(const regopt_pass *p, void *user)
{
    ck_host *h = user;
    const float *x = p->batch;
    float *u = h->u[p->slot], *m = h->m[p->slot];
    size_t i, j, k, n = p->rows * CD;
    if (p->rows > CROWS || p->slot >= CSLOTS)
        return 3;
    if (p->flags & REGOPT_PASS_TRAIN) {
        if (regopt_random_uniform(p->seed, 0, m, n) != REGOPT_OK)
            return 4;
        for (i = 0; i < n; i++)
            m[i] = m[i] >= CP ? 1.0f / (1.0f - CP) : 0.0f;
    } else {
        for (i = 0; i < n; i++)
            m[i] = 1.0f;
    }
    for (i = 0; i < n; i++)
        u[i] = (x[p->row_offset * CD + i] +
                (p->input_perturbation ? p->input_perturbation[i] : 0.0f)) * m[i];
    for (i = 0; i < p->rows; i++)
        for (k = 0; k < CK; k++) {
            float z = h->b[k];
            for (j = 0; j < CD; j++)
                z += u[i * CD + j] * h->w[j * CK + k];
            p->outputs[i * CK + k] = z;
        }
    return 0;
}

static inline int ck_backward(const regopt_pass *p, void *user)
{
    ck_host *h = user;
    const float *u = h->u[p->slot], *m = h->m[p->slot];
    size_t i, j, k;
    for (i = 0; i < p->rows; i++)
        for (j = 0; j < CD; j++) {
            float s = 0.0f;
            for (k = 0; k < CK; k++)
                s += p->d_outputs[i * CK + k] * h->w[j * CK + k];
            if (p->d_input)
                p->d_input[i * CD + j] = s * m[i * CD + j];
        }
    if (p->flags & REGOPT_PASS_NO_PARAM_GRAD)
        return 0;
    for (i = 0; i < p->rows; i++)
        for (k = 0; k < CK; k++) {
            float d = p->d_outputs[i * CK + k];
            h->gb[k] += d;
            for (j = 0; j < CD; j++)
                h->gw[j * CK + k] += u[i * CD + j] * d;
        }
    return 0;
}

/* The host's model: "W" in group 0, the bias as `b_name` in `b_group`, and
 * the frozen "scale" (tests of other layouts change the bias's name or group). */
static inline regopt_model *ck_model(ck_host *h, const char *b_name, int32_t b_group,
                              const regopt_allocator *a)
{
    regopt_model *m = regopt_model_create(a, NULL);
    ck_assert_ptr_nonnull(m);
    MUST(regopt_model_add_param(m, "W", h->w, h->gw, CD * CK, REGOPT_DTYPE_FLOAT32, 0));
    MUST(regopt_model_add_param(m, b_name, h->b, h->gb, CK, REGOPT_DTYPE_FLOAT32, b_group));
    MUST(regopt_model_add_param(m, "scale", h->frozen, NULL, 2, REGOPT_DTYPE_FLOAT32, 1));
    MUST(regopt_model_set_output_width(m, CK));
    MUST(regopt_model_set_input_width(m, CD));
    MUST(regopt_model_set_slots(m, CSLOTS));
    MUST(regopt_model_set_callbacks(m, ck_forward, ck_backward, h, NULL));
    return m;
}

/* The configurations of the resume tests. */
enum { C_ADAMW, C_SGD, C_SAM, C_GSAM, C_RDROP, C_SMART, C_SMART_SAM, C_SAM_RDROP, C_BREGMAN,
       C_TERM, C_N };
static const char *const config_name[C_N] = {"adamw", "sgd", "sam", "gsam", "rdrop",
                                             "smart+bregman", "smart+sam", "sam+rdrop",
                                             "bregman", "term"};

/* A user-defined term with state: c_i = a sum_k z_ik^2 with a = 0.01 (1 +
 * commits % 3), where commits counts the updates it has seen (committed()),
 * so a resumed run matches only if its state came back. */
typedef struct term_state {
    uint64_t commits;
    int fail_load; /* load_state refuses */
} term_state;

static inline int tm_value(const regopt_term_view *v, double *value, void *user)
{
    const term_state *ts = user;
    double a = 0.01 * (double)(1 + ts->commits % 3), sum = 0.0;
    size_t i, k;
    for (i = 0; i < v->rows; i++) {
        double wi = (v->batch->mask && !v->batch->mask[i]) ? 0.0 : 1.0;
        if (v->batch->weights)
            wi *= v->batch->weights[i];
        for (k = 0; k < v->output_width; k++) {
            double z = v->outputs[0][i * v->output_width + k];
            sum += wi * a * z * z;
            v->d_outputs[0][i * v->output_width + k] = (float)(v->inv_weight * wi * 2.0 * a * z);
        }
    }
    *value = v->inv_weight * sum;
    return 0;
}

static inline size_t tm_state_size(void *user)
{
    (void)user;
    return 8;
}

static inline int tm_save(void *buf, size_t size, void *user)
{
    const term_state *ts = user;
    if (size != 8)
        return 1;
    memcpy(buf, &ts->commits, 8);
    return 0;
}

static inline int tm_load(const void *buf, size_t size, void *user)
{
    term_state *ts = user;
    if (size != 8 || ts->fail_load)
        return 1;
    memcpy(&ts->commits, buf, 8);
    return 0;
}

static inline void tm_committed(uint64_t step, void *user)
{
    (void)step;
    ((term_state *)user)->commits++;
}

static const char *term_name = "decay.term"; /* the name new terms get */

typedef struct rig {
    ck_host h;
    regopt_model *m;
    regopt_optimizer *o;
    regopt_trainer *t;
    /* the attached regularizers (NULL: not in this configuration); freed by
       rig_free after the trainer, through tu_free_regs */
    regopt_regularizer *sam, *rdrop, *smart, *bregman;
    regopt_regularizer *term; /* C_TERM: a user term, freed by rig_free */
    term_state ts;
} rig;

static inline int has_sam(int config)
{
    return config == C_SAM || config == C_GSAM || config == C_SMART_SAM ||
           config == C_SAM_RDROP;
}
static inline int has_rdrop(int config) { return config == C_RDROP || config == C_SAM_RDROP; }
static inline int has_smart(int config) { return config == C_SMART || config == C_SMART_SAM; }
static inline int has_bregman(int config) { return config == C_SMART || config == C_BREGMAN; }

/* Attach the configuration's regularizers to r->t (handles with defaults). */
static inline void rig_attach(rig *r, int config)
{
    r->sam = has_sam(config) ? tu_add(r->t, REGOPT_REG_SAM) : NULL;
    r->rdrop = has_rdrop(config) ? tu_add(r->t, REGOPT_REG_RDROP) : NULL;
    r->smart = has_smart(config) ? tu_add(r->t, REGOPT_REG_SMART) : NULL;
    r->bregman = has_bregman(config) ? tu_add(r->t, REGOPT_REG_BREGMAN) : NULL;
    r->term = NULL;
    if (config == C_TERM) {
        regopt_term_ops ops;
        regopt_status st = REGOPT_OK;
        memset(&ops, 0, sizeof ops);
        ops.size = sizeof ops;
        ops.name = term_name;
        ops.value = tm_value;
        ops.state_size = tm_state_size;
        ops.save_state = tm_save;
        ops.load_state = tm_load;
        ops.committed = tm_committed;
        r->term = regopt_regularizer_create_term(&ops, &r->ts, NULL, NULL, &st);
        ck_assert_msg(r->term != NULL, "term: %s %s", regopt_status_string(st),
                      regopt_last_error_message());
        TMUST(r->t, regopt_trainer_attach(r->t, r->term));
    }
}

/* Build a rig; `init` picks the starting weights (a resumed run starts from
 * garbage to prove the checkpoint carries them). `options` 0 leaves every
 * option at its default (a load with REGOPT_CHECKPOINT_OPTIONS sets them). */
static inline void rig_make(rig *r, int config, int init, int options)
{
    size_t i;
    memset(r, 0, sizeof *r);
    for (i = 0; i < CD * CK; i++)
        r->h.w[i] = init ? 0.1f * (float)((int)(i * 7 % 11) - 5) : 9.0f;
    for (i = 0; i < CK; i++)
        r->h.b[i] = init ? 0.05f * (float)i : -9.0f;
    r->h.frozen[0] = init ? 0.5f : 7.0f;
    r->h.frozen[1] = init ? -0.25f : 7.0f;
    r->m = ck_model(&r->h, "b", 1, NULL);
    r->o = regopt_optimizer_create(config == C_SGD ? REGOPT_SGD : REGOPT_ADAMW, NULL, NULL);
    ck_assert_ptr_nonnull(r->o);
    if (options) {
        MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_LR, 0.05));
        MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_WEIGHT_DECAY, 0.01));
        MUST(regopt_optimizer_set_group(r->o, 1, REGOPT_GROUP_WEIGHT_DECAY, 0.0));
        MUST(regopt_optimizer_set_int(r->o, REGOPT_OPT_SCHEDULE, REGOPT_SCHEDULE_COSINE));
        MUST(regopt_optimizer_set_int(r->o, REGOPT_OPT_WARMUP_STEPS, 2));
        MUST(regopt_optimizer_set_int(r->o, REGOPT_OPT_TOTAL_STEPS, 10));
        MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_CLIP_NORM, 1.0));
        if (config == C_SGD) {
            MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_MOMENTUM, 0.9));
            MUST(regopt_optimizer_set_int(r->o, REGOPT_OPT_NESTEROV, 1));
        }
    }
    r->t = regopt_trainer_create(r->m, r->o, NULL);
    ck_assert_ptr_nonnull(r->t);
    if (options)
        TMUST(r->t, regopt_trainer_set_int(r->t, REGOPT_TRAINER_SEED, 1234567));
    rig_attach(r, config);
    if (!options)
        return;
    if (config == C_SAM)
        RMUST(r->sam, regopt_regularizer_set_double(r->sam, REGOPT_SAM_RHO, 0.2));
    if (config == C_GSAM) {
        RMUST(r->sam, regopt_regularizer_set_int(r->sam, REGOPT_SAM_GSAM, 1));
        RMUST(r->sam, regopt_regularizer_set_int(r->sam, REGOPT_SAM_RHO_FOLLOWS_LR, 1));
        RMUST(r->sam, regopt_regularizer_set_double(r->sam, REGOPT_SAM_RHO_MIN, 0.01));
        RMUST(r->sam, regopt_regularizer_set_int(r->sam, REGOPT_SAM_SAME_SEED, 0));
    }
    if (config == C_RDROP) {
        RMUST(r->rdrop, regopt_regularizer_set_double(r->rdrop, REGOPT_RDROP_ALPHA, 2.0));
        RMUST(r->rdrop, regopt_regularizer_set_int(r->rdrop, REGOPT_RDROP_EVERY, 2));
    }
    if (config == C_SAM_RDROP) {
        RMUST(r->sam, regopt_regularizer_set_double(r->sam, REGOPT_SAM_RHO, 0.1));
        RMUST(r->sam, regopt_regularizer_set_int(r->sam, REGOPT_SAM_EVERY, 2));
        RMUST(r->rdrop, regopt_regularizer_set_double(r->rdrop, REGOPT_RDROP_ALPHA, 0.5));
    }
    if (config == C_SMART || config == C_SMART_SAM)
        RMUST(r->smart, regopt_regularizer_set_double(r->smart, REGOPT_SMART_LAMBDA, 3.0));
    if (config == C_SMART) {
        RMUST(r->bregman, regopt_regularizer_set_double(r->bregman, REGOPT_BREGMAN_MU, 2.0));
        RMUST(r->bregman, regopt_regularizer_set_double(r->bregman, REGOPT_BREGMAN_BETA, 0.5));
        RMUST(r->bregman,
              regopt_regularizer_set_double(r->bregman, REGOPT_BREGMAN_BETA_LATE, 0.8));
        RMUST(r->bregman, regopt_regularizer_set_double(r->bregman, REGOPT_BREGMAN_SWITCH, 0.3));
    }
    if (config == C_TERM)
        RMUST(r->term, regopt_regularizer_set_double(r->term, REGOPT_TERM_WEIGHT, 0.5));
    if (config == C_BREGMAN) {
        /* beta_late from step 5 on: the switch falls after the resume at K_STEPS */
        RMUST(r->bregman, regopt_regularizer_set_double(r->bregman, REGOPT_BREGMAN_BETA, 0.6));
        RMUST(r->bregman,
              regopt_regularizer_set_double(r->bregman, REGOPT_BREGMAN_BETA_LATE, 0.9));
        RMUST(r->bregman, regopt_regularizer_set_int(r->bregman, REGOPT_BREGMAN_SWITCH_STEP, 5));
    }
}

static inline void rig_free(rig *r)
{
    regopt_trainer_free(r->t); /* detaches the regularizers */
    regopt_regularizer_free(r->term);
    regopt_optimizer_free(r->o);
    regopt_model_free(r->m);
    tu_free_regs();
}

/* Step s trains on its own CROWS rows, the last one padding. */
static float data_x[CROWS * CD];
static int32_t data_y[CROWS];
static uint8_t data_mask[CROWS];

static inline void rig_step(rig *r, int s)
{
    regopt_batch b;
    size_t i;
    for (i = 0; i < CROWS * CD; i++)
        data_x[i] = (float)sin(0.37 * (double)(s * CROWS * CD + (int)i) + 0.2);
    for (i = 0; i < CROWS; i++) {
        data_y[i] = (int32_t)((s + 2 * (int)i) % CK);
        data_mask[i] = i + 1 < CROWS;
    }
    regopt_batch_init(&b);
    b.data = data_x;
    b.rows = CROWS;
    b.labels = data_y;
    b.mask = data_mask;
    TMUST(r->t, regopt_trainer_step(r->t, &b, 1));
}

/* The checkpoint of a rig, with everything (malloc'ed). */
static inline unsigned char *rig_save(rig *r, uint32_t flags, size_t *size)
{
    unsigned char *buf;
    size_t n = 0, w = 0;
    TMUST(r->t, regopt_trainer_checkpoint_size(r->t, flags, &n));
    buf = malloc(n);
    ck_assert_ptr_nonnull(buf);
    TMUST(r->t, regopt_trainer_save_buffer(r->t, flags, buf, n, &w));
    ck_assert_uint_eq(w, n);
    *size = n;
    return buf;
}

#define ALL (REGOPT_CHECKPOINT_PARAMS | REGOPT_CHECKPOINT_OPTIONS)
#define N_STEPS 7
#define K_STEPS 3

/* The reference: N uninterrupted steps; returns its checkpoint. */
static inline unsigned char *reference(int config, size_t *size)
{
    rig a;
    unsigned char *buf;
    int s;
    rig_make(&a, config, 1, 1);
    for (s = 0; s < N_STEPS; s++)
        rig_step(&a, s);
    buf = rig_save(&a, ALL, size);
    rig_free(&a);
    return buf;
}

/* The name of the section of checkpoint c (n bytes) that holds byte at, or
 * "header"/"table" (read with plain byte arithmetic: the header's section
 * count @12, table entries of 48 bytes from 32: name, u64 offset @24, u64
 * size @32). */
static size_t section_offset; /* of the section section_at last found */

static inline const char *section_at(const unsigned char *c, size_t n, size_t at, char *name)
{
    size_t k, count;
    if (at < 32 || n < 32)
        return "header";
    count = (size_t)c[12] | (size_t)c[13] << 8 | (size_t)c[14] << 16 | (size_t)c[15] << 24;
    if (at < 32 + 48 * count)
        return "table";
    for (k = 0; k < count && 32 + 48 * (k + 1) <= n; k++) {
        const unsigned char *e = c + 32 + 48 * k;
        uint64_t off = 0, size = 0;
        int j;
        for (j = 7; j >= 0; j--) {
            off = off << 8 | e[24 + j];
            size = size << 8 | e[32 + j];
        }
        if (at >= off && at - off < size) {
            section_offset = (size_t)off;
            memcpy(name, e, 24);
            name[24] = '\0';
            return name;
        }
    }
    return "?";
}

/* a and b hold the same bytes; else the first difference is named, and
 * the first one in a section (the header and table differ whenever a
 * section does, through the CRCs). */
static inline void same_bytes(const unsigned char *a, size_t na, const unsigned char *b, size_t nb,
                       const char *what)
{
    size_t i, first, in_section;
    char name[25];
    ck_assert_msg(na == nb, "%s: %zu bytes vs %zu", what, na, nb);
    for (first = 0; first < na && a[first] == b[first]; first++)
        ;
    if (first == na)
        return;
    for (i = first; i < na && (a[i] == b[i] || strcmp(section_at(a, na, i, name), "header") == 0 ||
                               strcmp(section_at(a, na, i, name), "table") == 0);
         i++)
        ;
    in_section = i;
    section_offset = 0;
    if (in_section < na)
        section_at(a, na, in_section, name);
    else
        strcpy(name, "none");
    ck_abort_msg("%s: first difference at byte %zu of %zu, first in a section at %zu (%s, its "
                 "byte %zu)",
                 what, first, na, in_section, name, in_section - section_offset);
}

/* The checkpoint of a run interrupted after K_STEPS steps. */
static inline unsigned char *interrupted(int config, uint32_t flags, size_t *n)
{
    rig a;
    unsigned char *ck;
    int s;
    rig_make(&a, config, 1, 1);
    for (s = 0; s < K_STEPS; s++)
        rig_step(&a, s);
    ck = rig_save(&a, flags, n);
    rig_free(&a);
    return ck;
}

/* Train a resumed rig from step K_STEPS to N_STEPS, then require its whole
 * state to equal that of N uninterrupted steps, byte for byte; frees it. */
static inline void finish_and_compare(rig *b, int config)
{
    unsigned char *ref, *end;
    size_t nref, nend;
    int s;
    for (s = K_STEPS; s < N_STEPS; s++)
        rig_step(b, s);
    end = rig_save(b, ALL, &nend);
    rig_free(b);
    ref = reference(config, &nref);
    same_bytes(ref, nref, end, nend, config_name[config]);
    free(ref);
    free(end);
}

/* A trained SMART+Bregman rig (teacher present), its checkpoint, and a
 * snapshot of everything a failed load must leave alone. */
typedef struct victim {
    rig r;
    unsigned char *ck, *before;
    size_t n, nbefore;
    double lr;
} victim;

static inline void victim_make(victim *v, uint32_t flags)
{
    int s;
    rig_make(&v->r, C_SMART, 1, 1);
    for (s = 0; s < 2; s++)
        rig_step(&v->r, s);
    v->ck = rig_save(&v->r, flags, &v->n);
    rig_step(&v->r, 2); /* the live state now differs from the checkpoint's */
    v->before = rig_save(&v->r, ALL, &v->nbefore);
    MUST(regopt_optimizer_get_double(v->r.o, REGOPT_OPT_LR, &v->lr));
}

static inline void victim_untouched(victim *v, const char *what)
{
    size_t n;
    double lr;
    unsigned char *now = rig_save(&v->r, ALL, &n);
    same_bytes(v->before, v->nbefore, now, n, what);
    MUST(regopt_optimizer_get_double(v->r.o, REGOPT_OPT_LR, &lr));
    ck_assert(lr == v->lr);
    free(now);
}

static inline void victim_free(victim *v)
{
    rig_free(&v->r);
    free(v->ck);
    free(v->before);
}

static inline void expect(victim *v, const void *buf, size_t n, regopt_status want, const char *needle,
                   const char *what)
{
    regopt_status st = regopt_trainer_load_buffer(v->r.t, ALL, buf, n);
    ck_assert_msg(st == want, "%s: got %s (%s), want %s", what, regopt_status_string(st),
                  regopt_trainer_message(v->r.t), regopt_status_string(want));
    if (needle)
        ck_assert_msg(strstr(regopt_trainer_message(v->r.t), needle) != NULL,
                      "%s: message \"%s\" lacks \"%s\"", what, regopt_trainer_message(v->r.t),
                      needle);
    victim_untouched(v, what);
}
/* Rebuild a checkpoint from its sections after `edit` changed them: new
 * CRCs and offsets, so only the content is wrong (a forgery, not damage).
 *
 * The layout of checkpoint format 2, as the format description gives it
 * (offsets in bytes within a section):
 *   header (32): "REGOPTCK" | u32 version @8 | u32 sections @12 | u64 total
 *     size @16 | u32 flags @24 | u32 CRC-32 of bytes 0..27 and the table @28
 *   table entry (48): name[24] | u64 offset @24 | u64 size @32 | u32 CRC @40
 *   "trainer":  u64 step @0 | u64 seed @8 | u32 optimizer kind @16 | u32 state
 *     floats per element @20 | u32 momentum primed @24 | u32 regularizers
 *     @28 | u64 trainable elements @32 | u32 statistics n @40 | pad @44 |
 *     n f64 @48
 *   "features": u64 required mask @0 | u32 entries @8 | pad @12 | entries of
 *     24 bytes @16: u32 bit | char name[20]
 *   "reg.N":    u32 kind @0 | u32 instance @4 | name[24] @8 | u32 statistics
 *     s @32 | pad @36 | u64 state size m @40 | s f64 @48 | m state bytes;
 *     Bregman's state: u32 holds weights | pad | f64 beta | the weights
 *   "options":  u32 count | pad | entries of 24 bytes @8: u32 key | u32 group
 *     | u32 type | u32 owner | value */
#define FORMAT 2
#define TR_REGS 28
#define TR_TRAINABLE 32
#define TR_NSTATS 40
#define TR_STATS 48
#define FEAT_COUNT 8
#define FEAT_ENTRIES 16
#define FEAT_ENTRY 24
#define REG_KIND 0
#define REG_INSTANCE 4
#define REG_NAME 8
#define REG_NSTATS 32
#define REG_STATE_SIZE 40
#define REG_STATS 48
#define OPT_ENTRY 24
#define OPT_OWNER 12
#define NO_OWNER 0xffffffffu
typedef struct section {
    char name[24];
    unsigned char *data;
    size_t size;
} section;

static inline uint32_t crc32_ref(const unsigned char *p, size_t n, uint32_t crc)
{
    /* bitwise CRC-32, independent of the library's table */
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

static inline uint32_t rd32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t rd64(const unsigned char *p)
{
    return rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

static inline void wr32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v, p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16), p[3] = (unsigned char)(v >> 24);
}

static inline void wr64(unsigned char *p, uint64_t v)
{
    wr32(p, (uint32_t)v);
    wr32(p + 4, (uint32_t)(v >> 32));
}

static inline size_t split(const unsigned char *ck, section *s)
{
    size_t n = rd32(ck + 12), i;
    for (i = 0; i < n; i++) {
        const unsigned char *e = ck + 32 + 48 * i;
        memcpy(s[i].name, e, 24);
        s[i].size = (size_t)rd64(e + 32);
        s[i].data = malloc(s[i].size + 64);
        memcpy(s[i].data, ck + rd64(e + 24), s[i].size);
        ck_assert_uint_eq(rd32(e + 40), crc32_ref(s[i].data, s[i].size, 0));
    }
    return n;
}

static inline unsigned char *join(const unsigned char *ck, section *s, size_t n, uint32_t version,
                           size_t *size)
{
    size_t total = 32 + 48 * n, i, off;
    unsigned char *out;
    for (i = 0; i < n; i++)
        total += s[i].size;
    out = calloc(1, total);
    memcpy(out, ck, 32);
    wr32(out + 8, version);
    wr32(out + 12, (uint32_t)n);
    wr64(out + 16, total);
    off = 32 + 48 * n;
    for (i = 0; i < n; i++) {
        unsigned char *e = out + 32 + 48 * i;
        memcpy(e, s[i].name, 24);
        wr64(e + 24, off);
        wr64(e + 32, s[i].size);
        wr32(e + 40, crc32_ref(s[i].data, s[i].size, 0));
        memcpy(out + off, s[i].data, s[i].size);
        off += s[i].size;
        free(s[i].data);
    }
    wr32(out + 28, crc32_ref(out + 32, 48 * n, crc32_ref(out, 28, 0)));
    *size = total;
    return out;
}

static inline int find_section(section *s, size_t n, const char *name)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (strcmp(s[i].name, name) == 0)
            return (int)i;
    ck_abort_msg("no section %s", name);
    return -1;
}

/* The "reg.N" section of the regularizer of `kind` (the test fails if there
 * is none). */
static inline int find_reg(section *s, size_t n, regopt_regularizer_kind kind)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (strncmp(s[i].name, "reg.", 4) == 0 && s[i].size >= REG_STATS &&
            rd32(s[i].data + REG_KIND) == (uint32_t)kind)
            return (int)i;
    ck_abort_msg("no reg.N section of kind %d", (int)kind);
    return -1;
}

/* Where the state bytes of a "reg.N" section start. */
static inline unsigned char *reg_state(section *r)
{
    return r->data + REG_STATS + 8 * (size_t)rd32(r->data + REG_NSTATS);
}

/* Overwrite the value of option `key` (of `group`, or any group when -1) in
 * the "options" section; fails the test when the entry is not there. */
static inline void forge_option(section *s, size_t n, regopt_key key, int group, double value)
{
    int i = find_section(s, n, "options"), hit = 0;
    size_t e, cnt = rd32(s[i].data);
    for (e = 0; e < cnt; e++) {
        unsigned char *p = s[i].data + 8 + 24 * e;
        if (rd32(p) == (uint32_t)key && (group < 0 || rd32(p + 4) == (uint32_t)group)) {
            uint64_t bits;
            memcpy(&bits, &value, 8);
            wr64(p + 16, bits);
            hit = 1;
        }
    }
    ck_assert_msg(hit, "option %d not in the checkpoint", (int)key);
}

/* The test cases of the tcases "damage" and "api", in their files. */
void checkpoint_damage_tests(TCase *tc);   /* check_checkpoint_damage.c */
void checkpoint_options_tests(TCase *tc);  /* check_checkpoint_options.c */
void checkpoint_format_tests(TCase *tc);   /* check_checkpoint_format.c */
void checkpoint_saved_tests(TCase *tc);    /* check_checkpoint_saved.c */
void checkpoint_api_tests(TCase *tc);      /* check_checkpoint_api.c */

#endif
