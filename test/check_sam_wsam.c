/* check_sam_wsam.c — WSAM (sam.wsam) in suite_sam_variants (the rig:
 * sam_variants_rig.h): the first steps against a double-precision
 * reference with momentum, the identities with SAM, composition with
 * FriendlySAM and m-sharpness, GSAM refused, data parallel, check_host and
 * resume. */
#include "tests.h"

#include "sam_variants_rig.h"

/* ======================================================================== */
/* 4. WSAM (sam.wsam)                                                       */
/* ======================================================================== */

/* Double-precision WSAM with SGD (momentum mu, torch's buffer: the first
 * step copies the gradient) on the quadratic host, plain SAM ascent. */
typedef struct wref {
    size_t n;
    int mode, first;
    double rho, gamma, lr, mu;
    double w[8], buf[8];
} wref;

static void wref_init(wref *f, size_t n, int mode, double gamma, double rho, double lr,
                      double mu)
{
    size_t i;
    memset(f, 0, sizeof *f);
    f->n = n;
    f->mode = mode;
    f->gamma = gamma;
    f->rho = rho;
    f->lr = lr;
    f->mu = mu;
    f->first = 1;
    for (i = 0; i < n; i++)
        f->w[i] = w0_of(i);
}

static void wref_step(wref *f)
{
    double g[8], gp[8], d[8], s2 = 0.0, c, alpha = f->gamma / (1.0 - f->gamma);
    size_t i;
    for (i = 0; i < f->n; i++) {
        g[i] = h_of(i) * f->w[i];
        s2 += g[i] * g[i];
    }
    c = f->rho / (sqrt(s2) + 1e-12);
    for (i = 0; i < f->n; i++) {
        gp[i] = h_of(i) * (f->w[i] + c * g[i]);
        d[i] = f->mode == REGOPT_SAM_WSAM_COUPLED ? alpha * gp[i] + (1.0 - alpha) * g[i] : g[i];
        f->buf[i] = f->first || f->mu == 0.0 ? d[i] : f->mu * f->buf[i] + d[i];
        f->w[i] -= f->lr * f->buf[i];
        if (f->mode == REGOPT_SAM_WSAM_DECOUPLED)
            f->w[i] -= f->lr * alpha * (gp[i] - g[i]);
    }
    f->first = 0;
}

static void wsam_reference(int mode, double gamma, double mu)
{
    vrun *r = vrun_open(5, REGOPT_SGD, 0.01, 0, 0.1, 1);
    wref f;
    char what[96];
    size_t i;
    int k;
    MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_MOMENTUM, mu));
    vset(r, REGOPT_SAM_WSAM, mode);
    vset(r, REGOPT_SAM_WSAM_GAMMA, gamma);
    wref_init(&f, 5, mode, gamma, 0.1, 0.01, mu);
    for (k = 0; k < 3; k++) {
        vstep(r);
        wref_step(&f);
        for (i = 0; i < 5; i++) {
            snprintf(what, sizeof what, "WSAM %s gamma %g step %d w[%zu]",
                     mode == REGOPT_SAM_WSAM_COUPLED ? "coupled" : "decoupled", gamma, k, i);
            near(r->q.w[i], f.w[i], 2e-6, 1.0, what);
        }
    }
    vrun_close(r);
}

START_TEST(wsam_first_steps)
{
    wsam_reference(REGOPT_SAM_WSAM_DECOUPLED, 0.9, 0.9); /* the paper's defaults */
    wsam_reference(REGOPT_SAM_WSAM_COUPLED, 0.9, 0.9);
    wsam_reference(REGOPT_SAM_WSAM_DECOUPLED, 0.7, 0.0);
    wsam_reference(REGOPT_SAM_WSAM_COUPLED, 0.3, 0.0);
}
END_TEST

/* The identities: coupled with gamma 1/2 (alpha 1) is SAM, decoupled with
 * gamma 0 (alpha 0) is the base optimizer alone, bit for bit; with SGD
 * without momentum or decay, decoupled and coupled are the same update
 * w - lr (alpha g_p + (1 - alpha) g) up to rounding. */
START_TEST(wsam_identities)
{
    vrun *a = vrun_open(7, REGOPT_ADAM, 0.01, 0, 0.2, 1);
    vrun *b = vrun_open(7, REGOPT_ADAM, 0.01, 0, 0.2, 1);
    vrun *c = vrun_open(7, REGOPT_ADAM, 0.01, 0, 0.2, 1);
    vrun *d = vrun_open(7, REGOPT_ADAM, 0.01, 0, 0.2, 1);
    vrun *e = vrun_open(7, REGOPT_SGD, 0.01, 0, 0.2, 1);
    vrun *f = vrun_open(7, REGOPT_SGD, 0.01, 0, 0.2, 1);
    size_t i;
    int k;
    vset(a, REGOPT_SAM_WSAM, REGOPT_SAM_WSAM_COUPLED);
    vset(a, REGOPT_SAM_WSAM_GAMMA, 0.5);
    vset(c, REGOPT_SAM_WSAM, REGOPT_SAM_WSAM_DECOUPLED);
    vset(c, REGOPT_SAM_WSAM_GAMMA, 0.0);
    TMUST(d->t, regopt_trainer_detach(d->t, d->sam)); /* no SAM at all */
    vset(e, REGOPT_SAM_WSAM, REGOPT_SAM_WSAM_DECOUPLED);
    vset(f, REGOPT_SAM_WSAM, REGOPT_SAM_WSAM_COUPLED);
    for (k = 0; k < 5; k++) {
        vstep(a);
        vstep(b);
        vstep(c);
        vstep(d);
        vstep(e);
        vstep(f);
        same_w(a, b, "coupled WSAM gamma 1/2 vs SAM");
        same_w(c, d, "decoupled WSAM gamma 0 vs the base optimizer");
        for (i = 0; i < 7; i++)
            near(e->q.w[i], f->q.w[i], 1e-6, 1.0, "decoupled vs coupled with plain SGD");
    }
    ck_assert_int_eq(c->q.forwards, 2 * d->q.forwards); /* the ascent was made */
    vrun_close(a);
    vrun_close(b);
    vrun_close(c);
    vrun_close(d);
    vrun_close(e);
    vrun_close(f);
}
END_TEST

/* WSAM composes with FriendlySAM's direction and m-sharpness: coupled
 * gamma 1/2 changes nothing there either. */
START_TEST(wsam_composes)
{
    vrun *a = vrun_open(7, REGOPT_ADAM, 0.01, 1, 0.2, 4);
    vrun *b = vrun_open(7, REGOPT_ADAM, 0.01, 1, 0.2, 4);
    int k;
    vset(a, REGOPT_SAM_M_ROWS, 2);
    vset(b, REGOPT_SAM_M_ROWS, 2);
    vset(a, REGOPT_SAM_WSAM, REGOPT_SAM_WSAM_COUPLED);
    vset(a, REGOPT_SAM_WSAM_GAMMA, 0.5);
    for (k = 0; k < 4; k++) {
        vstep(a);
        vstep(b);
        same_w(a, b, "FriendlySAM + m-sharpness + coupled WSAM gamma 1/2");
    }
    vrun_close(a);
    vrun_close(b);
}
END_TEST

/* WSAM with GSAM is refused at the step, which changes nothing. */
START_TEST(wsam_refuses_gsam)
{
    vrun *r = vrun_open(5, REGOPT_SGD, 0.01, 0, 0.1, 1);
    float w[5];
    vset(r, REGOPT_SAM_WSAM, REGOPT_SAM_WSAM_DECOUPLED);
    vset(r, REGOPT_SAM_GSAM, 1);
    memcpy(w, r->q.w, sizeof w);
    ck_assert_int_eq(regopt_trainer_step(r->t, &r->b, 1), REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r->t), "sam.gsam"));
    ck_assert(memcmp(w, r->q.w, sizeof w) == 0);
    ck_assert_int_eq(r->q.forwards, 0);
    vset(r, REGOPT_SAM_GSAM, 0);
    vstep(r);
    ck_assert_int_ne(regopt_regularizer_set_double(r->sam, REGOPT_SAM_WSAM, 3), REGOPT_OK);
    ck_assert_int_ne(regopt_regularizer_set_double(r->sam, REGOPT_SAM_WSAM_GAMMA, 1.0),
                     REGOPT_OK);
    ck_assert_int_ne(regopt_regularizer_set_double(r->sam, REGOPT_SAM_WSAM_GAMMA, -0.1),
                     REGOPT_OK);
    vrun_close(r);
}
END_TEST

/* Data parallel on one replica (an all-reduce that sums one buffer: the
 * identity): decoupled WSAM makes two all-reduces per SAM step (g_p - g,
 * then the gradient) and matches the reference; coupled one. A failing
 * all-reduce in either leaves the checkpoint bytes as they were. */
static int ar_calls, ar_fail_at;

static int identity_allreduce(float *buf, size_t n, void *user)
{
    (void)buf;
    (void)n;
    (void)user;
    return ++ar_calls == ar_fail_at ? 5 : 0;
}

START_TEST(wsam_data_parallel)
{
    int mode, k;
    for (mode = 1; mode <= 2; mode++) {
        vrun *r = vrun_open(5, REGOPT_SGD, 0.01, 0, 0.1, 1);
        wref f;
        unsigned char *before, *after;
        size_t n1, n2, i;
        MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_MOMENTUM, 0.9));
        vset(r, REGOPT_SAM_WSAM, mode);
        TMUST(r->t, regopt_trainer_set_allreduce(r->t, identity_allreduce, NULL, NULL));
        wref_init(&f, 5, mode, 0.9, 0.1, 0.01, 0.9);
        ar_calls = 0;
        ar_fail_at = 0;
        for (k = 0; k < 3; k++) {
            vstep(r);
            wref_step(&f);
            for (i = 0; i < 5; i++)
                near(r->q.w[i], f.w[i], 2e-6, 1.0, "WSAM with an all-reduce");
        }
        ck_assert_int_eq(ar_calls, mode == REGOPT_SAM_WSAM_DECOUPLED ? 6 : 3);
        for (k = 1; k <= (mode == REGOPT_SAM_WSAM_DECOUPLED ? 2 : 1); k++) {
            before = save_all(r, &n1);
            ar_fail_at = ar_calls + k;
            ck_assert_int_eq(regopt_trainer_step(r->t, &r->b, 1), REGOPT_ERR_ALLREDUCE);
            after = save_all(r, &n2);
            ck_assert_uint_eq(n1, n2);
            ck_assert_msg(memcmp(before, after, n1) == 0, "a failed all-reduce %d changed "
                          "the checkpoint", k);
            free(before);
            free(after);
        }
        vrun_close(r);
    }
}
END_TEST

/* The raw step moves the weights after the update: trainer.check_host
 * records them after it, so the next step does not take it for the host
 * writing behind the library's back. */
START_TEST(wsam_with_check_host)
{
    vrun *r = vrun_open(5, REGOPT_SGD, 0.01, 0, 0.1, 1);
    int k;
    MUST(regopt_trainer_set_int(r->t, REGOPT_TRAINER_CHECK_HOST, 1));
    vset(r, REGOPT_SAM_WSAM, REGOPT_SAM_WSAM_DECOUPLED);
    for (k = 0; k < 3; k++)
        vstep(r);
    r->q.w[0] += 1.0f; /* and a real write is still seen */
    ck_assert_int_eq(regopt_trainer_step(r->t, &r->b, 1), REGOPT_ERR_STATE);
    vrun_close(r);
}
END_TEST

/* Resume with decoupled WSAM and momentum: bit for bit (WSAM keeps no
 * state: the options and the optimizer's moments are enough). */
START_TEST(wsam_resume_is_exact)
{
    vrun *a = vrun_open(6, REGOPT_SGD, 0.01, 0, 0.2, 1);
    vrun *b = vrun_open(6, REGOPT_SGD, 0.01, 0, 0.2, 1);
    vrun *c = vrun_open(6, REGOPT_SGD, 0.01, 0, 0.2, 1);
    unsigned char *buf;
    size_t n;
    int k;
    MUST(regopt_optimizer_set_double(a->o, REGOPT_OPT_MOMENTUM, 0.9));
    MUST(regopt_optimizer_set_double(b->o, REGOPT_OPT_MOMENTUM, 0.9));
    vset(a, REGOPT_SAM_WSAM, REGOPT_SAM_WSAM_DECOUPLED);
    vset(b, REGOPT_SAM_WSAM, REGOPT_SAM_WSAM_DECOUPLED);
    for (k = 0; k < 5; k++)
        vstep(a);
    vstep(b);
    vstep(b);
    buf = save_all(b, &n);
    TMUST(c->t, regopt_trainer_load_buffer(c->t, CK_ALL, buf, n));
    for (k = 0; k < 3; k++)
        vstep(c);
    same_w(a, c, "WSAM resumed");
    free(buf);
    vrun_close(a);
    vrun_close(b);
    vrun_close(c);
}
END_TEST

TCase *sam_wsam_tcase(void)
{
    TCase *tc = tcase_create("wsam");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, wsam_first_steps);
    tcase_add_test(tc, wsam_identities);
    tcase_add_test(tc, wsam_composes);
    tcase_add_test(tc, wsam_refuses_gsam);
    tcase_add_test(tc, wsam_data_parallel);
    tcase_add_test(tc, wsam_resume_is_exact);
    tcase_add_test(tc, wsam_with_check_host);
    return tc;
}
