/* check_precision.c — mixed precision: half-precision tensors with the fp32
 * master (the conversions are check_precision_convert.c's case), loss
 * scaling (skip, back-off, growth, SAM's two passes, checkpoints, threads)
 * and every bad input. Expectations are computed here, independently of
 * src/core/half.c. */
#include "precision_rig.h"
#include "test_util.h"

#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

/* ---- a host in half precision --------------------------------------------- */

#define PD 4
#define PK 3
#define PR 8
#define PMAX (1000 * 300)

typedef struct ph {
    regopt_dtype dt;
    size_t d, k;            /* inputs, classes */
    void *w, *gw, *b, *gb;  /* host buffers in dt */
    float x[PR * 1000];
    int32_t y[PR];
    int inject_at;          /* backward call (counted from 0) that writes inf; -1 none */
    int backwards;
    double seen_scale;
    int ignore_dout;        /* accumulation test: add fixed values instead */
    float fixed[64];
} ph;

static float ld(const ph *h, const void *buf, size_t i)
{
    if (h->dt == REGOPT_DTYPE_FLOAT32)
        return ((const float *)buf)[i];
    return from16(((const uint16_t *)buf)[i], h->dt);
}

/* add v into element i of a host gradient buffer, in the buffer's precision */
static void add(const ph *h, void *buf, size_t i, float v)
{
    if (h->dt == REGOPT_DTYPE_FLOAT32)
        ((float *)buf)[i] += v;
    else
        ((uint16_t *)buf)[i] = to16(ld(h, buf, i) + v, h->dt);
}

static int ph_forward(const regopt_pass *p, void *user)
{
    ph *h = user;
    const float *x = p->batch;
    size_t r, j, c;
    for (r = 0; r < p->rows; r++)
        for (c = 0; c < h->k; c++) {
            float z = ld(h, h->b, c);
            for (j = 0; j < h->d; j++)
                z += x[(p->row_offset + r) * h->d + j] * ld(h, h->w, j * h->k + c);
            p->outputs[r * h->k + c] = z;
        }
    return 0;
}

static int ph_backward(const regopt_pass *p, void *user)
{
    ph *h = user;
    const float *x = p->batch;
    size_t r, j, c;
    int call = h->backwards++;
    h->seen_scale = p->loss_scale;
    if (h->ignore_dout) {
        add(h, h->gw, 0, h->fixed[p->micro_batch] * (float)p->loss_scale);
        return 0;
    }
    for (c = 0; c < h->k; c++) {
        float sb = 0;
        for (r = 0; r < p->rows; r++)
            sb += p->d_outputs[r * h->k + c];
        add(h, h->gb, c, sb);
        for (j = 0; j < h->d; j++) {
            float s = 0;
            for (r = 0; r < p->rows; r++)
                s += x[(p->row_offset + r) * h->d + j] * p->d_outputs[r * h->k + c];
            add(h, h->gw, j * h->k + c, s);
        }
    }
    if (call == h->inject_at)
        add(h, h->gw, 1, INFINITY);
    return 0;
}

typedef struct prun {
    ph h;
    regopt_model *m;
    regopt_optimizer *o;
    regopt_trainer *t;
    regopt_batch batch;
} prun;

static void prun_open(prun *r, regopt_dtype dt, size_t d, size_t k, regopt_optimizer_kind kind)
{
    size_t es = dt == REGOPT_DTYPE_FLOAT32 ? 4 : 2, i;
    regopt_status st;
    memset(r, 0, sizeof *r);
    r->h.dt = dt;
    r->h.d = d;
    r->h.k = k;
    r->h.inject_at = -1;
    r->h.w = calloc(d * k, es);
    r->h.gw = calloc(d * k, es);
    r->h.b = calloc(k, es);
    r->h.gb = calloc(k, es);
    for (i = 0; i < d * k; i++) { /* small exact values: multiples of 1/8 */
        float v = (float)((int)(i * 7 % 11) - 5) / 8.0f;
        if (dt == REGOPT_DTYPE_FLOAT32)
            ((float *)r->h.w)[i] = v;
        else
            ((uint16_t *)r->h.w)[i] = to16(v, dt);
    }
    for (i = 0; i < PR * d; i++)
        r->h.x[i] = (float)((int)(i * 5 % 7) - 3) / 4.0f;
    for (i = 0; i < PR; i++)
        r->h.y[i] = (int32_t)(i % k);
    r->m = regopt_model_create(NULL, &st);
    ck_assert_ptr_nonnull(r->m);
    ck_assert_int_eq(regopt_model_add_param(r->m, "w", r->h.w, r->h.gw, d * k, dt, 0), REGOPT_OK);
    ck_assert_int_eq(regopt_model_add_param(r->m, "b", r->h.b, r->h.gb, k, dt, 1), REGOPT_OK);
    ck_assert_int_eq(regopt_model_set_output_width(r->m, k), REGOPT_OK);
    ck_assert_int_eq(regopt_model_set_callbacks(r->m, ph_forward, ph_backward, &r->h, NULL),
                     REGOPT_OK);
    r->o = regopt_optimizer_create(kind, NULL, &st);
    ck_assert_ptr_nonnull(r->o);
    ck_assert_int_eq(regopt_optimizer_set_double(r->o, REGOPT_OPT_LR, 0.125), REGOPT_OK);
    if (kind == REGOPT_SGD)
        ck_assert_int_eq(regopt_optimizer_set_double(r->o, REGOPT_OPT_MOMENTUM, 0.5), REGOPT_OK);
    r->t = regopt_trainer_create(r->m, r->o, &st);
    ck_assert_ptr_nonnull(r->t);
    regopt_batch_init(&r->batch);
    r->batch.data = r->h.x;
    r->batch.rows = PR;
    r->batch.labels = r->h.y;
}

static void prun_close(prun *r)
{
    tu_free_regs();
    ck_assert_int_eq(regopt_trainer_free(r->t), REGOPT_OK);
    ck_assert_int_eq(regopt_optimizer_free(r->o), REGOPT_OK);
    ck_assert_int_eq(regopt_model_free(r->m), REGOPT_OK);
    free(r->h.w);
    free(r->h.gw);
    free(r->h.b);
    free(r->h.gb);
}

static void pstep(prun *r)
{
    ck_assert_msg(regopt_trainer_step(r->t, &r->batch, 1) == REGOPT_OK, "%s",
                  regopt_trainer_message(r->t));
}

static size_t wbytes(const prun *r)
{
    return r->h.d * r->h.k * (r->h.dt == REGOPT_DTYPE_FLOAT32 ? 4 : 2);
}

/* The checkpoint, malloc'ed. */
static unsigned char *ckpt(const prun *r, size_t *n)
{
    unsigned char *buf;
    ck_assert_int_eq(regopt_trainer_checkpoint_size(r->t, 3, n), REGOPT_OK);
    buf = malloc(*n);
    ck_assert_int_eq(regopt_trainer_save_buffer(r->t, 3, buf, *n, NULL), REGOPT_OK);
    return buf;
}

static uint64_t rd64(const unsigned char *p)
{
    uint64_t v = 0;
    int i;
    for (i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* Two checkpoints hold the same bytes in every section but the first
 * `skip` bytes of "precision" (the scale, its counter, the skip count);
 * returns that section's offset in a (0: none). */
static size_t same_but_scale(const unsigned char *a, size_t na, const unsigned char *b,
                             size_t nb)
{
    uint32_t n = (uint32_t)rd64(a + 12) & 0xffffffffu, i;
    size_t prec = 0;
    ck_assert_uint_eq(na, nb);
    ck_assert_uint_eq(rd64(b + 12) & 0xffffffffu, n);
    for (i = 0; i < n; i++) {
        const unsigned char *e = a + 32 + 48 * i, *f = b + 32 + 48 * i;
        uint64_t off = rd64(e + 24), size = rd64(e + 32), skip = 0;
        ck_assert(memcmp(e, f, 24) == 0);
        ck_assert_uint_eq(rd64(f + 24), off);
        ck_assert_uint_eq(rd64(f + 32), size);
        if (strcmp((const char *)e, "precision") == 0) {
            skip = 24; /* scale, counter, skipped */
            prec = off;
        }
        ck_assert_msg(memcmp(a + off + skip, b + off + skip, size - skip) == 0,
                      "section \"%s\" changed", (const char *)e);
    }
    return prec;
}

/* ---- loss scaling ---------------------------------------------------------- */

START_TEST(defaults_follow_gradscaler)
{
    prun r;
    double v;
    prun_open(&r, REGOPT_DTYPE_FLOAT16, PD, PK, REGOPT_SGD);
    ck_assert_double_eq(stat(r.t, REGOPT_STAT_LOSS_SCALE), 65536.0);
    MUST(regopt_key_info(REGOPT_TRAINER_SCALE_GROWTH, NULL, NULL, NULL, NULL, &v, NULL));
    ck_assert_double_eq(v, 2.0);
    MUST(regopt_key_info(REGOPT_TRAINER_SCALE_BACKOFF, NULL, NULL, NULL, NULL, &v, NULL));
    ck_assert_double_eq(v, 0.5);
    MUST(regopt_key_info(REGOPT_TRAINER_SCALE_INTERVAL, NULL, NULL, NULL, NULL, &v, NULL));
    ck_assert_double_eq(v, 2000.0);
    pstep(&r);
    ck_assert_double_eq(r.h.seen_scale, 65536.0);
    ck_assert_int_eq(stat_int(r.t, REGOPT_STAT_SCALE_COUNTER), 1);
    ck_assert_int_eq(stat_int(r.t, REGOPT_STAT_SKIPPED), 0);
    prun_close(&r);
    /* bf16 alone: no scaling */
    prun_open(&r, REGOPT_DTYPE_BFLOAT16, PD, PK, REGOPT_SGD);
    ck_assert_double_eq(stat(r.t, REGOPT_STAT_LOSS_SCALE), 1.0);
    pstep(&r);
    ck_assert_double_eq(r.h.seen_scale, 1.0);
    prun_close(&r);
}
END_TEST

/* An inf at step k: the call succeeds, the scale halves, and every byte of
 * state is as before (checkpoint with tensors and options, host buffers). */
START_TEST(injected_inf_skips_the_step)
{
    prun r;
    unsigned char *a, *b, w0[PD * PK * 2];
    size_t na, nb, off;
    int step;
    prun_open(&r, REGOPT_DTYPE_FLOAT16, PD, PK, REGOPT_SGD);
    for (step = 0; step < 3; step++)
        pstep(&r);
    a = ckpt(&r, &na);
    memcpy(w0, r.h.w, wbytes(&r));
    r.h.inject_at = r.h.backwards;
    pstep(&r);
    ck_assert_int_eq(stat_int(r.t, REGOPT_STAT_SKIPPED), 1);
    ck_assert_int_eq(stat_int(r.t, REGOPT_STAT_SKIPPED_STEPS), 1);
    ck_assert_double_eq(stat(r.t, REGOPT_STAT_LOSS_SCALE), 32768.0);
    ck_assert_int_eq(stat_int(r.t, REGOPT_STAT_SCALE_COUNTER), 0);
    ck_assert_int_eq(stat_int(r.t, REGOPT_STAT_STEP), 3);
    ck_assert(memcmp(w0, r.h.w, wbytes(&r)) == 0);
    b = ckpt(&r, &nb);
    off = same_but_scale(a, na, b, nb);
    ck_assert_uint_ne(off, 0);
    {
        double sa, sb;
        uint64_t ba = rd64(a + off), bb = rd64(b + off);
        memcpy(&sa, &ba, 8);
        memcpy(&sb, &bb, 8);
        ck_assert_double_eq(sa, 65536.0);
        ck_assert_double_eq(sb, 32768.0);
        ck_assert_uint_eq(rd64(a + off + 8), 3);
        ck_assert_uint_eq(rd64(b + off + 8), 0);
        ck_assert_uint_eq(rd64(b + off + 16), 1);
    }
    /* the next step is made at the new scale */
    pstep(&r);
    ck_assert_int_eq(stat_int(r.t, REGOPT_STAT_SKIPPED), 0);
    ck_assert_int_eq(stat_int(r.t, REGOPT_STAT_STEP), 4);
    ck_assert_double_eq(r.h.seen_scale, 32768.0);
    ck_assert(memcmp(w0, r.h.w, wbytes(&r)) != 0);
    free(a);
    free(b);
    prun_close(&r);
}
END_TEST

START_TEST(scale_grows_after_the_interval)
{
    prun r;
    int i;
    prun_open(&r, REGOPT_DTYPE_FLOAT16, PD, PK, REGOPT_ADAM);
    MUST(regopt_trainer_set_int(r.t, REGOPT_TRAINER_SCALE_INTERVAL, 3));
    MUST(regopt_trainer_set_double(r.t, REGOPT_TRAINER_LOSS_SCALE, 8.0));
    for (i = 0; i < 2; i++)
        pstep(&r);
    ck_assert_double_eq(stat(r.t, REGOPT_STAT_LOSS_SCALE), 8.0);
    ck_assert_int_eq(stat_int(r.t, REGOPT_STAT_SCALE_COUNTER), 2);
    pstep(&r);
    ck_assert_double_eq(stat(r.t, REGOPT_STAT_LOSS_SCALE), 16.0);
    ck_assert_int_eq(stat_int(r.t, REGOPT_STAT_SCALE_COUNTER), 0);
    /* an overflow resets the counter */
    pstep(&r);
    r.h.inject_at = r.h.backwards;
    pstep(&r);
    ck_assert_double_eq(stat(r.t, REGOPT_STAT_LOSS_SCALE), 8.0);
    ck_assert_int_eq(stat_int(r.t, REGOPT_STAT_SCALE_COUNTER), 0);
    /* never past the float32 maximum; growth 3 from 2^127 would pass it */
    MUST(regopt_trainer_set_double(r.t, REGOPT_TRAINER_SCALE_GROWTH, 3.0));
    MUST(regopt_trainer_set_int(r.t, REGOPT_TRAINER_SCALE_INTERVAL, 1));
    MUST(regopt_trainer_set_double(r.t, REGOPT_TRAINER_LOSS_SCALE, ldexp(1.0, 127)));
    MUST(regopt_trainer_set_int(r.t, REGOPT_TRAINER_LOSS_SCALING, REGOPT_SCALING_FIXED));
    r.h.inject_at = -1;
    pstep(&r); /* fixed: no growth */
    ck_assert_double_eq(stat(r.t, REGOPT_STAT_LOSS_SCALE), ldexp(1.0, 127));
    prun_close(&r);
}
END_TEST

/* SAM: an overflow in the first or in the perturbed pass skips the whole
 * step; the master is the restore point. */
START_TEST(sam_overflow_in_each_pass)
{
    int pass;
    for (pass = 0; pass < 2; pass++) {
        prun r;
        unsigned char *a, *b;
        size_t na, nb;
        double fwd;
        prun_open(&r, REGOPT_DTYPE_BFLOAT16, PD, PK, REGOPT_SGD);
        MUST(regopt_trainer_set_int(r.t, REGOPT_TRAINER_LOSS_SCALING, REGOPT_SCALING_DYNAMIC));
        tu_add(r.t, REGOPT_REG_SAM);
        pstep(&r);
        ck_assert_double_eq(stat(r.t, REGOPT_STAT_FORWARD_CALLS), 2.0);
        a = ckpt(&r, &na);
        r.h.inject_at = r.h.backwards + pass;
        pstep(&r);
        ck_assert_int_eq(stat_int(r.t, REGOPT_STAT_SKIPPED), 1);
        ck_assert_double_eq(stat(r.t, REGOPT_STAT_LOSS_SCALE), 32768.0);
        b = ckpt(&r, &nb);
        same_but_scale(a, na, b, nb);
        /* the host sees round(w) again, not the perturbed weights */
        {
            size_t i;
            float *ref = malloc(PD * PK * sizeof(float));
            regopt_trainer *t = r.t;
            (void)t;
            for (i = 0; i < PD * PK; i++)
                ref[i] = ld(&r.h, r.h.w, i);
            pstep(&r); /* fine again: committed */
            ck_assert_int_eq(stat_int(r.t, REGOPT_STAT_SKIPPED), 0);
            fwd = stat(r.t, REGOPT_STAT_FORWARD_CALLS);
            ck_assert_double_eq(fwd, 2.0);
            free(ref);
        }
        free(a);
        free(b);
        prun_close(&r);
    }
}
END_TEST

/* An all-reduce that never returns (throws, longjmps) after SAM's perturbed
 * pass -- while the masters still hold w + eps, the update's pass to put w
 * back -- and regopt_trainer_recover: the masters are w again, and so must
 * the host's half buffers be, round(w) as after the last step, not the
 * round(w + eps) the perturbed forward was given. */
static jmp_buf *ar_jump;

static int ar_jumps(float *buf, size_t n, void *user)
{
    (void)buf;
    (void)n;
    (void)user;
    longjmp(*ar_jump, 1);
}

START_TEST(recover_republishes_half_buffers)
{
    prun r;
    unsigned char *a, *b, w0[PD * PK * 2], b0[PK * 2];
    size_t na, nb;
    jmp_buf jb;
    prun_open(&r, REGOPT_DTYPE_BFLOAT16, PD, PK, REGOPT_SGD);
    tu_add(r.t, REGOPT_REG_SAM);
    pstep(&r);
    a = ckpt(&r, &na);
    memcpy(w0, r.h.w, sizeof w0);
    memcpy(b0, r.h.b, sizeof b0);
    MUST(regopt_trainer_set_allreduce(r.t, ar_jumps, NULL, NULL));
    ar_jump = &jb;
    if (setjmp(jb) == 0) {
        regopt_status st = regopt_trainer_step(r.t, &r.batch, 1);
        ck_abort_msg("the all-reduce did not run (%s)", regopt_status_string(st));
    }
    ck_assert_int_ne(memcmp(w0, r.h.w, sizeof w0), 0); /* round(w + eps): the test bites */
    TMUST(r.t, regopt_trainer_recover(r.t));
    b = ckpt(&r, &nb);
    ck_assert_uint_eq(na, nb);
    ck_assert_msg(memcmp(a, b, na) == 0, "recover left other masters or state");
    ck_assert_msg(memcmp(w0, r.h.w, sizeof w0) == 0 && memcmp(b0, r.h.b, sizeof b0) == 0,
                  "after recover the host's half buffers are not round(w)");
    MUST(regopt_trainer_set_allreduce(r.t, NULL, NULL, NULL));
    pstep(&r);
    free(a);
    free(b);
    prun_close(&r);
}
END_TEST

/* A checkpoint carries the scale, the counter and the masters: a resumed
 * trainer continues the schedule bit for bit. */
START_TEST(resume_continues_the_scale_schedule)
{
    prun a, b;
    unsigned char *buf;
    size_t n;
    int i;
    prun_open(&a, REGOPT_DTYPE_FLOAT16, PD, PK, REGOPT_ADAMW);
    prun_open(&b, REGOPT_DTYPE_FLOAT16, PD, PK, REGOPT_ADAMW);
    MUST(regopt_trainer_set_int(a.t, REGOPT_TRAINER_SCALE_INTERVAL, 3));
    pstep(&a);
    a.h.inject_at = a.h.backwards;
    pstep(&a);
    pstep(&a);
    pstep(&a);
    buf = ckpt(&a, &n); /* scale 2^15, counter 2, one skipped */
    ck_assert_int_eq(stat_int(a.t, REGOPT_STAT_SCALE_COUNTER), 2);
    ck_assert_int_eq(regopt_trainer_load_buffer(b.t, 3, buf, n), REGOPT_OK);
    ck_assert_double_eq(stat(b.t, REGOPT_STAT_LOSS_SCALE), 32768.0);
    ck_assert_int_eq(stat_int(b.t, REGOPT_STAT_SCALE_COUNTER), 2);
    ck_assert_int_eq(stat_int(b.t, REGOPT_STAT_SKIPPED_STEPS), 1);
    ck_assert(memcmp(a.h.w, b.h.w, wbytes(&a)) == 0); /* the host's buffers, published */
    for (i = 0; i < 3; i++) {
        pstep(&a);
        pstep(&b);
    }
    ck_assert_double_eq(stat(b.t, REGOPT_STAT_LOSS_SCALE), 65536.0); /* grew at 3 */
    ck_assert_int_eq(stat_int(b.t, REGOPT_STAT_SCALE_COUNTER), 2);
    ck_assert(memcmp(a.h.w, b.h.w, wbytes(&a)) == 0);
    {
        unsigned char *x, *y;
        size_t nx, ny;
        x = ckpt(&a, &nx);
        y = ckpt(&b, &ny);
        ck_assert_uint_eq(nx, ny);
        ck_assert(memcmp(x, y, nx) == 0);
        free(x);
        free(y);
    }
    prun_close(&b);
    /* a trainer without mixed precision refuses it by name */
    prun_open(&b, REGOPT_DTYPE_FLOAT32, PD, PK, REGOPT_ADAMW);
    ck_assert_int_eq(regopt_trainer_load_buffer(b.t, 3, buf, n), REGOPT_ERR_MISMATCH);
    ck_assert_msg(strstr(regopt_trainer_message(b.t), "mixed precision") != NULL, "%s",
                  regopt_trainer_message(b.t));
    free(buf);
    prun_close(&a);
    prun_close(&b);
}
END_TEST

/* float32 buffers with a power-of-two loss scale: the same bits as
 * without scaling (scaling by 2^k is exact). */
START_TEST(float32_buffers_with_scaling_train_identically)
{
    prun a, b;
    int i;
    prun_open(&a, REGOPT_DTYPE_FLOAT32, PD, PK, REGOPT_ADAM);
    prun_open(&b, REGOPT_DTYPE_FLOAT32, PD, PK, REGOPT_ADAM);
    MUST(regopt_trainer_set_int(b.t, REGOPT_TRAINER_LOSS_SCALING, REGOPT_SCALING_DYNAMIC));
    MUST(regopt_trainer_set_int(b.t, REGOPT_TRAINER_SCALE_INTERVAL, 2));
    /* clipping sees the unscaled gradient */
    MUST(regopt_optimizer_set_double(a.o, REGOPT_OPT_CLIP_NORM, 0.05));
    MUST(regopt_optimizer_set_double(b.o, REGOPT_OPT_CLIP_NORM, 0.05));
    tu_add(a.t, REGOPT_REG_SAM);
    tu_add(b.t, REGOPT_REG_SAM);
    for (i = 0; i < 6; i++) {
        pstep(&a);
        pstep(&b);
        ck_assert(memcmp(a.h.w, b.h.w, wbytes(&a)) == 0);
        ck_assert_double_eq(stat(a.t, REGOPT_STAT_LOSS), stat(b.t, REGOPT_STAT_LOSS));
        ck_assert_double_eq(stat(a.t, REGOPT_STAT_GRAD_NORM), stat(b.t, REGOPT_STAT_GRAD_NORM));
        ck_assert(stat(b.t, REGOPT_STAT_CLIP_SCALE) < 1.0);
    }
    ck_assert_double_eq(b.h.seen_scale, 65536.0 * 4);
    ck_assert_double_eq(stat(b.t, REGOPT_STAT_LOSS_SCALE), 65536.0 * 8);
    prun_close(&a);
    prun_close(&b);
}
END_TEST

/* A model whose values stay exactly representable in fp16 (dyadic inputs,
 * lr 1/4, MSE on a power-of-two batch): fp32 and fp16 with dynamic scaling
 * train to the same bits. */
START_TEST(exactly_representable_model_trains_identically)
{
    prun a, b;
    float t[PR * 1];
    int i;
    size_t j;
    prun_open(&a, REGOPT_DTYPE_FLOAT32, 2, 1, REGOPT_SGD);
    prun_open(&b, REGOPT_DTYPE_FLOAT16, 2, 1, REGOPT_SGD);
    /* rows alternate x = (1, 0), t = 1 and x = (0, 1), t = -1: with lr 1/4
       the weights need 3, 6, 8, 11 significant bits after steps 1..4 */
    for (j = 0; j < PR; j++) {
        t[j] = j % 2 ? -1.0f : 1.0f;
        a.h.x[2 * j] = b.h.x[2 * j] = j % 2 ? 0.0f : 1.0f;
        a.h.x[2 * j + 1] = b.h.x[2 * j + 1] = j % 2 ? 1.0f : 0.0f;
    }
    MUST(regopt_optimizer_set_double(a.o, REGOPT_OPT_MOMENTUM, 0.0));
    MUST(regopt_optimizer_set_double(b.o, REGOPT_OPT_MOMENTUM, 0.0));
    MUST(regopt_optimizer_set_double(a.o, REGOPT_OPT_LR, 0.25));
    MUST(regopt_optimizer_set_double(b.o, REGOPT_OPT_LR, 0.25));
    MUST(regopt_trainer_set_int(a.t, REGOPT_TRAINER_LOSS, REGOPT_LOSS_MSE));
    MUST(regopt_trainer_set_int(b.t, REGOPT_TRAINER_LOSS, REGOPT_LOSS_MSE));
    a.batch.targets = b.batch.targets = t;
    /* 2^16 overflows fp16 here (|d_outputs| ~ 1): start lower */
    MUST(regopt_trainer_set_double(b.t, REGOPT_TRAINER_LOSS_SCALE, 1024.0));
    a.batch.labels = b.batch.labels = NULL;
    for (i = 0; i < 4; i++) {
        pstep(&a);
        pstep(&b);
        for (j = 0; j < 2; j++) {
            float wa = ((float *)a.h.w)[j];
            ck_assert_msg(from16(to16(wa, REGOPT_DTYPE_FLOAT16), REGOPT_DTYPE_FLOAT16) == wa,
                          "precondition: w[%zu] = %a is not an fp16 value", j, (double)wa);
            ck_assert_msg(fbits(wa) == fbits(ld(&b.h, b.h.w, j)), "step %d: w[%zu] %a vs %a",
                          i, j, (double)wa, (double)ld(&b.h, b.h.w, j));
        }
        ck_assert_double_eq(stat(a.t, REGOPT_STAT_LOSS), stat(b.t, REGOPT_STAT_LOSS));
    }
    ck_assert_double_eq(b.h.seen_scale, 1024.0);
    ck_assert_int_eq(stat_int(b.t, REGOPT_STAT_SKIPPED_STEPS), 0);
    prun_close(&a);
    prun_close(&b);
}
END_TEST

/* Half-precision gradients over micro-batches: the sum is fp32. 1024 +
 * 16 x 0.25 in fp16 would stay 1024 (spacing 1 there). */
START_TEST(accumulation_keeps_fp32_precision)
{
    prun r;
    regopt_batch b[17];
    int i;
    prun_open(&r, REGOPT_DTYPE_FLOAT16, 1, 1, REGOPT_SGD);
    MUST(regopt_optimizer_set_double(r.o, REGOPT_OPT_MOMENTUM, 0.0));
    MUST(regopt_optimizer_set_double(r.o, REGOPT_OPT_LR, 1.0));
    MUST(regopt_trainer_set_int(r.t, REGOPT_TRAINER_LOSS_SCALING, REGOPT_SCALING_FIXED));
    MUST(regopt_trainer_set_double(r.t, REGOPT_TRAINER_LOSS_SCALE, 4.0));
    r.h.ignore_dout = 1;
    for (i = 0; i < 17; i++) {
        b[i] = r.batch;
        r.h.fixed[i] = i == 0 ? 1024.0f : 0.25f;
    }
    ck_assert_int_eq(regopt_trainer_step(r.t, b, 17), REGOPT_OK);
    /* w = -0.625 (the master, from registration) - 1 x 1028 = -1028.625,
       fp16 -1029; an fp16 sum (1024) would give -1024.625, fp16 -1025 */
    ck_assert_float_eq(ld(&r.h, r.h.w, 0), -1029.0f);
    ck_assert_uint_eq(((uint16_t *)r.h.gw)[0], 0); /* flushed */
    prun_close(&r);
}
END_TEST

/* The same bits on 1 and 2 threads (a model above the threading bound). */
START_TEST(threads_give_the_same_bits)
{
    prun a, b;
    int i;
    prun_open(&a, REGOPT_DTYPE_BFLOAT16, 1000, 300, REGOPT_ADAMW);
    prun_open(&b, REGOPT_DTYPE_BFLOAT16, 1000, 300, REGOPT_ADAMW);
    a.batch.rows = b.batch.rows = 2;
    MUST(regopt_trainer_set_int(b.t, REGOPT_TRAINER_THREADS, 2));
    MUST(regopt_trainer_set_int(a.t, REGOPT_TRAINER_LOSS_SCALING, REGOPT_SCALING_DYNAMIC));
    MUST(regopt_trainer_set_int(b.t, REGOPT_TRAINER_LOSS_SCALING, REGOPT_SCALING_DYNAMIC));
    for (i = 0; i < 2; i++) {
        pstep(&a);
        pstep(&b);
    }
    ck_assert(memcmp(a.h.w, b.h.w, wbytes(&a)) == 0);
    a.h.inject_at = a.h.backwards;
    b.h.inject_at = b.h.backwards;
    pstep(&a);
    pstep(&b);
    ck_assert_int_eq(stat_int(b.t, REGOPT_STAT_SKIPPED), 1);
    ck_assert(memcmp(a.h.w, b.h.w, wbytes(&a)) == 0);
    prun_close(&a);
    prun_close(&b);
}
END_TEST

/* Without scaling an overflow stays an error, with the usual rollback. */
START_TEST(without_scaling_an_overflow_is_an_error)
{
    prun r;
    unsigned char w0[PD * PK * 2];
    prun_open(&r, REGOPT_DTYPE_BFLOAT16, PD, PK, REGOPT_SGD);
    pstep(&r);
    memcpy(w0, r.h.w, wbytes(&r));
    r.h.inject_at = r.h.backwards;
    ck_assert_int_eq(regopt_trainer_step(r.t, &r.batch, 1), REGOPT_ERR_NONFINITE_GRADIENT);
    ck_assert(memcmp(w0, r.h.w, wbytes(&r)) == 0);
    ck_assert_int_eq(stat_int(r.t, REGOPT_STAT_STEP), 1);
    ck_assert_int_eq(stat_int(r.t, REGOPT_STAT_SKIPPED_STEPS), 0);
    prun_close(&r);
}
END_TEST

/* trainer.check_host with 16-bit tensors (the host writes its own
 * gradient buffer), and regopt_trainer_flatness leaves round(w) in the
 * host's buffers. */
START_TEST(host_checks_and_flatness)
{
    prun r;
    unsigned char w0[PD * PK * 2];
    regopt_flatness_request rq;
    regopt_flatness res;
    prun_open(&r, REGOPT_DTYPE_FLOAT16, PD, PK, REGOPT_SGD);
    MUST(regopt_trainer_set_int(r.t, REGOPT_TRAINER_CHECK_HOST, 1));
    MUST(regopt_trainer_set_double(r.t, REGOPT_TRAINER_LOSS_SCALE, 256.0));
    pstep(&r);
    pstep(&r);
    memcpy(w0, r.h.w, wbytes(&r));
    regopt_flatness_request_init(&rq);
    rq.measures = REGOPT_FLAT_WORST_CASE;
    rq.worst_iterations = 2;
    memset(&res, 0, sizeof res);
    res.size = sizeof res;
    ck_assert_msg(regopt_trainer_flatness(r.t, &r.batch, 1, &rq, &res) == REGOPT_OK, "%s",
                  regopt_trainer_message(r.t));
    ck_assert(res.worst_case >= 0.0);
    ck_assert(memcmp(w0, r.h.w, wbytes(&r)) == 0);
    /* a backward that adds nothing is caught through the host's buffer */
    r.h.ignore_dout = 1;
    r.h.fixed[0] = 0.0f;
    ck_assert_int_eq(regopt_trainer_step(r.t, &r.batch, 1), REGOPT_ERR_BACKWARD);
    ck_assert(strstr(regopt_trainer_message(r.t), "added nothing") != NULL);
    ck_assert(memcmp(w0, r.h.w, wbytes(&r)) == 0);
    prun_close(&r);
}
END_TEST

START_TEST(bad_input_is_refused)
{
    prun r;
    regopt_status st;
    regopt_model *m = regopt_model_create(NULL, &st);
    double w[4], g[4];
    uint16_t h[8];
    ck_assert_int_eq(regopt_model_add_param(m, "w", w, g, 4, REGOPT_DTYPE_FLOAT64, 0),
                     REGOPT_ERR_UNSUPPORTED);
    ck_assert(strstr(regopt_model_message(m), "dtype 4") != NULL);
    ck_assert_int_eq(regopt_model_add_param(m, "w", w, g, 4, (regopt_dtype)7, 0),
                     REGOPT_ERR_INVALID_ARGUMENT);
    /* half buffers are 2 bytes an element: adjacent halves do not overlap */
    ck_assert_int_eq(regopt_model_add_param(m, "h", h, h + 4, 4, REGOPT_DTYPE_FLOAT16, 0),
                     REGOPT_OK);
    ck_assert_int_eq(regopt_model_add_param(m, "h2", h + 4, NULL, 1, REGOPT_DTYPE_BFLOAT16, 0),
                     REGOPT_ERR_INVALID_ARGUMENT); /* a gradient's bytes */
    ck_assert_int_eq(regopt_model_free(m), REGOPT_OK);

    prun_open(&r, REGOPT_DTYPE_FLOAT16, PD, PK, REGOPT_SGD);
    ck_assert_int_eq(regopt_trainer_set_double(r.t, REGOPT_TRAINER_LOSS_SCALE, 0.0),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert(strstr(regopt_trainer_message(r.t), "trainer.loss_scale") != NULL);
    ck_assert_int_eq(regopt_trainer_set_double(r.t, REGOPT_TRAINER_LOSS_SCALE, NAN),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_trainer_set_double(r.t, REGOPT_TRAINER_LOSS_SCALE, -2.0),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_trainer_set_double(r.t, REGOPT_TRAINER_LOSS_SCALE, INFINITY),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_trainer_set_double(r.t, REGOPT_TRAINER_LOSS_SCALE, 1e39),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_trainer_set_double(r.t, REGOPT_TRAINER_SCALE_GROWTH, 1.0),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_trainer_set_double(r.t, REGOPT_TRAINER_SCALE_BACKOFF, 1.0),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_trainer_set_double(r.t, REGOPT_TRAINER_SCALE_BACKOFF, 0.0),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_trainer_set_int(r.t, REGOPT_TRAINER_SCALE_INTERVAL, 0),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_trainer_set_int(r.t, REGOPT_TRAINER_LOSS_SCALING, 3),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_trainer_set_double(r.t, REGOPT_STAT_LOSS_SCALE, 2.0),
                     REGOPT_ERR_STATE);
    /* nothing changed */
    ck_assert_double_eq(stat(r.t, REGOPT_STAT_LOSS_SCALE), 65536.0);
    {
        regopt_key k;
        ck_assert_int_eq(regopt_key_from_name("trainer.loss_scale", &k), REGOPT_OK);
        ck_assert_int_eq(k, REGOPT_TRAINER_LOSS_SCALE);
        ck_assert_int_eq(regopt_key_from_name("stat.skipped", &k), REGOPT_OK);
        ck_assert_int_eq(k, REGOPT_STAT_SKIPPED);
    }
    ck_assert_str_eq(regopt_status_string(REGOPT_ERR_OVERFLOW),
                     "REGOPT_ERR_OVERFLOW: a loss-scaled gradient overflowed");
    prun_close(&r);
}
END_TEST

Suite *suite_precision(void)
{
    Suite *s = suite_create("precision");
    TCase *c;
    suite_add_tcase(s, precision_convert_tcase());
    c = tcase_create("scaling");
    tcase_set_timeout(c, 120);
    tcase_add_test(c, defaults_follow_gradscaler);
    tcase_add_test(c, injected_inf_skips_the_step);
    tcase_add_test(c, scale_grows_after_the_interval);
    tcase_add_test(c, sam_overflow_in_each_pass);
    tcase_add_test(c, recover_republishes_half_buffers);
    tcase_add_test(c, resume_continues_the_scale_schedule);
    tcase_add_test(c, float32_buffers_with_scaling_train_identically);
    tcase_add_test(c, exactly_representable_model_trains_identically);
    tcase_add_test(c, accumulation_keeps_fp32_precision);
    tcase_add_test(c, threads_give_the_same_bits);
    tcase_add_test(c, without_scaling_an_overflow_is_an_error);
    tcase_add_test(c, host_checks_and_flatness);
    tcase_add_test(c, bad_input_is_refused);
    suite_add_tcase(s, c);
    return s;
}
