/* check_adv.c — adversarial training (REGOPT_REG_ADVERSARIAL): FGM, PGD,
 * FreeLB and VAT against hand-computed steps on the rig's linear embedding
 * model, the objectives' parameter gradients against finite differences,
 * and SMART's mt-dnn-exact option (smart.detach_target) against a
 * hand-computed mt-dnn step. Bad inputs, rollback, composition, threads and
 * resume: check_adv_errors.c; the task mask: check_adv_mask.c.
 *
 * Every expected value comes from adv_rig.h's double-precision reference
 * (formulas of ../shared/METHODS2.md) or a finite difference, never from
 * the library's output; perturbations drawn from the library's generator
 * are read from what the host received. */
#include "tests.h"

#include "adv_rig.h"

#define D3 3
#define K3 3

/* Micro-batch 0 of s: 2 rows of T = 2 embedding rows, weighted. */
static void fill2(sm_set *s, unsigned salt)
{
    sm_fill(s, 1, 2, 2, D3, K3, 1, 0, salt);
}

/* r = P_eps(r + step g / ||g||) per example (T d elements), L2. */
static void ref_pgd_update(const ad_ref *R, double *r, const double *g, double step,
                           double eps)
{
    size_t u = R->T * R->d, i, j;
    for (i = 0; i < R->in * R->d; i += u) {
        double gn = ad_norm2(g + i, u), rn;
        if (gn > 0.0)
            for (j = 0; j < u; j++)
                r[i + j] += step * g[i + j] / gn;
        rn = ad_norm2(r + i, u);
        if (eps > 0.0 && rn > eps)
            for (j = 0; j < u; j++)
                r[i + j] *= eps / rn;
    }
}

/* The perturbation the host received in the n-th forward of `slot`. */
static void received(const sm_run *r, int32_t slot, int n, size_t count, double *x)
{
    const sm_rec *f = sm_must_find(&r->h, 0, slot, 0, 0, 0, n);
    size_t i;
    ck_assert_msg(f->has_pert, "forward %d of slot %d had no perturbation", n, (int)slot);
    for (i = 0; i < count; i++)
        x[i] = f->pert[i];
}

/* ======================================================================== */
/* FGM and PGD                                                              */
/* ======================================================================== */

START_TEST(fgm_hand_step)
{
    ad_run *a = ad_open(D3, K3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1);
    regopt_regularizer *g;
    sm_set s;
    ad_ref R;
    double z[SO * SK], dz[SO * SK] = {0}, gd[SR * SD], r[SR * SD] = {0}, za[SO * SK];
    double da[SO * SK] = {0}, gA[SW] = {0}, gb[SK] = {0}, L0, L1, A0[SW];
    size_t i, u;
    const sm_rec *b0, *f1;
    fill2(&s, 1);
    g = ad_adv(a, REGOPT_ADV_FGM, 0.7, 0.5, 0.3, 5); /* FGM ignores steps */
    ad_ref_of(&R, &a->s, &s, 0);
    for (i = 0; i < K3 * D3; i++)
        A0[i] = R.A[i];
    /* g = d_input of the clean backward; r = eps g / ||g|| per example */
    ad_ref_out(&R, NULL, z);
    L0 = ad_ref_ce(&R, z, 1.0, dz);
    ad_ref_din(&R, dz, gd);
    u = R.T * R.d;
    for (i = 0; i < R.in * R.d; i += u) {
        double n = ad_norm2(gd + i, u);
        size_t j;
        for (j = 0; j < u; j++)
            r[i + j] = 0.5 * gd[i + j] / n;
    }
    ad_ref_out(&R, r, za);
    L1 = ad_ref_ce(&R, za, 0.7, da);
    ad_ref_pgrad(&R, NULL, dz, gA, gb);
    ad_ref_pgrad(&R, r, da, gA, gb);
    sm_step(&a->s, &s);
    ad_check_grads(&a->s, gA, gb, "FGM");
    for (i = 0; i < K3 * D3; i++)
        sm_near(a->s.h.A[i], A0[i] - 0.1 * gA[i], 1e-5, 1e-2, "A after FGM", (int)i);
    sm_near(stat(a->s.t, REGOPT_STAT_OBJECTIVE), L0 + 0.7 * L1, 1e-5, 1e-3, "objective", 0);
    sm_near(stat(a->s.t, REGOPT_STAT_LOSS), L0, 1e-5, 1e-3, "loss", 0);
    sm_near(ad_stat(g, REGOPT_STAT_ADV_LOSS), L1, 1e-5, 1e-3, "adv.loss", 0);
    sm_near(ad_stat(g, REGOPT_STAT_ADV_NORM), 0.5, 1e-5, 1.0, "adv.norm_used", 0);
    /* 2F + 2B: the clean backward gives d_input, no ascent pass */
    ck_assert_int_eq(a->s.h.forwards, 2);
    ck_assert_int_eq(a->s.h.backwards, 2);
    ck_assert_int_eq(a->s.h.npg_backwards, 0);
    b0 = sm_must_find(&a->s.h, 1, 0, 0, 0, 0, 0);
    ck_assert(b0->has_din);
    f1 = sm_must_find(&a->s.h, 0, 1, 0, 0, 0, 0);
    ck_assert(f1->has_pert);
    for (i = 0; i < R.in * R.d; i++)
        sm_near(f1->pert[i], r[i], 1e-5, 1e-2, "r", (int)i);
    ck_assert(!sm_must_find(&a->s.h, 1, 1, 0, 0, 0, 0)->has_din);
    sm_close(&a->s);
}
END_TEST

START_TEST(pgd_hand_step)
{
    const int K = 3;
    ad_run *a = ad_open(D3, K3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1);
    regopt_regularizer *g;
    sm_set s;
    ad_ref R;
    double z[SO * SK], dz[SO * SK] = {0}, gd[SR * SD], r[SR * SD] = {0}, za[SO * SK];
    double da[SO * SK], gA[SW] = {0}, gb[SK] = {0}, L0, L1;
    int k;
    fill2(&s, 2);
    g = ad_adv(a, REGOPT_ADV_PGD, 1.0, 0.25, 0.2, K);
    ad_ref_of(&R, &a->s, &s, 0);
    ad_ref_out(&R, NULL, z);
    L0 = ad_ref_ce(&R, z, 1.0, dz);
    ad_ref_din(&R, dz, gd); /* g_0: the clean backward's */
    for (k = 0; k < K; k++) {
        ref_pgd_update(&R, r, gd, 0.2, 0.25);
        if (k == K - 1)
            break;
        memset(da, 0, sizeof da);
        ad_ref_out(&R, r, za);
        (void)ad_ref_ce(&R, za, 1.0, da);
        ad_ref_din(&R, da, gd);
    }
    memset(da, 0, sizeof da);
    ad_ref_out(&R, r, za);
    L1 = ad_ref_ce(&R, za, 1.0, da);
    ad_ref_pgrad(&R, NULL, dz, gA, gb);
    ad_ref_pgrad(&R, r, da, gA, gb);
    sm_step(&a->s, &s);
    ad_check_grads(&a->s, gA, gb, "PGD");
    sm_near(stat(a->s.t, REGOPT_STAT_OBJECTIVE), L0 + L1, 1e-5, 1e-3, "objective", 0);
    /* the projection is active: ||r|| = eps per example */
    sm_near(ad_stat(g, REGOPT_STAT_ADV_NORM), 0.25, 1e-5, 1.0, "adv.norm_used", 0);
    /* K + 1 forward/backward pairs, the K - 1 intermediate ones NO_PARAM_GRAD */
    ck_assert_int_eq(a->s.h.forwards, K + 1);
    ck_assert_int_eq(a->s.h.backwards, K + 1);
    ck_assert_int_eq(a->s.h.npg_backwards, K - 1);
    ck_assert_int_eq(a->s.h.npg_without_din, 0);
    sm_close(&a->s);
}
END_TEST

/* ======================================================================== */
/* FreeLB                                                                   */
/* ======================================================================== */

/* K = 1 with a zero start is plain training, bit for bit. */
START_TEST(freelb_k1_is_plain_training)
{
    ad_run *p = ad_open(D3, K3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.3);
    ad_run *f = ad_open(D3, K3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.3);
    sm_set s;
    int step;
    regopt_regularizer *g = ad_adv(f, REGOPT_ADV_FREELB, 1.0, 0.0, 0.1, 1);
    sm_rset(g, REGOPT_ADV_INIT_MAG, 0.0);
    for (step = 0; step < 3; step++) {
        fill2(&s, (unsigned)step);
        sm_reset(&p->s);
        sm_reset(&f->s);
        sm_step(&p->s, &s);
        sm_step(&f->s, &s);
        ck_assert_int_eq(f->s.h.forwards, 1);
        ck_assert_int_eq(f->s.h.backwards, 1);
        ck_assert(memcmp(p->s.h.A, f->s.h.A, sizeof p->s.h.A) == 0);
        ck_assert(memcmp(p->s.h.b, f->s.h.b, sizeof p->s.h.b) == 0);
        ck_assert(stat(p->s.t, REGOPT_STAT_OBJECTIVE) == stat(f->s.t, REGOPT_STAT_OBJECTIVE));
    }
    sm_close(&p->s);
    sm_close(&f->s);
}
END_TEST

/* K = 3 from FreeLB's uniform start: (1/K) of each pass's gradient, delta
 * moved by step g / max(||g||, 1e-8) and rescaled into max_norm. */
START_TEST(freelb_hand_step)
{
    const int K = 3;
    const double mag = 0.3, step = 0.15, maxn = 0.2;
    ad_run *a = ad_open(D3, K3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1);
    regopt_regularizer *g;
    sm_set s;
    ad_ref R;
    double r[SR * SD], za[SO * SK], da[SO * SK], gd[SR * SD], gA[SW] = {0}, gb[SK] = {0};
    double lsum = 0.0, bound;
    size_t i;
    int t;
    fill2(&s, 3);
    g = ad_adv(a, REGOPT_ADV_FREELB, 9.0 /* unused */, maxn, step, K);
    sm_rset(g, REGOPT_ADV_INIT_MAG, mag);
    ad_ref_of(&R, &a->s, &s, 0);
    sm_step(&a->s, &s);
    /* delta_0 = U(-1, 1) mag / sqrt(T d) per example, in the task pass */
    received(&a->s, 0, 0, R.in * R.d, r);
    bound = mag / sqrt((double)(R.T * R.d));
    for (i = 0; i < R.in * R.d; i++)
        ck_assert_msg(fabs(r[i]) <= bound * (1 + 1e-6) && r[i] != 0.0, "delta_0[%zu] = %g", i,
                      r[i]);
    for (t = 0; t < K; t++) {
        memset(da, 0, sizeof da);
        ad_ref_out(&R, r, za);
        lsum += ad_ref_ce(&R, za, 1.0 / K, da);
        ad_ref_pgrad(&R, r, da, gA, gb);
        ad_ref_din(&R, da, gd);
        if (t < K - 1) {
            size_t u = R.T * R.d, j;
            for (i = 0; i < R.in * R.d; i += u) {
                double gn = ad_norm2(gd + i, u), rn;
                gn = gn > 1e-8 ? gn : 1e-8;
                for (j = 0; j < u; j++)
                    r[i + j] += step * gd[i + j] / gn;
                if ((rn = ad_norm2(r + i, u)) > maxn)
                    for (j = 0; j < u; j++)
                        r[i + j] *= maxn / rn;
            }
        }
    }
    ad_check_grads(&a->s, gA, gb, "FreeLB");
    sm_near(stat(a->s.t, REGOPT_STAT_OBJECTIVE), lsum / K, 1e-5, 1e-3, "objective", 0);
    sm_near(ad_stat(g, REGOPT_STAT_ADV_LOSS), lsum / K, 1e-5, 1e-3, "adv.loss", 0);
    /* K passes, every backward with parameter gradients, no clean pass */
    ck_assert_int_eq(a->s.h.forwards, K);
    ck_assert_int_eq(a->s.h.backwards, K);
    ck_assert_int_eq(a->s.h.npg_backwards, 0);
    sm_close(&a->s);
}
END_TEST

/* ======================================================================== */
/* VAT                                                                      */
/* ======================================================================== */

/* VAT's normalisation of one unit: x / (1e-12 + max|x|) / sqrt(1e-6 + sum). */
static void ref_vat_norm(double *x, size_t n, double scale)
{
    double m = 0.0, s = 0.0;
    size_t j;
    for (j = 0; j < n; j++)
        m = fabs(x[j]) > m ? fabs(x[j]) : m;
    for (j = 0; j < n; j++) {
        x[j] /= 1e-12 + m;
        s += x[j] * x[j];
    }
    for (j = 0; j < n; j++)
        x[j] = scale * x[j] / sqrt(1e-6 + s);
}

/* A batch whose every row is unlabelled trains through the consistency
 * term only: the clean pass's backward carries no gradient. */
START_TEST(vat_fully_unlabelled_batch)
{
    const double xi = 0.1, eps = 2.0, alpha = 1.5;
    ad_run *a = ad_open(D3, K3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1);
    regopt_regularizer *g;
    sm_set s;
    ad_ref R;
    uint8_t tm[2] = {0, 0};
    double z[SO * SK] = {0}, r[SR * SD] = {0}, za[SO * SK] = {0}, da[SO * SK] = {0};
    double gd[SR * SD] = {0};
    double gA[SW] = {0}, gb[SK] = {0}, kl;
    size_t i, u;
    const sm_rec *b0;
    fill2(&s, 4);
    s.b[0].task_mask = tm;
    s.b[0].labels = NULL; /* no row is labelled: no labels needed */
    g = ad_adv(a, REGOPT_ADV_VAT, alpha, eps, 0.0, 1);
    sm_rset(g, REGOPT_ADV_INIT_MAG, xi);
    ad_ref_of(&R, &a->s, &s, 0);
    sm_step(&a->s, &s);
    u = R.T * R.d;
    /* r = xi d, d a normalised Gaussian direction per example */
    received(&a->s, 1, 0, R.in * R.d, r);
    for (i = 0; i < R.in * R.d; i += u)
        sm_near(ad_norm2(r + i, u), xi, 1e-4, 1.0, "||xi d||", (int)i);
    ad_ref_out(&R, NULL, z);
    ad_ref_out(&R, r, za);
    (void)ad_ref_kl(&R, z, za, 0, 1.0, NULL, da);
    ad_ref_din(&R, da, gd);
    for (i = 0; i < R.in * R.d; i += u)
        ref_vat_norm(gd + i, u, eps);
    memset(da, 0, sizeof da);
    ad_ref_out(&R, gd, za);
    kl = ad_ref_kl(&R, z, za, 0, alpha, NULL, da);
    ad_ref_pgrad(&R, gd, da, gA, gb);
    ad_check_grads(&a->s, gA, gb, "VAT");
    ck_assert(stat(a->s.t, REGOPT_STAT_LOSS) == 0.0);
    sm_near(stat(a->s.t, REGOPT_STAT_OBJECTIVE), alpha * kl, 1e-4, 1e-6, "objective", 0);
    sm_near(ad_stat(g, REGOPT_STAT_ADV_LOSS), kl, 1e-4, 1e-6, "adv.loss", 0);
    /* the clean backward got zero d_outputs (no labelled row, KL detached) */
    b0 = sm_must_find(&a->s.h, 1, 0, 0, 0, 0, 0);
    for (i = 0; i < R.n * R.k; i++)
        ck_assert(b0->out[i] == 0.0f);
    /* clean F, ascent F + B (NO_PARAM_GRAD), final F + B, clean B */
    ck_assert_int_eq(a->s.h.forwards, 3);
    ck_assert_int_eq(a->s.h.backwards, 3);
    ck_assert_int_eq(a->s.h.npg_backwards, 1);
    sm_close(&a->s);
}
END_TEST

/* ======================================================================== */
/* Finite differences of each objective                                      */
/* ======================================================================== */

/* J(theta) = CE(f(e)) + alpha obj(f(e + r)) with r fixed, the KL's clean
 * side frozen at theta0 (detached), or live (symmetric). */
static double objective_at(const ad_ref *R, const double *z0, const double *r, int obj,
                           double alpha, int mse)
{
    double z[SO * SK], za[SO * SK], da[SO * SK] = {0}, L;
    ad_ref_out(R, NULL, z);
    ad_ref_out(R, r, za);
    if (mse) /* squared errors: the KL objectives become mean_k (a - z)^2 */
        return ad_ref_mse(R, z, R->t, 1) +
               alpha * (obj == REGOPT_ADV_OBJ_TASK ? ad_ref_mse(R, za, R->t, 1)
                        : ad_ref_mse(R, za, obj == REGOPT_ADV_OBJ_KL ? z0 : z, 0));
    L = ad_ref_ce(R, z, 1.0, NULL);
    if (obj == REGOPT_ADV_OBJ_TASK)
        return L + alpha * ad_ref_ce(R, za, 1.0, NULL);
    return L + alpha * ad_ref_kl(R, obj == REGOPT_ADV_OBJ_KL ? z0 : z, za,
                                 obj == REGOPT_ADV_OBJ_SYM_KL, 1.0, NULL, da);
}

START_TEST(objectives_match_finite_differences)
{
    int obj = _i % 3, mse = _i / 3;
    const double alpha = 0.8, h = 1e-6;
    ad_run *a = ad_open(D3, K3, 2, mse ? REGOPT_LOSS_MSE : REGOPT_LOSS_SOFTMAX_CE, 0.1);
    regopt_regularizer *g;
    sm_set s;
    ad_ref R;
    double r[SR * SD], z0[SO * SK], fA[SW], fb[SK];
    size_t i;
    fill2(&s, 5 + (unsigned)obj);
    g = ad_adv(a, REGOPT_ADV_PGD, alpha, 0.4, 0.3, 2);
    sm_rset(g, REGOPT_ADV_OBJECTIVE, obj);
    sm_rset(g, REGOPT_ADV_INIT, REGOPT_ADV_INIT_GAUSSIAN);
    sm_rset(g, REGOPT_ADV_INIT_MAG, 0.05);
    ad_ref_of(&R, &a->s, &s, 0);
    ad_ref_out(&R, NULL, z0);
    sm_step(&a->s, &s);
    /* the final pass's r: the last forward of slot 1 (init + K updates) */
    received(&a->s, 1, 2, R.in * R.d, r);
    for (i = 0; i < K3 * D3 + K3; i++) {
        double *w = i < K3 * D3 ? &R.A[i] : &R.b[i - K3 * D3], w0 = *w, jp, jm;
        *w = w0 + h;
        jp = objective_at(&R, z0, r, obj, alpha, mse);
        *w = w0 - h;
        jm = objective_at(&R, z0, r, obj, alpha, mse);
        *w = w0;
        if (i < K3 * D3)
            fA[i] = (jp - jm) / (2 * h);
        else
            fb[i - K3 * D3] = (jp - jm) / (2 * h);
    }
    ad_check_grads(&a->s, fA, fb, obj == 0 ? "task objective" : obj == 1 ? "KL" : "sym KL");
    sm_near(stat(a->s.t, REGOPT_STAT_OBJECTIVE), objective_at(&R, z0, r, obj, alpha, mse), 1e-5,
            1e-3, "objective", _i);
    sm_close(&a->s);
}
END_TEST

/* ======================================================================== */
/* SMART, mt-dnn exact                                                      */
/* ======================================================================== */

/* mt-dnn's stable_kl(a, sg(z)) gradient into da: p (c - sum p c), c = 2 (rp
 * - ry), r = -log(1/(x + 1e-6) - 1 + 1e-6), times rw / W. */
static void ref_stable_kl_grad(const ad_ref *R, const double *z, const double *a, double *da)
{
    size_t i, j, k = R->k;
    for (i = 0; i < R->n; i++) {
        double p[SK], q[SK], c[SK], m = 0.0;
        ad_softmax(a + i * k, k, p);
        ad_softmax(z + i * k, k, q);
        for (j = 0; j < k; j++) {
            c[j] = 2.0 * (-log(1.0 / (p[j] + 1e-6) - 1.0 + 1e-6) +
                          log(1.0 / (q[j] + 1e-6) - 1.0 + 1e-6));
            m += p[j] * c[j];
        }
        for (j = 0; j < k; j++)
            da[i * k + j] = R->rw[i] / R->W * p[j] * (c[j] - m);
    }
}

/* One mt-dnn SMART step: nu_1 = d / (||d||_inf + eps) per embedding row, d =
 * nu_0 + eta g, g of the stable KL; then R_s = KL(P||Q) + KL(Q||P) with
 * each direction's target detached (SymKlCriterion): gradient lambda (Q -
 * P) into the adversarial logits and lambda (P - Q) into the clean ones.
 * With smart.detach_target 0 the full gradient instead -- and the two
 * differ. */
START_TEST(smart_mtdnn_exact_step)
{
    int detach = _i;
    const double lambda = 1.3, eta = 0.05, eps = 1e-6;
    ad_run *a = ad_open(D3, K3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1);
    regopt_regularizer *sm;
    sm_set s;
    ad_ref R;
    double nu[SR * SD], z[SO * SK], za[SO * SK], da[SO * SK] = {0}, dz[SO * SK] = {0};
    double gd[SR * SD], gA[SW] = {0}, gb[SK] = {0}, p[SK], q[SK];
    size_t i, j;
    fill2(&s, 7);
    sm = sm_attach(&a->s, REGOPT_REG_SMART);
    sm_rset(sm, REGOPT_SMART_LAMBDA, lambda);
    sm_rset(sm, REGOPT_SMART_EPSILON, eps);
    sm_rset(sm, REGOPT_SMART_SIGMA, 0.05);
    sm_rset(sm, REGOPT_SMART_ETA, eta);
    sm_rset(sm, REGOPT_SMART_MTDNN, 1);
    sm_rset(sm, REGOPT_SMART_STABLE_KL, 1);
    sm_rset(sm, REGOPT_SMART_SAME_SEED, 0);
    sm_rset(sm, REGOPT_SMART_DETACH_TARGET, detach);
    ad_ref_of(&R, &a->s, &s, 0);
    sm_step(&a->s, &s);
    received(&a->s, 1, 0, R.in * R.d, nu); /* nu_0 ~ N(0, sigma^2) */
    ad_ref_out(&R, NULL, z);
    ad_ref_out(&R, nu, za);
    ref_stable_kl_grad(&R, z, za, da);
    ad_ref_din(&R, da, gd);
    for (i = 0; i < R.in; i++) {
        double n = 0.0;
        for (j = 0; j < R.d; j++) {
            nu[i * R.d + j] += eta * gd[i * R.d + j];
            n = fabs(nu[i * R.d + j]) > n ? fabs(nu[i * R.d + j]) : n;
        }
        for (j = 0; j < R.d; j++)
            nu[i * R.d + j] /= n + eps;
    }
    ad_ref_out(&R, nu, za);
    memset(da, 0, sizeof da);
    (void)ad_ref_ce(&R, z, 1.0, dz);
    if (detach) {
        for (i = 0; i < R.n; i++) {
            double c = lambda * R.rw[i] / R.W;
            ad_softmax(za + i * R.k, R.k, p);
            ad_softmax(z + i * R.k, R.k, q);
            for (j = 0; j < R.k; j++) {
                da[i * R.k + j] += c * (p[j] - q[j]);
                dz[i * R.k + j] += c * (q[j] - p[j]);
            }
        }
    } else {
        (void)ad_ref_kl(&R, z, za, 1, lambda, dz, da);
    }
    ad_ref_pgrad(&R, NULL, dz, gA, gb);
    ad_ref_pgrad(&R, nu, da, gA, gb);
    ad_check_grads(&a->s, gA, gb, detach ? "mt-dnn detached" : "full gradient");
    sm_close(&a->s);
}
END_TEST

/* The two gradients really differ on this rig (else the test above could
 * not tell the option from its absence). */
START_TEST(smart_detach_changes_the_gradient)
{
    float g0[SW], g1[SW];
    int detach;
    for (detach = 0; detach < 2; detach++) {
        ad_run *a = ad_open(D3, K3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1);
        regopt_regularizer *sm = sm_attach(&a->s, REGOPT_REG_SMART);
        sm_set s;
        fill2(&s, 7);
        sm_rset(sm, REGOPT_SMART_MTDNN, 1);
        sm_rset(sm, REGOPT_SMART_SIGMA, 0.05);
        sm_rset(sm, REGOPT_SMART_ETA, 0.05);
        sm_rset(sm, REGOPT_SMART_DETACH_TARGET, detach);
        sm_step(&a->s, &s);
        memcpy(detach ? g1 : g0, a->s.h.gA, sizeof g0);
        sm_close(&a->s);
    }
    ck_assert(fabs((double)g0[0] - g1[0]) > 1e-4 * fabs((double)g0[0]));
}
END_TEST

Suite *suite_adv(void)
{
    Suite *s = suite_create("adv");
    TCase *tc = tcase_create("methods");
    tcase_add_test(tc, fgm_hand_step);
    tcase_add_test(tc, pgd_hand_step);
    tcase_add_test(tc, freelb_k1_is_plain_training);
    tcase_add_test(tc, freelb_hand_step);
    tcase_add_test(tc, vat_fully_unlabelled_batch);
    tcase_add_loop_test(tc, objectives_match_finite_differences, 0, 6); /* CE, then MSE */
    tcase_add_loop_test(tc, smart_mtdnn_exact_step, 0, 2);
    tcase_add_test(tc, smart_detach_changes_the_gradient);
    suite_add_tcase(s, tc);
    return s;
}
