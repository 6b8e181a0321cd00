/* check_checkpoint.c — save and resume: training k steps, saving, loading
 * into a fresh trainer (and a fresh process) and training N - k more gives
 * the same bits as N uninterrupted steps, for plain AdamW, SGD momentum,
 * SAM, GSAM, R-Drop, SMART with its Bregman teacher, SMART+SAM, SAM+R-Drop
 * and Bregman alone (its beta switching after the resume); every kind of
 * damage is refused with the right status and leaves the trainer untouched
 * (every truncation, every single-bit flip, forged sections, format 1 of
 * libregopt 0.x, features this library does not know, other regularizers);
 * unknown sections are skipped; saving to a path is atomic. Checkpoints are
 * format 2: the forgeries below read and write its layout with their own
 * code (offsets from the format description), not the library's.
 *
 * Host: z = (x + nu) .* m W + b over D inputs, with an inverted-dropout
 * mask m drawn from the pass seed (so the seeds matter), the SMART
 * perturbation nu on the inputs and d(input) for the adversarial passes. */
#define _XOPEN_SOURCE 700 /* mkdtemp, symlink, lstat */
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

static int ck_forward(const regopt_pass *p, void *user)
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

static int ck_backward(const regopt_pass *p, void *user)
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
static regopt_model *ck_model(ck_host *h, const char *b_name, int32_t b_group,
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

static int tm_value(const regopt_term_view *v, double *value, void *user)
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

static size_t tm_state_size(void *user)
{
    (void)user;
    return 8;
}

static int tm_save(void *buf, size_t size, void *user)
{
    const term_state *ts = user;
    if (size != 8)
        return 1;
    memcpy(buf, &ts->commits, 8);
    return 0;
}

static int tm_load(const void *buf, size_t size, void *user)
{
    term_state *ts = user;
    if (size != 8 || ts->fail_load)
        return 1;
    memcpy(&ts->commits, buf, 8);
    return 0;
}

static void tm_committed(uint64_t step, void *user)
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

static int has_sam(int config)
{
    return config == C_SAM || config == C_GSAM || config == C_SMART_SAM ||
           config == C_SAM_RDROP;
}
static int has_rdrop(int config) { return config == C_RDROP || config == C_SAM_RDROP; }
static int has_smart(int config) { return config == C_SMART || config == C_SMART_SAM; }
static int has_bregman(int config) { return config == C_SMART || config == C_BREGMAN; }

/* Attach the configuration's regularizers to r->t (handles with defaults). */
static void rig_attach(rig *r, int config)
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
static void rig_make(rig *r, int config, int init, int options)
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

static void rig_free(rig *r)
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

static void rig_step(rig *r, int s)
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
static unsigned char *rig_save(rig *r, uint32_t flags, size_t *size)
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
static unsigned char *reference(int config, size_t *size)
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

static const char *section_at(const unsigned char *c, size_t n, size_t at, char *name)
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
static void same_bytes(const unsigned char *a, size_t na, const unsigned char *b, size_t nb,
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
static unsigned char *interrupted(int config, uint32_t flags, size_t *n)
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
static void finish_and_compare(rig *b, int config)
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

/* Resume within the process; the checkpoint carries weights, moments,
 * teacher, seed and options into a rig built with defaults and garbage. */
START_TEST(resume_in_process)
{
    int config = _i;
    rig b;
    size_t nmid;
    unsigned char *mid = interrupted(config, ALL, &nmid);
    rig_make(&b, config, 0, 0);
    TMUST(b.t, regopt_trainer_load_buffer(b.t, ALL, mid, nmid));
    ck_assert_float_eq(b.h.frozen[0], 0.5f); /* frozen tensors come back too */
    finish_and_compare(&b, config);
    free(mid);
}
END_TEST

/* The host configures options itself and loads state and weights only. */
START_TEST(resume_without_options)
{
    int config = _i;
    rig b;
    size_t nmid;
    unsigned char *mid = interrupted(config, REGOPT_CHECKPOINT_PARAMS, &nmid);
    rig_make(&b, config, 0, 1);
    TMUST(b.t, regopt_trainer_set_int(b.t, REGOPT_TRAINER_SEED, 99)); /* the RNG comes back */
    TMUST(b.t, regopt_trainer_load_buffer(b.t, REGOPT_CHECKPOINT_PARAMS, mid, nmid));
    finish_and_compare(&b, config);
    free(mid);
}
END_TEST

/* A fresh process: a child trains k steps and saves to a file; this
 * process, which never trained, resumes from the file. */
START_TEST(resume_fresh_process)
{
    int config = _i, s, status;
    char path[] = "/tmp/regopt_ckpt_XXXXXX";
    rig b;
    pid_t pid;
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        rig a;
        rig_make(&a, config, 1, 1);
        for (s = 0; s < K_STEPS; s++)
            rig_step(&a, s);
        _exit(regopt_trainer_save_file(a.t, ALL, path) == REGOPT_OK ? 0 : 1);
    }
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the saving child failed");
    rig_make(&b, config, 0, 0);
    TMUST(b.t, regopt_trainer_load_file(b.t, ALL, path));
    finish_and_compare(&b, config);
    unlink(path);
}
END_TEST

/* The counter-check: without the checkpoint's state (or with a wrong
 * seed) the run differs, so the equality above is not vacuous. */
START_TEST(resume_needs_the_state)
{
    rig a, b;
    unsigned char *ref, *mid, *end;
    size_t nref, nmid, nend, i;
    int s, differs = 0;
    ref = reference(C_RDROP, &nref);
    rig_make(&a, C_RDROP, 1, 1);
    for (s = 0; s < K_STEPS; s++)
        rig_step(&a, s);
    mid = rig_save(&a, ALL, &nmid);
    rig_free(&a);
    rig_make(&b, C_RDROP, 0, 0);
    TMUST(b.t, regopt_trainer_load_buffer(b.t, ALL, mid, nmid));
    TMUST(b.t, regopt_trainer_set_int(b.t, REGOPT_TRAINER_SEED, 7)); /* other dropout */
    for (s = K_STEPS; s < N_STEPS; s++)
        rig_step(&b, s);
    end = rig_save(&b, ALL, &nend);
    ck_assert_uint_eq(nref, nend);
    for (i = 0; i < nref; i++)
        differs |= ref[i] != end[i];
    ck_assert_msg(differs, "another seed gave the same run: the test could not fail");
    rig_free(&b);
    free(ref);
    free(mid);
    free(end);
}
END_TEST

/* ---- damage ------------------------------------------------------------ */

/* A trained SMART+Bregman rig (teacher present), its checkpoint, and a
 * snapshot of everything a failed load must leave alone. */
typedef struct victim {
    rig r;
    unsigned char *ck, *before;
    size_t n, nbefore;
    double lr;
} victim;

static void victim_make(victim *v, uint32_t flags)
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

static void victim_untouched(victim *v, const char *what)
{
    size_t n;
    double lr;
    unsigned char *now = rig_save(&v->r, ALL, &n);
    same_bytes(v->before, v->nbefore, now, n, what);
    MUST(regopt_optimizer_get_double(v->r.o, REGOPT_OPT_LR, &lr));
    ck_assert(lr == v->lr);
    free(now);
}

static void victim_free(victim *v)
{
    rig_free(&v->r);
    free(v->ck);
    free(v->before);
}

static void expect(victim *v, const void *buf, size_t n, regopt_status want, const char *needle,
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

START_TEST(every_truncation)
{
    victim v;
    size_t len;
    victim_make(&v, ALL);
    for (len = 0; len < v.n; len++) {
        regopt_status st = regopt_trainer_load_buffer(v.r.t, ALL, v.ck, len);
        ck_assert_msg(st == REGOPT_ERR_CORRUPT, "length %zu of %zu: %s", len, v.n,
                      regopt_status_string(st));
    }
    victim_untouched(&v, "truncations");
    /* the untruncated checkpoint loads: the failures above were the cuts */
    TMUST(v.r.t, regopt_trainer_load_buffer(v.r.t, ALL, v.ck, v.n));
    victim_free(&v);
}
END_TEST

START_TEST(every_bit_flip)
{
    victim v;
    size_t i;
    int bit;
    victim_make(&v, ALL);
    for (i = 0; i < v.n; i++)
        for (bit = 0; bit < 8; bit++) {
            regopt_status st;
            v.ck[i] ^= (unsigned char)(1u << bit);
            st = regopt_trainer_load_buffer(v.r.t, ALL, v.ck, v.n);
            v.ck[i] ^= (unsigned char)(1u << bit);
            ck_assert_msg(st == REGOPT_ERR_CORRUPT || (st == REGOPT_ERR_UNSUPPORTED && i >= 8 &&
                                                       i < 12),
                          "flip of bit %d of byte %zu/%zu: %s", bit, i, v.n,
                          regopt_status_string(st));
        }
    victim_untouched(&v, "bit flips");
    victim_free(&v);
}
END_TEST

START_TEST(random_damage)
{
    victim v;
    unsigned char *copy;
    uint64_t x = 88172645463325252ull;
    int round;
    victim_make(&v, ALL);
    copy = malloc(v.n);
    for (round = 0; round < 2000; round++) {
        int k, flips;
        regopt_status st;
        memcpy(copy, v.ck, v.n);
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        flips = 1 + (int)(x % 8);
        for (k = 0; k < flips; k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            copy[(x >> 8) % v.n] ^= (unsigned char)(1 + x % 255);
        }
        st = regopt_trainer_load_buffer(v.r.t, ALL, copy, v.n);
        ck_assert_msg(st != REGOPT_OK || memcmp(copy, v.ck, v.n) == 0,
                      "round %d: damaged checkpoint accepted", round);
    }
    victim_untouched(&v, "random damage");
    free(copy);
    victim_free(&v);
}
END_TEST

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

static uint32_t crc32_ref(const unsigned char *p, size_t n, uint32_t crc)
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

static uint32_t rd32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t rd64(const unsigned char *p)
{
    return rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

static void wr32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v, p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16), p[3] = (unsigned char)(v >> 24);
}

static void wr64(unsigned char *p, uint64_t v)
{
    wr32(p, (uint32_t)v);
    wr32(p + 4, (uint32_t)(v >> 32));
}

static size_t split(const unsigned char *ck, section *s)
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

static unsigned char *join(const unsigned char *ck, section *s, size_t n, uint32_t version,
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

static int find_section(section *s, size_t n, const char *name)
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
static int find_reg(section *s, size_t n, regopt_regularizer_kind kind)
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
static unsigned char *reg_state(section *r)
{
    return r->data + REG_STATS + 8 * (size_t)rd32(r->data + REG_NSTATS);
}

/* Overwrite the value of option `key` (of `group`, or any group when -1) in
 * the "options" section; fails the test when the entry is not there. */
static void forge_option(section *s, size_t n, regopt_key key, int group, double value)
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

START_TEST(rebuilt_checkpoint_loads)
{
    /* the independent writer above reproduces the library's bytes exactly */
    victim v;
    section s[16];
    size_t n, size;
    unsigned char *b;
    victim_make(&v, ALL);
    n = split(v.ck, s);
    b = join(v.ck, s, n, FORMAT, &size);
    same_bytes(v.ck, v.n, b, size, "rebuilt");
    free(b);
    victim_free(&v);
}
END_TEST

START_TEST(unknown_section_skipped)
{
    victim v;
    section s[16];
    size_t n, size;
    unsigned char *b, *want;
    victim_make(&v, ALL);
    n = split(v.ck, s);
    /* a newer writer's section, in the middle of the table */
    memmove(&s[2], &s[1], (n - 1) * sizeof s[0]);
    memset(&s[1], 0, sizeof s[1]);
    strcpy(s[1].name, "future.thing");
    s[1].size = 40;
    s[1].data = malloc(40);
    memset(s[1].data, 0xab, 40);
    b = join(v.ck, s, n + 1, FORMAT, &size);
    TMUST(v.r.t, regopt_trainer_load_buffer(v.r.t, ALL, b, size));
    /* it loaded the same state as the plain checkpoint */
    {
        size_t nw;
        unsigned char *got = rig_save(&v.r, ALL, &nw);
        want = v.ck;
        same_bytes(want, v.n, got, nw, "state after a load with an unknown section");
        free(got);
    }
    free(b);
    victim_free(&v);
}
END_TEST

START_TEST(forged_sections)
{
    victim v;
    section s[16];
    size_t n, size;
    unsigned char *b;
    int i;
    victim_make(&v, ALL);

    /* a newer format version */
    n = split(v.ck, s);
    b = join(v.ck, s, n, FORMAT + 1, &size);
    expect(&v, b, size, REGOPT_ERR_UNSUPPORTED, "newer", "version 3");
    free(b);

    /* an option out of range: optimizer.lr = -1 */
    n = split(v.ck, s);
    forge_option(s, n, REGOPT_OPT_LR, -1, -1.0);
    b = join(v.ck, s, n, FORMAT, &size);
    expect(&v, b, size, REGOPT_ERR_OUT_OF_RANGE, "optimizer.lr", "lr -1");
    free(b);

    /* a section missing */
    n = split(v.ck, s);
    i = find_section(s, n, "moments");
    free(s[i].data);
    memmove(&s[i], &s[i + 1], (n - (size_t)i - 1) * sizeof s[0]);
    b = join(v.ck, s, n - 1, FORMAT, &size);
    expect(&v, b, size, REGOPT_ERR_CORRUPT, "moments", "no moments");
    free(b);

    /* the Bregman section (its teacher's weights) of the wrong size */
    n = split(v.ck, s);
    i = find_reg(s, n, REGOPT_REG_BREGMAN);
    s[i].size -= 4;
    {
        char name[25];
        memcpy(name, s[i].name, 24);
        name[24] = '\0';
        b = join(v.ck, s, n, FORMAT, &size);
        expect(&v, b, size, REGOPT_ERR_CORRUPT, name, "short teacher");
    }
    free(b);

    /* a "features" section missing */
    n = split(v.ck, s);
    i = find_section(s, n, "features");
    free(s[i].data);
    memmove(&s[i], &s[i + 1], (n - (size_t)i - 1) * sizeof s[0]);
    b = join(v.ck, s, n - 1, FORMAT, &size);
    expect(&v, b, size, REGOPT_ERR_CORRUPT, "features", "no features");
    free(b);

    /* a trainer section too short */
    n = split(v.ck, s);
    i = find_section(s, n, "trainer");
    s[i].size = 40;
    b = join(v.ck, s, n, FORMAT, &size);
    expect(&v, b, size, REGOPT_ERR_CORRUPT, "trainer", "short trainer");
    free(b);

    /* bytes after the last section, and a wrong magic */
    b = malloc(v.n + 1);
    memcpy(b, v.ck, v.n);
    b[v.n] = 0;
    wr64(b + 16, v.n + 1);
    wr32(b + 28, crc32_ref(b + 32, 48 * rd32(b + 12), crc32_ref(b, 28, 0)));
    expect(&v, b, v.n + 1, REGOPT_ERR_CORRUPT, "after its last section", "trailing byte");
    memcpy(b, v.ck, v.n);
    b[0] = 'X';
    expect(&v, b, v.n, REGOPT_ERR_CORRUPT, "magic", "magic");
    free(b);
    victim_free(&v);
}
END_TEST


/* Values behind valid CRCs are checked too: a forged step count, NaN
 * moments or teacher weights, negative second moments, bad flags. */
static void forge_float(section *s, size_t n, const char *name, size_t idx, float v)
{
    int i = find_section(s, n, name);
    uint32_t bits;
    memcpy(&bits, &v, 4);
    wr32(s[i].data + 4 * idx, bits);
}

START_TEST(forged_values)
{
    victim v;
    section s[16];
    size_t n, size;
    unsigned char *b;
    int i;
    victim_make(&v, ALL);

    n = split(v.ck, s);
    i = find_section(s, n, "trainer");
    wr64(s[i].data, ((uint64_t)1 << 53) + 1);
    b = join(v.ck, s, n, FORMAT, &size);
    expect(&v, b, size, REGOPT_ERR_CORRUPT, "step count", "step 2^53+1");
    free(b);

    n = split(v.ck, s);
    i = find_section(s, n, "trainer");
    wr32(s[i].data + 24, 2); /* momentum primed = 2 */
    b = join(v.ck, s, n, FORMAT, &size);
    expect(&v, b, size, REGOPT_ERR_CORRUPT, "flag", "momentum flag 2");
    free(b);

    n = split(v.ck, s);
    forge_float(s, n, "moments", 3, NAN); /* a first moment */
    b = join(v.ck, s, n, FORMAT, &size);
    expect(&v, b, size, REGOPT_ERR_CORRUPT, "non-finite", "NaN moment");
    free(b);

    n = split(v.ck, s);
    forge_float(s, n, "moments", CD * CK + CK + 1, -1e-3f); /* v of the second block */
    b = join(v.ck, s, n, FORMAT, &size);
    expect(&v, b, size, REGOPT_ERR_CORRUPT, "negative second moment", "negative v");
    free(b);

    n = split(v.ck, s);
    forge_float(s, n, "moments", 1, -1e-3f); /* a negative first moment is fine */
    b = join(v.ck, s, n, FORMAT, &size);
    ck_assert_int_eq(regopt_trainer_load_buffer(v.r.t, ALL, b, size), REGOPT_OK);
    free(b);
    TMUST(v.r.t, regopt_trainer_load_buffer(v.r.t, ALL, v.before, v.nbefore));

    /* the teacher's first weight, after Bregman's holds | pad | beta */
    n = split(v.ck, s);
    i = find_reg(s, n, REGOPT_REG_BREGMAN);
    {
        float inf = INFINITY;
        uint32_t bits;
        memcpy(&bits, &inf, 4);
        ck_assert_uint_eq(rd32(reg_state(&s[i])), 1); /* it holds weights */
        wr32(reg_state(&s[i]) + 16, bits);
    }
    b = join(v.ck, s, n, FORMAT, &size);
    expect(&v, b, size, REGOPT_ERR_CORRUPT, "teacher", "inf teacher");
    free(b);

    /* Bregman's "holds weights" flag 2 */
    n = split(v.ck, s);
    i = find_reg(s, n, REGOPT_REG_BREGMAN);
    wr32(reg_state(&s[i]), 2);
    b = join(v.ck, s, n, FORMAT, &size);
    expect(&v, b, size, REGOPT_ERR_CORRUPT, NULL, "teacher flag 2");
    free(b);

    /* the model section claims "b" is frozen: another layout */
    n = split(v.ck, s);
    i = find_section(s, n, "model");
    wr32(s[i].data + 8 + 24 + 1 + 16, 0); /* tensor 1 ("b"), after "W" (name 1 byte) */
    b = join(v.ck, s, n, FORMAT, &size);
    expect(&v, b, size, REGOPT_ERR_MISMATCH, "frozen", "b frozen");
    free(b);

    /* an option key from a newer library is skipped */
    n = split(v.ck, s);
    i = find_section(s, n, "options");
    wr32(s[i].data + 8, 9999); /* the first entry's key */
    b = join(v.ck, s, n, FORMAT, &size);
    TMUST(v.r.t, regopt_trainer_load_buffer(v.r.t, ALL, b, size));
    free(b);
    victim_free(&v);
}
END_TEST

/* An option refused after others were applied: those are put back. */
static int ck_loss(const regopt_batch *b, const float *z, size_t rows, size_t width,
                   float *row_loss, float *dz, void *user)
{
    size_t i;
    (void)b, (void)z, (void)user;
    for (i = 0; i < rows; i++)
        row_loss[i] = 0.0f;
    for (i = 0; i < rows * width; i++)
        dz[i] = 0.0f;
    return 0;
}

START_TEST(options_rollback)
{
    rig a, b;
    unsigned char *ck;
    size_t n;
    double lr, wd;
    int64_t schedule;
    rig_make(&a, C_ADAMW, 1, 1);
    TMUST(a.t, regopt_trainer_set_loss_callback(a.t, ck_loss, NULL, NULL));
    ck = rig_save(&a, ALL, &n);
    rig_free(&a);
    rig_make(&b, C_ADAMW, 1, 0); /* defaults, and no loss callback */
    ck_assert_int_eq(regopt_trainer_load_buffer(b.t, ALL, ck, n), REGOPT_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(b.t), "callback"));
    MUST(regopt_optimizer_get_double(b.o, REGOPT_OPT_LR, &lr));
    MUST(regopt_optimizer_get_int(b.o, REGOPT_OPT_SCHEDULE, &schedule));
    MUST(regopt_optimizer_get_group(b.o, 1, REGOPT_GROUP_WEIGHT_DECAY, &wd));
    ck_assert(lr == 1e-3 && schedule == REGOPT_SCHEDULE_CONSTANT && wd == -1.0);
    /* with the callback set, the same checkpoint loads */
    TMUST(b.t, regopt_trainer_set_loss_callback(b.t, ck_loss, NULL, NULL));
    TMUST(b.t, regopt_trainer_load_buffer(b.t, ALL, ck, n));
    MUST(regopt_optimizer_get_double(b.o, REGOPT_OPT_LR, &lr));
    ck_assert(lr == 0.05);
    rig_free(&b);
    free(ck);
}
END_TEST

START_TEST(options_group_weight_decay)
{
    victim v;
    section s[16];
    size_t n, size;
    unsigned char *b;
    victim_make(&v, ALL);
    n = split(v.ck, s);
    /* inside the key's [-1, 1e3], but only -1 is special */
    forge_option(s, n, REGOPT_GROUP_WEIGHT_DECAY, 2, -0.5);
    b = join(v.ck, s, n, FORMAT, &size);
    expect(&v, b, size, REGOPT_ERR_OUT_OF_RANGE, "group.weight_decay of group 2", "wd -0.5");
    free(b);
    victim_free(&v);
}
END_TEST

/* A step-0 checkpoint loaded into a trained trainer resets everything:
 * momentum no longer primed, teacher no longer holding weights. */
START_TEST(load_fresh_into_trained)
{
    static const int configs[2] = {C_SGD, C_SMART};
    int config = configs[_i];
    rig a, b;
    unsigned char *fresh, *now;
    size_t nf, nn;
    rig_make(&a, config, 1, 1);
    fresh = rig_save(&a, ALL, &nf);
    rig_free(&a);
    rig_make(&b, config, 1, 1);
    rig_step(&b, 0);
    rig_step(&b, 1);
    TMUST(b.t, regopt_trainer_load_buffer(b.t, ALL, fresh, nf));
    now = rig_save(&b, ALL, &nn);
    same_bytes(fresh, nf, now, nn, config_name[config]);
    free(fresh);
    free(now);
    rig_free(&b);
}
END_TEST

START_TEST(amsgrad_mismatch)
{
    victim v;
    rig r;
    victim_make(&v, ALL);
    memset(&r, 0, sizeof r);
    r.m = ck_model(&r.h, "b", 1, NULL);
    r.o = regopt_optimizer_create(REGOPT_ADAMW, NULL, NULL);
    MUST(regopt_optimizer_set_int(r.o, REGOPT_OPT_AMSGRAD, 1));
    r.t = regopt_trainer_create(r.m, r.o, NULL);
    ck_assert_ptr_nonnull(r.t);
    rig_attach(&r, C_SMART);
    ck_assert_int_eq(regopt_trainer_load_buffer(r.t, ALL, v.ck, v.n), REGOPT_ERR_MISMATCH);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r.t), "amsgrad"));
    rig_free(&r);
    victim_free(&v);
}
END_TEST

/* Saving reads every option without leaving a failure in any message. */
START_TEST(save_leaves_messages_alone)
{
    victim v;
    size_t n;
    unsigned char *b;
    victim_make(&v, ALL);
    ck_assert_str_eq(regopt_optimizer_message(v.r.o), "");
    b = rig_save(&v.r, ALL, &n);
    ck_assert_str_eq(regopt_optimizer_message(v.r.o), "");
    ck_assert_str_eq(regopt_trainer_message(v.r.t), "");
    free(b);
    victim_free(&v);
}
END_TEST


/* ---- mismatches -------------------------------------------------------- */

/* Load ck into a trained rig of `config` (tweaked); the load must fail with
 * `want`, its message hold needle and needle2 (when not NULL), and leave the
 * trainer as it was. */
static void load_into(int config, int tweak, const unsigned char *ck, size_t n,
                      regopt_status want, const char *needle, const char *needle2)
{
    rig r;
    size_t nb, na;
    unsigned char *before, *after;
    rig_make(&r, config, 0, 1);
    if (tweak == 3) /* config's optimizer with the victim's regularizers */
        rig_attach(&r, C_SMART);
    if (tweak == 1 || tweak == 2) { /* a differently named bias (1), or the bias in group 0 (2) */
        regopt_trainer_free(r.t);
        regopt_model_free(r.m);
        r.m = ck_model(&r.h, tweak == 1 ? "bias" : "b", tweak == 1 ? 1 : 0, NULL);
        r.t = regopt_trainer_create(r.m, r.o, NULL);
        ck_assert_ptr_nonnull(r.t);
        /* freeing the first trainer detached them: they attach again */
        ck_assert_ptr_null(regopt_regularizer_get_trainer(r.smart));
        TMUST(r.t, regopt_trainer_attach(r.t, r.smart));
        TMUST(r.t, regopt_trainer_attach(r.t, r.bregman));
    }
    rig_step(&r, 5);
    before = rig_save(&r, ALL, &nb);
    {
        regopt_status st = regopt_trainer_load_buffer(r.t, ALL, ck, n);
        ck_assert_msg(st == want, "got %s (%s)", regopt_status_string(st),
                      regopt_trainer_message(r.t));
        ck_assert_msg(strstr(regopt_trainer_message(r.t), needle) != NULL,
                      "message \"%s\" lacks \"%s\"", regopt_trainer_message(r.t), needle);
        if (needle2)
            ck_assert_msg(strstr(regopt_trainer_message(r.t), needle2) != NULL,
                          "message \"%s\" lacks \"%s\"", regopt_trainer_message(r.t), needle2);
    }
    after = rig_save(&r, ALL, &na);
    same_bytes(before, nb, after, na, "after a refused load");
    free(before);
    free(after);
    rig_free(&r);
}

START_TEST(mismatches_refused)
{
    victim v;
    victim_make(&v, ALL);
    load_into(C_SGD, 0, v.ck, v.n, REGOPT_ERR_MISMATCH, "optimizer adamw", NULL);
    /* another optimizer and the same regularizers: only the optimizer differs */
    load_into(C_SGD, 3, v.ck, v.n, REGOPT_ERR_MISMATCH, "optimizer adamw", NULL);
    /* another set of regularizers: both lists named */
    load_into(C_SAM, 0, v.ck, v.n, REGOPT_ERR_MISMATCH, "bregman", "sam");
    load_into(C_ADAMW, 0, v.ck, v.n, REGOPT_ERR_MISMATCH, "regularizers", "bregman");
    load_into(C_BREGMAN, 0, v.ck, v.n, REGOPT_ERR_MISMATCH, "smart", "bregman");
    load_into(C_SMART, 1, v.ck, v.n, REGOPT_ERR_MISMATCH, "\"bias\"", NULL);
    load_into(C_SMART, 2, v.ck, v.n, REGOPT_ERR_MISMATCH, "group", NULL);
    victim_free(&v);
}
END_TEST

START_TEST(flags_not_saved)
{
    victim v;
    victim_make(&v, 0); /* neither params nor options */
    {
        regopt_status st = regopt_trainer_load_buffer(v.r.t, REGOPT_CHECKPOINT_PARAMS, v.ck, v.n);
        ck_assert_int_eq(st, REGOPT_ERR_MISMATCH);
        ck_assert_ptr_nonnull(strstr(regopt_trainer_message(v.r.t), "no parameters"));
        st = regopt_trainer_load_buffer(v.r.t, REGOPT_CHECKPOINT_OPTIONS, v.ck, v.n);
        ck_assert_int_eq(st, REGOPT_ERR_MISMATCH);
        ck_assert_ptr_nonnull(strstr(regopt_trainer_message(v.r.t), "no options"));
    }
    victim_untouched(&v, "flags not saved");
    TMUST(v.r.t, regopt_trainer_load_buffer(v.r.t, 0, v.ck, v.n));
    victim_free(&v);
}
END_TEST

/* ---- format 1, features, regularizers (format 2) ----------------------- */

static unsigned char *memdup_(const void *p, size_t n)
{
    unsigned char *d = malloc(n + 64);
    ck_assert_ptr_nonnull(d);
    memcpy(d, p, n);
    return d;
}

/* The victim's state as libregopt 0.x wrote it: format 1, built here from
 * the format-2 sections (see the format 1 description in regopt.h):
 * "trainer" of 64 bytes with the regularizers as a bit mask, the Bregman
 * teacher's flag and beta, and the 0.x statistics 900..922; the teacher's
 * weights in a "teacher" section; options with a pad where format 2 has
 * the owner; no "features", no "reg.N". */
#define V1_STATS 23
static unsigned char *format1_of(const victim *v, size_t *size)
{
    section s[16], o[8];
    size_t n = split(v->ck, s), k = 0, i, nst, cnt, trainable;
    int tr = find_section(s, n, "trainer"), br = find_reg(s, n, REGOPT_REG_BREGMAN), op;
    const unsigned char *st = reg_state(&s[br]);
    unsigned char *out;
    memset(o, 0, sizeof o);
    trainable = (size_t)rd64(s[tr].data + TR_TRAINABLE);
    nst = rd32(s[tr].data + TR_NSTATS);
    ck_assert_uint_le(nst, V1_STATS);

    strcpy(o[k].name, "trainer");
    o[k].size = 64 + 8 * V1_STATS;
    o[k].data = calloc(1, o[k].size);
    memcpy(o[k].data, s[tr].data, 28); /* step, seed, kind, floats per element, primed */
    wr32(o[k].data + 28, 1u << REGOPT_REG_SMART | 1u << REGOPT_REG_BREGMAN);
    wr64(o[k].data + 32, trainable);
    wr32(o[k].data + 40, rd32(st)); /* the teacher holds weights */
    memcpy(o[k].data + 48, st + 8, 8); /* beta of the last step */
    wr32(o[k].data + 56, V1_STATS);
    memcpy(o[k].data + 64, s[tr].data + TR_STATS, 8 * nst);
    k++;
    i = (size_t)find_section(s, n, "model");
    o[k] = s[i], o[k].data = memdup_(s[i].data, s[i].size), k++;
    i = (size_t)find_section(s, n, "moments");
    o[k] = s[i], o[k].data = memdup_(s[i].data, s[i].size), k++;
    ck_assert_uint_eq(rd32(st), 1);
    strcpy(o[k].name, "teacher");
    o[k].size = 4 * trainable;
    o[k].data = memdup_(st + 16, o[k].size);
    k++;
    i = (size_t)find_section(s, n, "params");
    o[k] = s[i], o[k].data = memdup_(s[i].data, s[i].size), k++;
    op = find_section(s, n, "options");
    o[k] = s[op], o[k].data = memdup_(s[op].data, s[op].size);
    cnt = rd32(o[k].data);
    for (i = 0; i < cnt; i++)
        wr32(o[k].data + 8 + OPT_ENTRY * i + OPT_OWNER, 0); /* format 1: pad */
    k++;
    for (i = 0; i < n; i++)
        free(s[i].data);
    out = join(v->ck, o, k, 1, size);
    ck_assert_uint_eq(rd32(out + 8), 1);
    return out;
}

START_TEST(format1_refused)
{
    victim v;
    section s[16];
    size_t n, size;
    unsigned char *b;
    victim_make(&v, ALL);
    /* a checkpoint of libregopt 0.x */
    b = format1_of(&v, &size);
    expect(&v, b, size, REGOPT_ERR_UNSUPPORTED, "0.x", "format 1");
    ck_assert_int_eq(regopt_trainer_load_buffer(v.r.t, 0, b, size), REGOPT_ERR_UNSUPPORTED);
    ck_assert_int_eq(regopt_trainer_load_buffer(v.r.t, REGOPT_CHECKPOINT_PARAMS, b, size),
                     REGOPT_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(v.r.t), "0.x"));
    victim_untouched(&v, "format 1, other flags");
    free(b);
    /* the version decides: format-2 sections under a version-1 header */
    n = split(v.ck, s);
    b = join(v.ck, s, n, 1, &size);
    expect(&v, b, size, REGOPT_ERR_UNSUPPORTED, "0.x", "version 1");
    free(b);
    /* and a version 0 is no format at all */
    n = split(v.ck, s);
    b = join(v.ck, s, n, 0, &size);
    {
        regopt_status st = regopt_trainer_load_buffer(v.r.t, ALL, b, size);
        ck_assert_msg(st == REGOPT_ERR_CORRUPT || st == REGOPT_ERR_UNSUPPORTED, "version 0: %s",
                      regopt_status_string(st));
    }
    victim_untouched(&v, "version 0");
    free(b);
    victim_free(&v);
}
END_TEST

/* The "features" section: the victim needs SMART (bit 2) and Bregman (bit
 * 3); a required bit this library does not know is refused by name. */
START_TEST(unknown_feature_refused)
{
    victim v;
    section s[16];
    size_t n, size, cnt, e;
    unsigned char *b, *f;
    int i, seen = 0;
    victim_make(&v, ALL);
    n = split(v.ck, s);
    i = find_section(s, n, "features");
    f = s[i].data;
    ck_assert_uint_eq(rd64(f), (1u << 2) | (1u << 3));
    cnt = rd32(f + FEAT_COUNT);
    ck_assert_uint_eq(rd32(f + FEAT_COUNT + 4), 0); /* pad */
    ck_assert_uint_eq(s[i].size, FEAT_ENTRIES + FEAT_ENTRY * cnt);
    for (e = 0; e < cnt; e++) {
        const unsigned char *p = f + FEAT_ENTRIES + FEAT_ENTRY * e;
        char name[21];
        memcpy(name, p + 4, 20);
        name[20] = '\0';
        if (rd32(p) == 2) {
            seen |= 1;
            ck_assert_str_eq(name, "smart");
        }
        if (rd32(p) == 3) {
            seen |= 2;
            ck_assert_str_eq(name, "bregman");
        }
    }
    ck_assert_msg(seen == 3, "features of smart and bregman not both named (%zu entries)", cnt);
    /* bit 40, "future", required */
    wr64(f, rd64(f) | (uint64_t)1 << 40);
    memset(f + s[i].size, 0, FEAT_ENTRY);
    wr32(f + s[i].size, 40);
    memcpy(f + s[i].size + 4, "future", 6);
    wr32(f + FEAT_COUNT, (uint32_t)cnt + 1);
    s[i].size += FEAT_ENTRY;
    b = join(v.ck, s, n, FORMAT, &size); /* every CRC recomputed */
    expect(&v, b, size, REGOPT_ERR_UNSUPPORTED, "future", "feature bit 40");
    ck_assert_int_eq(regopt_trainer_load_buffer(v.r.t, 0, b, size), REGOPT_ERR_UNSUPPORTED);
    victim_untouched(&v, "feature bit 40, flags 0");
    free(b);
    /* the same entry first in the table */
    n = split(v.ck, s);
    i = find_section(s, n, "features");
    f = s[i].data;
    memmove(f + FEAT_ENTRIES + FEAT_ENTRY, f + FEAT_ENTRIES, FEAT_ENTRY * cnt);
    memset(f + FEAT_ENTRIES, 0, FEAT_ENTRY);
    wr32(f + FEAT_ENTRIES, 40);
    memcpy(f + FEAT_ENTRIES + 4, "future", 6);
    wr64(f, rd64(f) | (uint64_t)1 << 40);
    wr32(f + FEAT_COUNT, (uint32_t)cnt + 1);
    s[i].size += FEAT_ENTRY;
    b = join(v.ck, s, n, FORMAT, &size);
    expect(&v, b, size, REGOPT_ERR_UNSUPPORTED, "future", "feature bit 40 first");
    free(b);
    victim_free(&v);
}
END_TEST

static int occurrences(const char *hay, const char *needle)
{
    int k = 0;
    const char *p = hay;
    while ((p = strstr(p, needle)) != NULL)
        k++, p += strlen(needle);
    return k;
}

/* Load ck into a trained rig of config (built with its options); returns
 * the status; the rig must be untouched after a failure. */
static regopt_status load_checked(rig *r, const unsigned char *ck, size_t n, char *msg,
                                  size_t cap, const char *what)
{
    size_t nb, na;
    unsigned char *before = rig_save(r, ALL, &nb), *after;
    regopt_status st = regopt_trainer_load_buffer(r->t, ALL, ck, n);
    snprintf(msg, cap, "%s", regopt_trainer_message(r->t));
    if (st != REGOPT_OK) {
        after = rig_save(r, ALL, &na);
        same_bytes(before, nb, after, na, what);
        free(after);
    }
    free(before);
    return st;
}

/* A checkpoint of SAM + R-Drop and a trainer with SAM only (and the other
 * way round): REGOPT_ERR_MISMATCH naming both lists. The same kinds
 * attached in the other order load and resume bit for bit. */
START_TEST(other_regularizers_refused)
{
    rig a, b;
    unsigned char *ck_both, *ck_sam;
    size_t n_both, n_sam;
    char msg[256];
    regopt_status st;
    int s;
    rig_make(&a, C_SAM_RDROP, 1, 1);
    for (s = 0; s < 2; s++)
        rig_step(&a, s);
    ck_both = rig_save(&a, ALL, &n_both);
    rig_free(&a);
    rig_make(&a, C_SAM, 1, 1);
    for (s = 0; s < 2; s++)
        rig_step(&a, s);
    ck_sam = rig_save(&a, ALL, &n_sam);

    /* SAM + R-Drop into SAM */
    st = load_checked(&a, ck_both, n_both, msg, sizeof msg, "sam+rdrop into sam");
    ck_assert_msg(st == REGOPT_ERR_MISMATCH, "got %s (%s)", regopt_status_string(st), msg);
    ck_assert_msg(strstr(msg, "rdrop") != NULL, "message \"%s\" lacks rdrop", msg);
    ck_assert_msg(occurrences(msg, "sam") >= 2, "message \"%s\" does not name both lists", msg);
    rig_free(&a);

    /* SAM into SAM + R-Drop */
    rig_make(&b, C_SAM_RDROP, 1, 1);
    rig_step(&b, 0);
    st = load_checked(&b, ck_sam, n_sam, msg, sizeof msg, "sam into sam+rdrop");
    ck_assert_msg(st == REGOPT_ERR_MISMATCH, "got %s (%s)", regopt_status_string(st), msg);
    ck_assert_msg(strstr(msg, "rdrop") != NULL, "message \"%s\" lacks rdrop", msg);
    ck_assert_msg(occurrences(msg, "sam") >= 2, "message \"%s\" does not name both lists", msg);
    rig_free(&b);

    /* a second R-Drop is not possible, a SAM + R-Drop trainer with its
       regularizers attached the other way round is the same trainer */
    {
        size_t nmid, i;
        unsigned char *mid = interrupted(C_SAM_RDROP, ALL, &nmid);
        rig_make(&a, C_SAM_RDROP, 1, 1);
        rig_make(&b, C_ADAMW, 0, 0);
        b.rdrop = tu_add(b.t, REGOPT_REG_RDROP);
        b.sam = tu_add(b.t, REGOPT_REG_SAM);
        ck_assert_int_eq(regopt_trainer_attach(b.t, tu_new(REGOPT_REG_RDROP)),
                         REGOPT_ERR_STATE);
        ck_assert_uint_eq(regopt_trainer_regularizer_count(b.t), 2);
        for (i = 0; i < 2; i++)
            ck_assert_int_eq(
                regopt_regularizer_get_kind(regopt_trainer_regularizer_at(b.t, i)),
                regopt_regularizer_get_kind(regopt_trainer_regularizer_at(a.t, i)));
        rig_free(&a);
        TMUST(b.t, regopt_trainer_load_buffer(b.t, ALL, mid, nmid));
        finish_and_compare(&b, C_SAM_RDROP);
        free(mid);
    }
    free(ck_both);
    free(ck_sam);
}
END_TEST

/* Where format 2 puts what (a saved SMART + Bregman rig after two steps),
 * read with this file's own parser and compared with what the API says. */
START_TEST(format2_layout)
{
    rig a;
    section s[16];
    unsigned char *ck;
    size_t n, nck, i, j, nreg, trainable = CD * CK + CK;
    const char *const names[] = {"trainer", "features", "model", "moments", "params",
                                 "options"};
    int tr, op;
    rig_make(&a, C_SMART, 1, 1);
    rig_step(&a, 0);
    rig_step(&a, 1);
    ck = rig_save(&a, ALL, &nck);
    ck_assert_int_eq(memcmp(ck, "REGOPTCK", 8), 0);
    ck_assert_uint_eq(rd32(ck + 8), FORMAT);
    ck_assert_uint_eq(rd64(ck + 16), nck);
    n = split(ck, s);
    for (i = 0; i < sizeof names / sizeof names[0]; i++)
        (void)find_section(s, n, names[i]);

    /* "trainer" */
    tr = find_section(s, n, "trainer");
    ck_assert_uint_eq(rd64(s[tr].data), 2);
    ck_assert_uint_eq(rd64(s[tr].data + 8), 1234567);
    ck_assert_uint_eq(rd32(s[tr].data + 16), REGOPT_ADAMW);
    ck_assert_uint_eq(rd32(s[tr].data + 20), 2);
    ck_assert_uint_eq(rd32(s[tr].data + 24), 0);
    nreg = rd32(s[tr].data + TR_REGS);
    ck_assert_uint_eq(nreg, 2);
    ck_assert_uint_eq(nreg, regopt_trainer_regularizer_count(a.t));
    ck_assert_uint_eq(rd64(s[tr].data + TR_TRAINABLE), trainable);
    ck_assert_uint_eq(rd32(s[tr].data + TR_NSTATS), REGOPT_STAT_BACKWARD_CALLS - REGOPT_STAT_LOSS + 1);
    ck_assert_uint_eq(rd32(s[tr].data + TR_NSTATS + 4), 0);
    ck_assert_uint_eq(s[tr].size, TR_STATS + 8 * (size_t)rd32(s[tr].data + TR_NSTATS));
    ck_assert_int_eq(stat_int(a.t, REGOPT_STAT_STEP), 2);
    for (i = 0; i < rd32(s[tr].data + TR_NSTATS); i++) {
        double want = stat_of_trainer(a.t, (regopt_key)(REGOPT_STAT_LOSS + (int)i)), got;
        if (REGOPT_STAT_LOSS + (int)i == REGOPT_STAT_STEP)
            continue; /* stat.step is the step count @0, not kept in the array */
        memcpy(&got, s[tr].data + TR_STATS + 8 * i, 8);
        ck_assert_msg(memcmp(&got, &want, 8) == 0, "trainer statistic %zu: %g, want %g", i,
                      got, want);
    }

    /* "reg.N": the attached regularizers in step order */
    for (j = 0; j < nreg; j++) {
        regopt_regularizer *r = regopt_trainer_regularizer_at(a.t, j);
        regopt_regularizer_kind kind = regopt_regularizer_get_kind(r), k;
        const char *kname = NULL;
        char secname[24], name[25];
        size_t nst, m, ki, si = 0;
        regopt_key key;
        unsigned char *d;
        int x;
        snprintf(secname, sizeof secname, "reg.%zu", j);
        x = find_section(s, n, secname);
        d = s[x].data;
        ck_assert_uint_eq(rd32(d + REG_KIND), kind);
        ck_assert_uint_eq(rd32(d + REG_INSTANCE), 0);
        for (ki = 0; regopt_regularizer_kind_info(ki, &k, &kname, NULL) == REGOPT_OK; ki++)
            if (k == kind)
                break;
        ck_assert_ptr_nonnull(kname);
        memcpy(name, d + REG_NAME, 24);
        name[24] = '\0';
        ck_assert_str_eq(name, kname);
        nst = rd32(d + REG_NSTATS);
        ck_assert_uint_eq(rd32(d + REG_NSTATS + 4), 0);
        m = (size_t)rd64(d + REG_STATE_SIZE);
        ck_assert_uint_eq(s[x].size, REG_STATS + 8 * nst + m);
        /* its statistics in key order: the read-only keys named "<kind>." */
        for (ki = 0; regopt_key_at(ki, &key) == REGOPT_OK; ki++) {
            const char *kn = NULL;
            uint32_t flags = 0;
            double want, got;
            MUST(regopt_key_info(key, &kn, NULL, NULL, NULL, NULL, &flags));
            if (!(flags & REGOPT_KEY_READ_ONLY) || strncmp(kn, kname, strlen(kname)) != 0 ||
                kn[strlen(kname)] != '.')
                continue;
            ck_assert_uint_lt(si, nst);
            want = rstat(r, key);
            memcpy(&got, d + REG_STATS + 8 * si, 8);
            ck_assert_msg(memcmp(&got, &want, 8) == 0, "%s: statistic %zu (%s): %g, want %g",
                          secname, si, kn, got, want);
            si++;
        }
        ck_assert_uint_eq(si, nst);
        if (kind == REGOPT_REG_BREGMAN) {
            double beta;
            ck_assert_uint_eq(m, 16 + 4 * trainable);
            ck_assert_uint_eq(rd32(d + REG_STATS + 8 * nst), 1);
            ck_assert_uint_eq(rd32(d + REG_STATS + 8 * nst + 4), 0);
            memcpy(&beta, d + REG_STATS + 8 * nst + 8, 8);
            ck_assert(beta == rstat(r, REGOPT_STAT_BREGMAN_BETA));
            ck_assert(beta == 0.5);
        } else {
            ck_assert_uint_eq(m, 0);
        }
    }

    /* "options": the regularizers' keys are owned by their "reg.N" */
    op = find_section(s, n, "options");
    {
        size_t cnt = rd32(s[op].data), seen_mu = 0;
        ck_assert_uint_eq(s[op].size, 8 + OPT_ENTRY * cnt);
        for (i = 0; i < cnt; i++) {
            const unsigned char *p = s[op].data + 8 + OPT_ENTRY * i;
            uint32_t key = rd32(p), owner = rd32(p + OPT_OWNER);
            if (key < 1000) {
                ck_assert_msg(owner == NO_OWNER, "key %u owned by %u", key, owner);
                continue;
            }
            ck_assert_msg(owner < nreg, "key %u: owner %u of %zu", key, owner, nreg);
            if (key == REGOPT_BREGMAN_MU) {
                double mu;
                ck_assert_int_eq(regopt_regularizer_get_kind(
                                     regopt_trainer_regularizer_at(a.t, owner)),
                                 REGOPT_REG_BREGMAN);
                memcpy(&mu, p + 16, 8);
                ck_assert(mu == 2.0);
                seen_mu++;
            }
            if (key == REGOPT_SMART_LAMBDA)
                ck_assert_int_eq(regopt_regularizer_get_kind(
                                     regopt_trainer_regularizer_at(a.t, owner)),
                                 REGOPT_REG_SMART);
        }
        ck_assert_uint_eq(seen_mu, 1);
    }
    for (i = 0; i < n; i++)
        free(s[i].data);
    free(ck);
    rig_free(&a);
}
END_TEST

/* Bregman alone: its beta switches at step 5 (bregman.switch_step), after
 * the resume at step 3, so the checkpoint's options carry it; and the
 * teacher's weights in the checkpoint are what the resumed run uses (one
 * changed weight changes the run). */
START_TEST(resume_bregman_teacher)
{
    rig b;
    section s[16];
    unsigned char *mid, *forged, *ref, *end;
    size_t nmid, n, nforged, nref, nend, i;
    int st, x, differs = 0;
    float w0;
    mid = interrupted(C_BREGMAN, ALL, &nmid);
    rig_make(&b, C_BREGMAN, 0, 0); /* defaults: beta 0.99, no switch step */
    TMUST(b.t, regopt_trainer_load_buffer(b.t, ALL, mid, nmid));
    for (st = K_STEPS; st < N_STEPS; st++) {
        rig_step(&b, st);
        /* the EMA runs in float: the beta applied is the float nearest */
        ck_assert_msg(rstat(b.bregman, REGOPT_STAT_BREGMAN_BETA) ==
                          (double)(st < 5 ? 0.6f : 0.9f),
                      "step %d: beta %g", st, rstat(b.bregman, REGOPT_STAT_BREGMAN_BETA));
        ck_assert(rstat(b.bregman, REGOPT_STAT_BREGMAN_D) > 0.0);
    }
    rig_free(&b);

    n = split(mid, s);
    x = find_reg(s, n, REGOPT_REG_BREGMAN);
    ck_assert_uint_eq(rd32(reg_state(&s[x])), 1);
    memcpy(&w0, reg_state(&s[x]) + 16, 4);
    w0 += 0.25f;
    memcpy(reg_state(&s[x]) + 16, &w0, 4);
    forged = join(mid, s, n, FORMAT, &nforged);
    rig_make(&b, C_BREGMAN, 0, 0);
    TMUST(b.t, regopt_trainer_load_buffer(b.t, ALL, forged, nforged));
    for (st = K_STEPS; st < N_STEPS; st++)
        rig_step(&b, st);
    end = rig_save(&b, ALL, &nend);
    ref = reference(C_BREGMAN, &nref);
    ck_assert_uint_eq(nref, nend);
    for (i = 0; i < nref; i++)
        differs |= ref[i] != end[i];
    ck_assert_msg(differs, "another teacher gave the same run: the teacher is not used");
    rig_free(&b);
    free(mid);
    free(forged);
    free(ref);
    free(end);
}
END_TEST

/* A user term's state travels in its "reg.N" section: the resume tests
 * cover C_TERM; here a term of another name is another set of
 * regularizers, and a term that refuses its state fails the load with
 * REGOPT_ERR_CORRUPT and changes nothing. */
START_TEST(term_name_and_state)
{
    rig a;
    section s[16];
    unsigned char *mid;
    size_t nmid, n;
    char msg[256];
    regopt_status st;
    int x;
    mid = interrupted(C_TERM, ALL, &nmid);
    /* the section: kind, the term's name, its 8 state bytes (3 commits) */
    n = split(mid, s);
    x = find_reg(s, n, REGOPT_REG_TERM);
    ck_assert_str_eq((const char *)s[x].data + REG_NAME, "decay.term");
    ck_assert_uint_eq(rd64(s[x].data + REG_STATE_SIZE), 8);
    ck_assert_uint_eq(rd64(reg_state(&s[x])), K_STEPS);
    for (x = 0; x < (int)n; x++)
        free(s[x].data);

    term_name = "other.term";
    rig_make(&a, C_TERM, 1, 1);
    term_name = "decay.term";
    rig_step(&a, 0);
    st = load_checked(&a, mid, nmid, msg, sizeof msg, "a term of another name");
    ck_assert_msg(st == REGOPT_ERR_MISMATCH, "got %s (%s)", regopt_status_string(st), msg);
    ck_assert_msg(strstr(msg, "decay.term") && strstr(msg, "other.term"),
                  "message \"%s\" does not name both terms", msg);
    ck_assert_uint_eq(a.ts.commits, 1);
    rig_free(&a);

    /* an option refused after the term could have taken its state: the
       term keeps its own (nothing changes on a failed load) */
    {
        unsigned char *bad;
        size_t nbad;
        n = split(mid, s);
        forge_option(s, n, REGOPT_OPT_LR, -1, -1.0);
        bad = join(mid, s, n, FORMAT, &nbad);
        rig_make(&a, C_TERM, 1, 1);
        rig_step(&a, 0);
        st = load_checked(&a, bad, nbad, msg, sizeof msg, "term, optimizer.lr -1");
        ck_assert_msg(st == REGOPT_ERR_OUT_OF_RANGE, "got %s (%s)", regopt_status_string(st),
                      msg);
        ck_assert_msg(a.ts.commits == 1, "the term's state is %llu after a refused load",
                      (unsigned long long)a.ts.commits);
        rig_free(&a);
        free(bad);
    }

    rig_make(&a, C_TERM, 1, 1);
    rig_step(&a, 0);
    a.ts.fail_load = 1;
    st = load_checked(&a, mid, nmid, msg, sizeof msg, "load_state refused");
    ck_assert_msg(st == REGOPT_ERR_CORRUPT, "got %s (%s)", regopt_status_string(st), msg);
    ck_assert_uint_eq(a.ts.commits, 1);
    a.ts.fail_load = 0;
    TMUST(a.t, regopt_trainer_load_buffer(a.t, ALL, mid, nmid));
    ck_assert_uint_eq(a.ts.commits, K_STEPS);
    finish_and_compare(&a, C_TERM);
    free(mid);
}
END_TEST

/* ---- API: callbacks, buffers, files, bad arguments --------------------- */

typedef struct stream {
    unsigned char *p;
    size_t cap, used, fail_after; /* a write or read beyond fail_after fails */
    size_t calls, max_chunk;
} stream;

static int s_write(const void *d, size_t n, void *user)
{
    stream *s = user;
    s->calls++;
    if (n > s->max_chunk)
        s->max_chunk = n;
    if (s->used + n > s->fail_after || s->used + n > s->cap)
        return 1;
    memcpy(s->p + s->used, d, n);
    s->used += n;
    return 0;
}

static int s_read(void *d, size_t n, void *user)
{
    stream *s = user;
    if (s->used + n > s->fail_after || s->used + n > s->cap)
        return 1;
    memcpy(d, s->p + s->used, n);
    s->used += n;
    return 0;
}

START_TEST(callbacks_and_buffers)
{
    victim v;
    stream s;
    size_t w = 0;
    unsigned char small[16];
    victim_make(&v, ALL);
    memset(&s, 0, sizeof s);
    s.cap = v.n;
    s.fail_after = (size_t)-1;
    s.p = malloc(v.n);
    /* the callback writes the same bytes as the buffer */
    rig r;
    rig_make(&r, C_SMART, 1, 1);
    rig_step(&r, 0);
    rig_step(&r, 1);
    TMUST(r.t, regopt_trainer_save(r.t, ALL, s_write, &s));
    same_bytes(v.ck, v.n, s.p, s.used, "callback vs buffer");
    ck_assert_uint_le(s.max_chunk, 65536);
    /* and reads back through the read callback */
    s.used = 0;
    TMUST(v.r.t, regopt_trainer_load(v.r.t, ALL, s_read, &s));
    {
        size_t n;
        unsigned char *got = rig_save(&v.r, ALL, &n);
        same_bytes(v.ck, v.n, got, n, "loaded through the read callback");
        free(got);
    }
    rig_free(&r);
    free(v.before);
    v.before = rig_save(&v.r, ALL, &v.nbefore);
    /* a failing writer: REGOPT_ERR_IO */
    s.used = 0;
    s.fail_after = 100;
    ck_assert_int_eq(regopt_trainer_save(v.r.t, ALL, s_write, &s), REGOPT_ERR_IO);
    /* a failing reader, at the header and in the body */
    memcpy(s.p, v.ck, v.n);
    s.used = 0;
    s.fail_after = 10;
    ck_assert_int_eq(regopt_trainer_load(v.r.t, ALL, s_read, &s), REGOPT_ERR_IO);
    s.used = 0;
    s.fail_after = v.n - 1;
    ck_assert_int_eq(regopt_trainer_load(v.r.t, ALL, s_read, &s), REGOPT_ERR_IO);
    /* a header claiming an absurd size is refused before any allocation */
    {
        unsigned char h[32];
        stream hs;
        memcpy(h, v.ck, 32);
        wr64(h + 16, (uint64_t)1 << 40);
        memset(&hs, 0, sizeof hs);
        hs.p = h;
        hs.cap = 32;
        hs.fail_after = (size_t)-1;
        ck_assert_int_eq(regopt_trainer_load(v.r.t, ALL, s_read, &hs), REGOPT_ERR_CORRUPT);
    }
    victim_untouched(&v, "failed callbacks");
    /* a buffer too small: status, the size needed, nothing written */
    memset(small, 0x5a, sizeof small);
    ck_assert_int_eq(regopt_trainer_save_buffer(v.r.t, ALL, small, sizeof small, &w),
                     REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_uint_eq(w, v.nbefore);
    ck_assert_uint_eq(small[0], 0x5a);
    ck_assert_int_eq(regopt_trainer_save_buffer(v.r.t, ALL, NULL, 0, &w),
                     REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_uint_eq(w, v.nbefore);
    free(s.p);
    victim_free(&v);
}
END_TEST

START_TEST(bad_arguments)
{
    victim v;
    size_t n;
    victim_make(&v, ALL);
    ck_assert_int_eq(regopt_trainer_checkpoint_size(NULL, 0, &n), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_checkpoint_size(v.r.t, 0, NULL), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_checkpoint_size(v.r.t, 4, &n), REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(regopt_trainer_save(NULL, 0, s_write, NULL), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_save(v.r.t, 0, NULL, NULL), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_save(v.r.t, 0x80, s_write, NULL),
                     REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(regopt_trainer_save_buffer(NULL, 0, NULL, 0, NULL), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_save_buffer(v.r.t, 0, NULL, 10, NULL),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_save_file(NULL, 0, "/tmp/x"), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_save_file(v.r.t, 0, NULL), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_save_file(v.r.t, 8, "/tmp/x"), REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(regopt_trainer_load(NULL, 0, s_read, NULL), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_load(v.r.t, 0, NULL, NULL), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_load_buffer(NULL, 0, v.ck, v.n), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_load_buffer(v.r.t, 0, NULL, 10), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_load_buffer(v.r.t, 16, v.ck, v.n),
                     REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(regopt_trainer_load_file(NULL, 0, "/tmp/x"), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_load_file(v.r.t, 0, NULL), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_load_file(v.r.t, 0, "/nonexistent/dir/ck"), REGOPT_ERR_IO);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(v.r.t), "/nonexistent/dir/ck"));
    ck_assert_int_eq(regopt_trainer_load_file(v.r.t, 0, "/tmp"), REGOPT_ERR_IO);
    ck_assert_int_eq(regopt_trainer_save_file(v.r.t, 0, "/nonexistent/dir/ck"), REGOPT_ERR_IO);
    ck_assert_int_eq(strcmp(regopt_status_string(REGOPT_ERR_CORRUPT),
                            "REGOPT_ERR_CORRUPT: the checkpoint is damaged"), 0);
    ck_assert_ptr_nonnull(strstr(regopt_status_string(REGOPT_ERR_MISMATCH), "MISMATCH"));
    ck_assert_ptr_nonnull(strstr(regopt_status_string(REGOPT_ERR_IO), "REGOPT_ERR_IO"));
    victim_untouched(&v, "bad arguments");
    victim_free(&v);
}
END_TEST

/* ---- files ------------------------------------------------------------- */

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    ck_assert_ptr_nonnull(d);
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

static unsigned char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    unsigned char *b;
    long len;
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    fseek(f, 0, SEEK_SET);
    b = malloc((size_t)len + 1);
    ck_assert_uint_eq(fread(b, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return b;
}

START_TEST(file_round_trip_and_atomicity)
{
    char dir[] = "/tmp/regopt_ckdir_XXXXXX", path[64];
    victim v;
    unsigned char *old, *now;
    size_t nold, nnow;
    pid_t pid;
    int status;
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/run.ckpt", dir);
    victim_make(&v, ALL);
    TMUST(v.r.t, regopt_trainer_save_file(v.r.t, ALL, path));
    old = slurp(path, &nold);
    same_bytes(v.before, v.nbefore, old, nold, "file vs buffer");
    ck_assert_int_eq(count_entries(dir), 1);

    /* a writer that fails mid-file (the file size limit) in a child: the
     * old checkpoint stays, byte for byte, and no temporary file remains */
    rig_step(&v.r, 3);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        struct rlimit rl = {200, 200};
        signal(SIGXFSZ, SIG_IGN);
        if (setrlimit(RLIMIT_FSIZE, &rl) != 0)
            _exit(3);
        _exit(regopt_trainer_save_file(v.r.t, ALL, path) == REGOPT_ERR_IO ? 0 : 1);
    }
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "the limited save did not fail with REGOPT_ERR_IO (exit %d)",
                  WEXITSTATUS(status));
    now = slurp(path, &nnow);
    same_bytes(old, nold, now, nnow, "the old checkpoint after a failed save");
    free(now);
    ck_assert_int_eq(count_entries(dir), 1);

    /* a successful save replaces it, and it loads */
    TMUST(v.r.t, regopt_trainer_save_file(v.r.t, ALL, path));
    now = slurp(path, &nnow);
    ck_assert_int_ne(memcmp(old, now, nold < nnow ? nold : nnow), 0);
    TMUST(v.r.t, regopt_trainer_load_file(v.r.t, ALL, path));
    /* a truncated file is damaged, not an I/O error */
    {
        FILE *f = fopen(path, "wb");
        ck_assert_uint_eq(fwrite(now, 1, nnow / 2, f), nnow / 2);
        fclose(f);
        ck_assert_int_eq(regopt_trainer_load_file(v.r.t, ALL, path), REGOPT_ERR_CORRUPT);
    }
    free(now);
    free(old);
    unlink(path);
    rmdir(dir);
    victim_free(&v);
}
END_TEST

START_TEST(file_mode_and_symlink)
{
    char dir[] = "/tmp/regopt_ckmode_XXXXXX", path[96], link[96], real[96];
    struct stat sb;
    victim v;
    mode_t old;
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/a.ckpt", dir);
    victim_make(&v, ALL);
    old = umask(077);
    TMUST(v.r.t, regopt_trainer_save_file(v.r.t, ALL, path));
    umask(old);
    ck_assert_int_eq(stat(path, &sb), 0);
    ck_assert_uint_eq(sb.st_mode & 0777, 0600); /* 0666 less the umask */
    ck_assert_int_eq(chmod(path, 0640), 0);
    TMUST(v.r.t, regopt_trainer_save_file(v.r.t, ALL, path));
    ck_assert_int_eq(stat(path, &sb), 0);
    ck_assert_uint_eq(sb.st_mode & 0777, 0640); /* a replaced file keeps its mode */
    /* through a symbolic link: the link stays, its target gets the bytes */
    snprintf(link, sizeof link, "%s/latest", dir);
    ck_assert_int_eq(symlink("a.ckpt", link), 0);
    rig_step(&v.r, 4);
    TMUST(v.r.t, regopt_trainer_save_file(v.r.t, ALL, link));
    ck_assert_int_eq(lstat(link, &sb), 0);
    ck_assert(S_ISLNK(sb.st_mode));
    {
        size_t na, nb;
        unsigned char *a = slurp(path, &na), *b = rig_save(&v.r, ALL, &nb);
        same_bytes(b, nb, a, na, "the link's target");
        free(a);
        free(b);
    }
    ck_assert_int_eq(count_entries(dir), 2);
    /* a dangling link is an I/O error naming it */
    snprintf(real, sizeof real, "%s/dangling", dir);
    ck_assert_int_eq(symlink("nowhere/x", real), 0);
    ck_assert_int_eq(regopt_trainer_save_file(v.r.t, ALL, real), REGOPT_ERR_IO);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(v.r.t), "dangling"));
    unlink(real);
    unlink(link);
    unlink(path);
    rmdir(dir);
    victim_free(&v);
}
END_TEST

/* A load allocates only temporarily and a step after it still does not. */
START_TEST(allocation_after_load)
{
    counting c = {0, 0, 0};
    regopt_allocator a = COUNTING_ALLOCATOR(&c);
    victim v;
    regopt_model *m;
    regopt_optimizer *o;
    regopt_trainer *t;
    regopt_regularizer *smart, *bregman;
    ck_host h;
    long before;
    regopt_batch b;
    victim_make(&v, ALL);
    memset(&h, 0, sizeof h);
    m = ck_model(&h, "b", 1, &a);
    o = regopt_optimizer_create(REGOPT_ADAMW, &a, NULL);
    t = regopt_trainer_create(m, o, NULL);
    /* the regularizers from the same allocator: every allocation is counted */
    smart = regopt_regularizer_create(REGOPT_REG_SMART, &a, NULL);
    bregman = regopt_regularizer_create(REGOPT_REG_BREGMAN, &a, NULL);
    ck_assert(t && smart && bregman);
    TMUST(t, regopt_trainer_attach(t, smart));
    TMUST(t, regopt_trainer_attach(t, bregman));
    TMUST(t, regopt_trainer_reserve(t, CROWS));
    before = c.allocs - c.frees;
    TMUST(t, regopt_trainer_load_buffer(t, ALL, v.ck, v.n));
    ck_assert_int_eq(c.allocs - c.frees, before); /* the load's scratch is gone */
    before = c.allocs;
    regopt_batch_init(&b);
    b.data = data_x;
    b.rows = CROWS;
    b.labels = data_y;
    TMUST(t, regopt_trainer_step(t, &b, 1));
    ck_assert_int_eq(c.allocs, before);
    regopt_trainer_free(t);
    regopt_regularizer_free(smart);
    regopt_regularizer_free(bregman);
    regopt_optimizer_free(o);
    regopt_model_free(m);
    ck_assert_int_eq(c.allocs, c.frees);
    victim_free(&v);
}
END_TEST

/* What a newer 1.x writer may add loads here: an option key this version
 * does not know (of a regularizer too: skipped), more or fewer statistics
 * in a "reg.N" section (the known ones read, the missing ones 0). An
 * unknown required feature is refused by name even when the optimizer
 * differs too; a nonzero pad in "options" is damage. */
START_TEST(newer_writer_accepted)
{
    victim v;
    section s[16];
    size_t n, size, cnt, k;
    unsigned char *b, *o, *g;
    int i, j;
    double d0, want0;
    regopt_key unknown = 1249; /* in SMART's range, no key of this version */
    ck_assert_int_eq(regopt_key_info(unknown, NULL, NULL, NULL, NULL, NULL, NULL),
                     REGOPT_ERR_UNKNOWN_KEY);
    victim_make(&v, ALL);

    /* an unknown key owned by regularizer 0 */
    n = split(v.ck, s);
    i = find_section(s, n, "options");
    o = s[i].data;
    cnt = rd32(o);
    memset(o + 8 + OPT_ENTRY * cnt, 0, OPT_ENTRY);
    wr32(o + 8 + OPT_ENTRY * cnt, (uint32_t)unknown);
    wr32(o + 8 + OPT_ENTRY * cnt + 4, 0xffffffffu);          /* no group */
    wr32(o + 8 + OPT_ENTRY * cnt + 8, REGOPT_TYPE_DOUBLE);
    wr32(o + 8 + OPT_ENTRY * cnt + OPT_OWNER, 0);             /* reg.0 */
    wr32(o, (uint32_t)cnt + 1);
    s[i].size += OPT_ENTRY;
    b = join(v.ck, s, n, FORMAT, &size);
    TMUST(v.r.t, regopt_trainer_load_buffer(v.r.t, ALL, b, size));
    free(b);

    /* one statistic more, then one fewer, in Bregman's section */
    for (k = 0; k < 2; k++) {
        uint32_t ns;
        n = split(v.ck, s);
        j = find_reg(s, n, REGOPT_REG_BREGMAN);
        g = s[j].data;
        ns = rd32(g + REG_NSTATS);
        memcpy(&want0, g + REG_STATS, 8); /* little-endian hosts: the test's own read */
        if (k == 0) { /* insert 8 bytes after the statistics */
            memmove(g + REG_STATS + 8 * (ns + 1), g + REG_STATS + 8 * ns,
                    s[j].size - REG_STATS - 8 * ns);
            memset(g + REG_STATS + 8 * ns, 0x41, 8);
            wr32(g + REG_NSTATS, ns + 1);
            s[j].size += 8;
        } else { /* drop the last one */
            memmove(g + REG_STATS + 8 * (ns - 1), g + REG_STATS + 8 * ns,
                    s[j].size - REG_STATS - 8 * ns);
            wr32(g + REG_NSTATS, ns - 1);
            s[j].size -= 8;
        }
        b = join(v.ck, s, n, FORMAT, &size);
        TMUST(v.r.t, regopt_trainer_load_buffer(v.r.t, ALL, b, size));
        d0 = rstat(v.r.bregman, REGOPT_STAT_BREGMAN_D);
        ck_assert_msg(d0 == want0, "bregman.d %g, the checkpoint's %g", d0, want0);
        if (k == 1)
            ck_assert_double_eq(rstat(v.r.bregman, REGOPT_STAT_BREGMAN_BETA), 0.0);
        free(b);
    }
    victim_free(&v);

    /* a nonzero pad after the option count */
    victim_make(&v, ALL);
    n = split(v.ck, s);
    i = find_section(s, n, "options");
    wr32(s[i].data + 4, 1);
    b = join(v.ck, s, n, FORMAT, &size);
    expect(&v, b, size, REGOPT_ERR_CORRUPT, "options", "options pad");
    free(b);
    victim_free(&v);
}
END_TEST

/* A newer writer's feature and another optimizer: the feature is named. */
START_TEST(unknown_feature_named_first)
{
    victim v;
    section s[16];
    size_t n, size, cnt;
    unsigned char *b, *f;
    int i;
    regopt_status st;
    rig other;
    victim_make(&v, ALL);
    n = split(v.ck, s);
    i = find_section(s, n, "features");
    f = s[i].data;
    cnt = rd32(f + FEAT_COUNT);
    wr64(f, rd64(f) | (uint64_t)1 << 41);
    memset(f + s[i].size, 0, FEAT_ENTRY);
    wr32(f + s[i].size, 41);
    memcpy(f + s[i].size + 4, "later", 5);
    wr32(f + FEAT_COUNT, (uint32_t)cnt + 1);
    s[i].size += FEAT_ENTRY;
    b = join(v.ck, s, n, FORMAT, &size);
    rig_make(&other, C_SGD, 0, 0); /* SGD, no regularizers: two mismatches too */
    st = regopt_trainer_load_buffer(other.t, ALL, b, size);
    ck_assert_msg(st == REGOPT_ERR_UNSUPPORTED, "got %s (%s)", regopt_status_string(st),
                  regopt_trainer_message(other.t));
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(other.t), "later"));
    rig_free(&other);
    free(b);
    victim_free(&v);
}
END_TEST

/* ---- whatever a save writes, a load accepts ------------------------------
 * Steps with huge but finite gradients: Adam's v = g^2 overflows first, then
 * SGD's momentum buffer, then weights (and with them a Bregman teacher).
 * Each step either fails with REGOPT_ERR_NONFINITE_GRADIENT and changes
 * nothing -- a checkpoint saved after it is byte for byte the one saved
 * before, weights included -- or succeeds, and then its checkpoint loads
 * into the trainer itself and into a fresh one, which saves the same bytes.
 * The host: "w" (group 0) and "b" (group 1) whose backward adds scale times
 * a fixed pattern; outputs and loss are zero. */

#define HG_N 21

typedef struct hg_host {
    float w[HG_N], gw[HG_N], b[3], gb[3];
    float scale;
} hg_host;

static int hg_forward(const regopt_pass *p, void *user)
{
    size_t k;
    (void)user;
    for (k = 0; k < p->rows * p->output_width; k++)
        p->outputs[k] = 0.0f;
    return 0;
}

static int hg_backward(const regopt_pass *p, void *user)
{
    hg_host *h = user;
    size_t i;
    if (p->flags & REGOPT_PASS_NO_PARAM_GRAD)
        return 0;
    for (i = 0; i < HG_N; i++)
        h->gw[i] += h->scale * (float)((int)(i % 5) - 2);
    for (i = 0; i < 3; i++)
        h->gb[i] += h->scale * 0.5f;
    return 0;
}

enum { HG_SGD, HG_NESTEROV, HG_PLAIN, HG_ADAM, HG_AMSGRAD, HG_ADAMW, HG_RADAM, HG_SGD_BREGMAN,
       HG_ADAM_BREGMAN, HG_N_CONFIGS };

typedef struct hg_rig {
    hg_host h;
    float target;
    regopt_model *m;
    regopt_optimizer *o;
    regopt_trainer *t;
    regopt_batch batch;
} hg_rig;

static void hg_open(hg_rig *r, int config)
{
    static const regopt_optimizer_kind kind[HG_N_CONFIGS] = {
        REGOPT_SGD, REGOPT_SGD, REGOPT_SGD, REGOPT_ADAM, REGOPT_ADAM, REGOPT_ADAMW,
        REGOPT_RADAM, REGOPT_SGD, REGOPT_ADAM};
    size_t i;
    memset(r, 0, sizeof *r);
    for (i = 0; i < HG_N; i++)
        r->h.w[i] = 0.1f * (float)((int)(i % 7) - 3);
    r->h.scale = 1.0f;
    r->m = regopt_model_create(NULL, NULL);
    ck_assert_ptr_nonnull(r->m);
    MUST(regopt_model_add_param(r->m, "w", r->h.w, r->h.gw, HG_N, REGOPT_DTYPE_FLOAT32, 0));
    MUST(regopt_model_add_param(r->m, "b", r->h.b, r->h.gb, 3, REGOPT_DTYPE_FLOAT32, 1));
    MUST(regopt_model_set_output_width(r->m, 1));
    MUST(regopt_model_set_callbacks(r->m, hg_forward, hg_backward, &r->h, NULL));
    r->o = regopt_optimizer_create(kind[config], NULL, NULL);
    ck_assert_ptr_nonnull(r->o);
    if (kind[config] == REGOPT_SGD) {
        MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_LR, 0.5));
        if (config != HG_PLAIN)
            MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_MOMENTUM, 0.9));
        if (config == HG_NESTEROV)
            MUST(regopt_optimizer_set_int(r->o, REGOPT_OPT_NESTEROV, 1));
    } else if (config == HG_AMSGRAD) {
        MUST(regopt_optimizer_set_int(r->o, REGOPT_OPT_AMSGRAD, 1));
    }
    r->t = regopt_trainer_create(r->m, r->o, NULL);
    ck_assert_ptr_nonnull(r->t);
    TMUST(r->t, regopt_trainer_set_int(r->t, REGOPT_TRAINER_LOSS, REGOPT_LOSS_MSE));
    if (config == HG_SGD_BREGMAN || config == HG_ADAM_BREGMAN)
        (void)tu_add(r->t, REGOPT_REG_BREGMAN);
    regopt_batch_init(&r->batch);
    r->batch.rows = 1;
    r->batch.targets = &r->target;
}

static void hg_close(hg_rig *r)
{
    regopt_trainer_free(r->t);
    regopt_optimizer_free(r->o);
    regopt_model_free(r->m);
    tu_free_regs();
}

static unsigned char *hg_save(hg_rig *r, size_t *n)
{
    unsigned char *ck;
    TMUST(r->t, regopt_trainer_checkpoint_size(r->t, ALL, n));
    ck = malloc(*n);
    ck_assert_ptr_nonnull(ck);
    TMUST(r->t, regopt_trainer_save_buffer(r->t, ALL, ck, *n, NULL));
    return ck;
}

/* One step of the invariant; returns 1 if it went through. */
/* The message of hg_step's last refused step (the save after it clears the
 * trainer's own: a handle's message is about its last call). */
static char hg_msg[512];

static int hg_step(hg_rig *r, int config)
{
    size_t na, nb;
    unsigned char *a = hg_save(r, &na), *b;
    hg_host keep = r->h;
    regopt_status st = regopt_trainer_step(r->t, &r->batch, 1);
    if (st != REGOPT_OK) {
        ck_assert_msg(st == REGOPT_ERR_NONFINITE_GRADIENT, "%s: %s",
                      regopt_status_string(st), regopt_trainer_message(r->t));
        snprintf(hg_msg, sizeof hg_msg, "%s", regopt_trainer_message(r->t));
        b = hg_save(r, &nb);
        ck_assert_msg(na == nb && memcmp(a, b, na) == 0, "a failed step changed the state");
        ck_assert(memcmp(keep.w, r->h.w, sizeof keep.w) == 0);
        ck_assert(memcmp(keep.b, r->h.b, sizeof keep.b) == 0);
    } else {
        hg_rig fresh;
        unsigned char *c;
        size_t nc;
        b = hg_save(r, &nb);
        TMUST(r->t, regopt_trainer_load_buffer(r->t, ALL, b, nb));
        hg_open(&fresh, config);
        TMUST(fresh.t, regopt_trainer_load_buffer(fresh.t, ALL, b, nb));
        c = hg_save(&fresh, &nc);
        ck_assert(nc == nb && memcmp(b, c, nb) == 0);
        free(c);
        hg_close(&fresh);
    }
    free(a);
    free(b);
    return st == REGOPT_OK;
}

START_TEST(huge_gradients_save_load)
{
    static const float scales[] = {1.0f, 1e10f, 1e19f, 1e21f, 1e25f, 1e30f, 1.0f, 3e38f,
                                   3e38f, 3e38f, 3e38f, 1.0f, 1e38f, 1e38f, 1e38f,
                                   1e38f, -3e38f, -3e38f, -3e38f, 1.0f};
    hg_rig r;
    int i, ok = 0, failed = 0;
    hg_open(&r, _i);
    for (i = 0; i < (int)(sizeof scales / sizeof scales[0]); i++) {
        r.h.scale = scales[i];
        if (hg_step(&r, _i))
            ok++;
        else
            failed++;
    }
    /* the first and the sane steps go through; the huge ones overflow
       something in every configuration */
    ck_assert_msg(ok >= 4 && failed >= 1, "config %d: %d steps, %d refused", _i, ok, failed);
    hg_close(&r);
}
END_TEST

/* Weights that are already NaN: SGD without momentum keeps them (nothing
 * else takes them, and a checkpoint with them loads); with a Bregman
 * teacher, which would take them, the step is refused. */
START_TEST(nonfinite_weight_and_teacher)
{
    hg_rig r;
    hg_open(&r, _i ? HG_SGD_BREGMAN : HG_PLAIN);
    if (_i)
        MUST(regopt_optimizer_set_double(r.o, REGOPT_OPT_MOMENTUM, 0.0));
    ck_assert(hg_step(&r, _i ? HG_SGD_BREGMAN : HG_PLAIN)); /* the teacher holds weights */
    r.h.w[4] = NAN;
    if (!_i) {
        ck_assert(hg_step(&r, HG_PLAIN));
        ck_assert(isnan(r.h.w[4]));
    } else {
        ck_assert(!hg_step(&r, HG_SGD_BREGMAN));
        ck_assert_msg(strstr(hg_msg, "\"w\" holds a non-finite weight at "
                             "element 4, which the Bregman teacher") != NULL, "%s", hg_msg);
        r.h.w[4] = 0.0f;
        ck_assert(hg_step(&r, HG_SGD_BREGMAN));
    }
    hg_close(&r);
}
END_TEST

/* Weights at +-FLT_MAX: the update (SGD, a tiny step) and the Bregman EMA
 * of them stay finite (beta 0.99 and 0.3: fl(beta) above and below 1/2,
 * the two cases of the argument in bregman.c), and what is saved loads. */
START_TEST(teacher_at_flt_max)
{
    hg_rig r;
    size_t i;
    hg_open(&r, HG_SGD_BREGMAN);
    MUST(regopt_optimizer_set_double(r.o, REGOPT_OPT_MOMENTUM, 0.0));
    MUST(regopt_optimizer_set_double(r.o, REGOPT_OPT_LR, 1e-30));
    RMUST(tu_reg(r.t, REGOPT_REG_BREGMAN),
          regopt_regularizer_set_double(tu_reg(r.t, REGOPT_REG_BREGMAN), REGOPT_BREGMAN_BETA,
                                        _i ? 0.3 : 0.99));
    for (i = 0; i < HG_N; i++)
        r.h.w[i] = i % 2 ? FLT_MAX : -FLT_MAX;
    r.h.scale = 0.0f;
    for (i = 0; i < 3; i++)
        ck_assert(hg_step(&r, HG_SGD_BREGMAN));
    ck_assert(r.h.w[0] == -FLT_MAX && r.h.w[1] == FLT_MAX);
    hg_close(&r);
}
END_TEST

Suite *suite_checkpoint(void)
{
    Suite *s = suite_create("checkpoint");
    TCase *tc = tcase_create("resume");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, resume_in_process, 0, C_N);
    tcase_add_loop_test(tc, resume_without_options, 0, C_N);
    tcase_add_loop_test(tc, resume_fresh_process, 0, C_N);
    tcase_add_test(tc, resume_needs_the_state);
    suite_add_tcase(s, tc);
    tc = tcase_create("damage");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, every_truncation);
    tcase_add_test(tc, every_bit_flip);
    tcase_add_test(tc, random_damage);
    tcase_add_test(tc, rebuilt_checkpoint_loads);
    tcase_add_test(tc, unknown_section_skipped);
    tcase_add_test(tc, forged_sections);
    tcase_add_test(tc, mismatches_refused);
    tcase_add_test(tc, flags_not_saved);
    tcase_add_test(tc, forged_values);
    tcase_add_test(tc, options_rollback);
    tcase_add_test(tc, options_group_weight_decay);
    tcase_add_loop_test(tc, load_fresh_into_trained, 0, 2);
    tcase_add_test(tc, amsgrad_mismatch);
    tcase_add_test(tc, save_leaves_messages_alone);
    tcase_add_test(tc, format1_refused);
    tcase_add_test(tc, unknown_feature_refused);
    tcase_add_test(tc, unknown_feature_named_first);
    tcase_add_test(tc, newer_writer_accepted);
    tcase_add_test(tc, other_regularizers_refused);
    tcase_add_test(tc, format2_layout);
    tcase_add_test(tc, resume_bregman_teacher);
    tcase_add_test(tc, term_name_and_state);
    tcase_add_loop_test(tc, huge_gradients_save_load, 0, HG_N_CONFIGS);
    tcase_add_loop_test(tc, nonfinite_weight_and_teacher, 0, 2);
    tcase_add_loop_test(tc, teacher_at_flt_max, 0, 2);
    suite_add_tcase(s, tc);
    tc = tcase_create("api");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, callbacks_and_buffers);
    tcase_add_test(tc, bad_arguments);
    tcase_add_test(tc, file_round_trip_and_atomicity);
    tcase_add_test(tc, allocation_after_load);
    tcase_add_test(tc, file_mode_and_symlink);
    suite_add_tcase(s, tc);
    return s;
}
