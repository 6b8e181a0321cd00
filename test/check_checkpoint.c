/* check_checkpoint.c — save and resume: training k steps, saving, loading
 * into a fresh trainer (and a fresh process) and training N - k more gives
 * the same bits as N uninterrupted steps, for plain AdamW, SGD momentum,
 * SAM, GSAM, R-Drop, SMART with its Bregman teacher and SMART+SAM; every
 * kind of damage is refused with the right status and leaves the trainer
 * untouched (every truncation, every single-bit flip, forged sections);
 * unknown sections are skipped; saving to a path is atomic.
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
enum { C_ADAMW, C_SGD, C_SAM, C_GSAM, C_RDROP, C_SMART, C_SMART_SAM, C_N };
static const char *const config_name[C_N] = {"adamw", "sgd", "sam", "gsam", "rdrop",
                                             "smart+bregman", "smart+sam"};

typedef struct rig {
    ck_host h;
    regopt_model *m;
    regopt_optimizer *o;
    regopt_trainer *t;
} rig;

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
    if (config == C_SAM || config == C_GSAM || config == C_SMART_SAM)
        TMUST(r->t, regopt_trainer_add_regularizer(r->t, REGOPT_REG_SAM));
    if (config == C_RDROP)
        TMUST(r->t, regopt_trainer_add_regularizer(r->t, REGOPT_REG_RDROP));
    if (config == C_SMART || config == C_SMART_SAM)
        TMUST(r->t, regopt_trainer_add_regularizer(r->t, REGOPT_REG_SMART));
    if (config == C_SMART)
        TMUST(r->t, regopt_trainer_add_regularizer(r->t, REGOPT_REG_BREGMAN));
    if (!options)
        return;
    if (config == C_SAM)
        TMUST(r->t, regopt_trainer_set_double(r->t, REGOPT_SAM_RHO, 0.2));
    if (config == C_GSAM) {
        TMUST(r->t, regopt_trainer_set_int(r->t, REGOPT_SAM_GSAM, 1));
        TMUST(r->t, regopt_trainer_set_int(r->t, REGOPT_SAM_RHO_FOLLOWS_LR, 1));
        TMUST(r->t, regopt_trainer_set_double(r->t, REGOPT_SAM_RHO_MIN, 0.01));
        TMUST(r->t, regopt_trainer_set_int(r->t, REGOPT_SAM_SAME_SEED, 0));
    }
    if (config == C_RDROP) {
        TMUST(r->t, regopt_trainer_set_double(r->t, REGOPT_RDROP_ALPHA, 2.0));
        TMUST(r->t, regopt_trainer_set_int(r->t, REGOPT_RDROP_EVERY, 2));
    }
    if (config == C_SMART || config == C_SMART_SAM)
        TMUST(r->t, regopt_trainer_set_double(r->t, REGOPT_SMART_LAMBDA, 3.0));
    if (config == C_SMART) {
        TMUST(r->t, regopt_trainer_set_double(r->t, REGOPT_BREGMAN_MU, 2.0));
        TMUST(r->t, regopt_trainer_set_double(r->t, REGOPT_BREGMAN_BETA, 0.5));
        TMUST(r->t, regopt_trainer_set_double(r->t, REGOPT_BREGMAN_BETA_LATE, 0.8));
        TMUST(r->t, regopt_trainer_set_double(r->t, REGOPT_BREGMAN_SWITCH, 0.3));
    }
}

static void rig_free(rig *r)
{
    regopt_trainer_free(r->t);
    regopt_optimizer_free(r->o);
    regopt_model_free(r->m);
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

static void same_bytes(const unsigned char *a, size_t na, const unsigned char *b, size_t nb,
                       const char *what)
{
    size_t i;
    ck_assert_msg(na == nb, "%s: %zu bytes vs %zu", what, na, nb);
    for (i = 0; i < na; i++)
        ck_assert_msg(a[i] == b[i], "%s: first difference at byte %zu of %zu", what, i, na);
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
 * CRCs and offsets, so only the content is wrong (a forgery, not damage). */
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
    b = join(v.ck, s, n, 1, &size);
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
    b = join(v.ck, s, n + 1, 1, &size);
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
    b = join(v.ck, s, n, 2, &size);
    expect(&v, b, size, REGOPT_ERR_UNSUPPORTED, "newer", "version 2");
    free(b);

    /* an option out of range: optimizer.lr = -1 */
    n = split(v.ck, s);
    forge_option(s, n, REGOPT_OPT_LR, -1, -1.0);
    b = join(v.ck, s, n, 1, &size);
    expect(&v, b, size, REGOPT_ERR_OUT_OF_RANGE, "optimizer.lr", "lr -1");
    free(b);

    /* a section missing */
    n = split(v.ck, s);
    i = find_section(s, n, "moments");
    free(s[i].data);
    memmove(&s[i], &s[i + 1], (n - (size_t)i - 1) * sizeof s[0]);
    b = join(v.ck, s, n - 1, 1, &size);
    expect(&v, b, size, REGOPT_ERR_CORRUPT, "moments", "no moments");
    free(b);

    /* the teacher section of the wrong size */
    n = split(v.ck, s);
    i = find_section(s, n, "teacher");
    s[i].size -= 4;
    b = join(v.ck, s, n, 1, &size);
    expect(&v, b, size, REGOPT_ERR_CORRUPT, "teacher", "short teacher");
    free(b);

    /* a trainer section too short */
    n = split(v.ck, s);
    i = find_section(s, n, "trainer");
    s[i].size = 40;
    b = join(v.ck, s, n, 1, &size);
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
    b = join(v.ck, s, n, 1, &size);
    expect(&v, b, size, REGOPT_ERR_CORRUPT, "step count", "step 2^53+1");
    free(b);

    n = split(v.ck, s);
    i = find_section(s, n, "trainer");
    wr32(s[i].data + 24, 2); /* momentum primed = 2 */
    b = join(v.ck, s, n, 1, &size);
    expect(&v, b, size, REGOPT_ERR_CORRUPT, "flag", "momentum flag 2");
    free(b);

    n = split(v.ck, s);
    forge_float(s, n, "moments", 3, NAN); /* a first moment */
    b = join(v.ck, s, n, 1, &size);
    expect(&v, b, size, REGOPT_ERR_CORRUPT, "non-finite", "NaN moment");
    free(b);

    n = split(v.ck, s);
    forge_float(s, n, "moments", CD * CK + CK + 1, -1e-3f); /* v of the second block */
    b = join(v.ck, s, n, 1, &size);
    expect(&v, b, size, REGOPT_ERR_CORRUPT, "negative second moment", "negative v");
    free(b);

    n = split(v.ck, s);
    forge_float(s, n, "moments", 1, -1e-3f); /* a negative first moment is fine */
    b = join(v.ck, s, n, 1, &size);
    ck_assert_int_eq(regopt_trainer_load_buffer(v.r.t, ALL, b, size), REGOPT_OK);
    free(b);
    TMUST(v.r.t, regopt_trainer_load_buffer(v.r.t, ALL, v.before, v.nbefore));

    n = split(v.ck, s);
    forge_float(s, n, "teacher", 0, INFINITY);
    b = join(v.ck, s, n, 1, &size);
    expect(&v, b, size, REGOPT_ERR_CORRUPT, "teacher", "inf teacher");
    free(b);

    /* the model section claims "b" is frozen: another layout */
    n = split(v.ck, s);
    i = find_section(s, n, "model");
    wr32(s[i].data + 8 + 24 + 1 + 16, 0); /* tensor 1 ("b"), after "W" (name 1 byte) */
    b = join(v.ck, s, n, 1, &size);
    expect(&v, b, size, REGOPT_ERR_MISMATCH, "frozen", "b frozen");
    free(b);

    /* an option key from a newer library is skipped */
    n = split(v.ck, s);
    i = find_section(s, n, "options");
    wr32(s[i].data + 8, 9999); /* the first entry's key */
    b = join(v.ck, s, n, 1, &size);
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
    b = join(v.ck, s, n, 1, &size);
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
    TMUST(r.t, regopt_trainer_add_regularizer(r.t, REGOPT_REG_SMART));
    TMUST(r.t, regopt_trainer_add_regularizer(r.t, REGOPT_REG_BREGMAN));
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

static void load_into(int config, int tweak, const unsigned char *ck, size_t n,
                      regopt_status want, const char *needle)
{
    rig r;
    size_t nb, na;
    unsigned char *before, *after;
    rig_make(&r, config, 0, 1);
    if (tweak) { /* a differently named bias (1), or the bias in group 0 (2) */
        regopt_trainer_free(r.t);
        regopt_model_free(r.m);
        r.m = ck_model(&r.h, tweak == 1 ? "bias" : "b", tweak == 1 ? 1 : 0, NULL);
        r.t = regopt_trainer_create(r.m, r.o, NULL);
        TMUST(r.t, regopt_trainer_add_regularizer(r.t, REGOPT_REG_SMART));
        TMUST(r.t, regopt_trainer_add_regularizer(r.t, REGOPT_REG_BREGMAN));
    }
    rig_step(&r, 5);
    before = rig_save(&r, ALL, &nb);
    {
        regopt_status st = regopt_trainer_load_buffer(r.t, ALL, ck, n);
        ck_assert_msg(st == want, "got %s (%s)", regopt_status_string(st),
                      regopt_trainer_message(r.t));
        ck_assert_msg(strstr(regopt_trainer_message(r.t), needle) != NULL, "message \"%s\"",
                      regopt_trainer_message(r.t));
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
    load_into(C_SGD, 0, v.ck, v.n, REGOPT_ERR_MISMATCH, "optimizer adamw");
    load_into(C_SAM, 0, v.ck, v.n, REGOPT_ERR_MISMATCH, "smart+bregman");
    load_into(C_ADAMW, 0, v.ck, v.n, REGOPT_ERR_MISMATCH, "regularizers");
    load_into(C_SMART, 1, v.ck, v.n, REGOPT_ERR_MISMATCH, "\"bias\"");
    load_into(C_SMART, 2, v.ck, v.n, REGOPT_ERR_MISMATCH, "group");
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
    ck_host h;
    long before;
    regopt_batch b;
    victim_make(&v, ALL);
    memset(&h, 0, sizeof h);
    m = ck_model(&h, "b", 1, &a);
    o = regopt_optimizer_create(REGOPT_ADAMW, &a, NULL);
    t = regopt_trainer_create(m, o, NULL);
    TMUST(t, regopt_trainer_add_regularizer(t, REGOPT_REG_SMART));
    TMUST(t, regopt_trainer_add_regularizer(t, REGOPT_REG_BREGMAN));
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
    regopt_optimizer_free(o);
    regopt_model_free(m);
    ck_assert_int_eq(c.allocs, c.frees);
    victim_free(&v);
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
