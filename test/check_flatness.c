/* check_flatness.c — regopt_trainer_flatness: worst-case and average-case
 * sharpness, the top Hessian eigenvalue and the Hessian trace on the
 * linear test host with the MSE loss, a quadratic whose Hessian is known:
 * per output column k, H = (2 / (N K)) X~^T X~ with X~ = [X, 1]. Expected
 * numbers come from that formula (and a Jacobi eigensolver written here),
 * never from the library. Then: nothing changes (checkpoint bytes, host
 * weights), a callback failing at every pass, bad requests, pass flags and
 * counts, and the same bits on every thread count. */
#include "tests.h"
#include "test_util.h"

#include "test_host.h"

#include <math.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

#define FX_MAX_ROWS 8
#define FX_PAD 300000 /* a trainable tensor the loss ignores: the threaded loops */

typedef struct fx {
    th_host h;
    float x[FX_MAX_ROWS * TH_D], tgt[FX_MAX_ROWS * TH_K];
    size_t rows;
    th_batch hb;
    regopt_batch b;
    float *pad, *pad_grad;
    regopt_model *m;
    regopt_optimizer *o;
    regopt_trainer *t;
} fx;

/* Rows of a 4 x 4 Hadamard matrix without its constant column: with
 * column j scaled by a_j, X~^T X~ = diag(4 a_1^2, 4 a_2^2, 4 a_3^2, 4). */
static const float fx_hadamard[4][3] = {{1, 1, 1}, {1, -1, -1}, {-1, 1, -1}, {-1, -1, 1}};

/* When set, the forward callback of the next fx_new's model. */
static regopt_pass_fn fx_forward;

/* a: Hadamard inputs scaled by a (4 rows); NULL: th_data's 8 rows. */
static fx *fx_new(const double *a, int pad)
{
    fx *f = calloc(1, sizeof *f);
    regopt_status st;
    size_t r, j, k;
    ck_assert_ptr_nonnull(f);
    th_init(&f->h);
    f->rows = a ? 4 : FX_MAX_ROWS;
    if (a) {
        for (r = 0; r < 4; r++)
            for (j = 0; j < TH_D; j++)
                f->x[r * TH_D + j] = (float)a[j] * fx_hadamard[r][j];
    } else {
        th_data(f->x, NULL, f->rows, 0);
    }
    for (r = 0; r < f->rows; r++)
        for (k = 0; k < TH_K; k++)
            f->tgt[r * TH_K + k] = (float)(0.3 * sin((double)r + 2.0 * (double)k));
    th_batch_of(&f->b, &f->hb, f->x, NULL, f->rows);
    f->b.targets = f->tgt;
    f->m = th_model(&f->h);
    ck_assert_ptr_nonnull(f->m);
    if (fx_forward)
        MUST(regopt_model_set_callbacks(f->m, fx_forward, th_backward, &f->h, NULL));
    if (pad) {
        f->pad = calloc(FX_PAD, sizeof(float));
        f->pad_grad = calloc(FX_PAD, sizeof(float));
        for (j = 0; j < FX_PAD; j++)
            f->pad[j] = (float)sin(0.001 * (double)j);
        MUST(regopt_model_add_param(f->m, "pad", f->pad, f->pad_grad, FX_PAD,
                                    REGOPT_DTYPE_FLOAT32, 2));
    }
    f->o = regopt_optimizer_create(REGOPT_ADAM, NULL, &st);
    ck_assert_ptr_nonnull(f->o);
    f->t = regopt_trainer_create(f->m, f->o, &st);
    ck_assert_ptr_nonnull(f->t);
    MUST(regopt_trainer_set_int(f->t, REGOPT_TRAINER_LOSS, REGOPT_LOSS_MSE));
    return f;
}

static void fx_free(fx *f)
{
    MUST(regopt_trainer_free(f->t));
    tu_free_regs();
    MUST(regopt_optimizer_free(f->o));
    MUST(regopt_model_free(f->m));
    free(f->pad);
    free(f->pad_grad);
    free(f);
}

/* The 4 x 4 block of H shared by the K output columns. */
static void fx_block(const fx *f, double A[4][4])
{
    double c = 2.0 / ((double)f->rows * TH_K);
    size_t r, i, j;
    memset(A, 0, 16 * sizeof(double));
    for (r = 0; r < f->rows; r++)
        for (i = 0; i < 4; i++)
            for (j = 0; j < 4; j++)
                A[i][j] += c * (i < 3 ? f->x[r * TH_D + i] : 1.0) *
                           (j < 3 ? f->x[r * TH_D + j] : 1.0);
}

/* The gradient at the host's weights, in registration order (W, then b). */
static void fx_gradient(const fx *f, double g[TH_D * TH_K + TH_K])
{
    double c = 2.0 / ((double)f->rows * TH_K);
    size_t r, j, k;
    memset(g, 0, (TH_D * TH_K + TH_K) * sizeof(double));
    for (r = 0; r < f->rows; r++)
        for (k = 0; k < TH_K; k++) {
            double z = f->h.b[k], e;
            for (j = 0; j < TH_D; j++)
                z += (double)f->x[r * TH_D + j] * f->h.w[j * TH_K + k];
            e = c * (z - f->tgt[r * TH_K + k]);
            for (j = 0; j < TH_D; j++)
                g[j * TH_K + k] += e * f->x[r * TH_D + j];
            g[TH_D * TH_K + k] += e;
        }
}

/* The largest eigenvalue of a symmetric 4 x 4 matrix (cyclic Jacobi). */
static double jacobi_top(double a[4][4])
{
    int sweep, p, q, k;
    double top;
    for (sweep = 0; sweep < 50; sweep++)
        for (p = 0; p < 4; p++)
            for (q = p + 1; q < 4; q++) {
                double th, t, c, s;
                if (fabs(a[p][q]) < 1e-300)
                    continue;
                th = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                t = (th >= 0 ? 1.0 : -1.0) / (fabs(th) + sqrt(th * th + 1.0));
                c = 1.0 / sqrt(t * t + 1.0);
                s = t * c;
                for (k = 0; k < 4; k++) {
                    double kp = a[k][p], kq = a[k][q];
                    a[k][p] = c * kp - s * kq;
                    a[k][q] = s * kp + c * kq;
                }
                for (k = 0; k < 4; k++) {
                    double pk = a[p][k], qk = a[q][k];
                    a[p][k] = c * pk - s * qk;
                    a[q][k] = s * pk + c * qk;
                }
            }
    top = a[0][0];
    for (k = 1; k < 4; k++)
        top = a[k][k] > top ? a[k][k] : top;
    return top;
}

static regopt_flatness_request request(uint32_t measures)
{
    regopt_flatness_request r;
    regopt_flatness_request_init(&r);
    r.measures = measures;
    return r;
}

static regopt_status probe(fx *f, const regopt_flatness_request *r, regopt_flatness *out)
{
    memset(out, 0, sizeof *out);
    out->size = sizeof *out;
    return regopt_trainer_flatness(f->t, &f->b, 1, r, out);
}

/* ---- the measures against closed forms ----------------------------------- */

START_TEST(eigenvalue_and_trace_of_a_diagonal_hessian)
{
    static const double a[3] = {2.0, 1.0, 0.5};
    fx *f = fx_new(a, 0);
    regopt_flatness_request r = request(REGOPT_FLAT_EIGENVALUE | REGOPT_FLAT_TRACE);
    regopt_flatness out;
    double A[4][4], tr = 0.0;
    int i;
    fx_block(f, A);
    for (i = 0; i < 4; i++)
        tr += TH_K * A[i][i];
    near(tr, 12.5, 1e-12, 1.0, "the formula: 2 (sum a^2 + 1)");
    r.eigen_tolerance = 1e-9;
    TMUST(f->t, probe(f, &r, &out));
    near(out.eigenvalue, jacobi_top(A), 1e-4, 1.0, "top eigenvalue (2)");
    near(out.trace, tr, 1e-4, 1.0, "Hutchinson trace of a diagonal H");
    ck_assert_int_eq(out.trace_converged, 1);
    ck_assert_uint_eq(out.trace_samples, 2); /* every sample is exact: stops at the 2nd */
    ck_assert_msg(out.trace_stderr < 1e-4, "stderr %g", out.trace_stderr);
    ck_assert_int_eq(out.eigen_converged, 1);
    ck_assert_uint_le(out.eigen_iterations, 40);
    ck_assert_msg(out.fd_step > 0.0, "fd_step %g", out.fd_step);
    fx_free(f);
}
END_TEST

START_TEST(eigenvalue_and_trace_of_a_full_hessian)
{
    fx *f = fx_new(NULL, 0);
    regopt_flatness_request r = request(REGOPT_FLAT_EIGENVALUE | REGOPT_FLAT_TRACE);
    regopt_flatness out;
    double A[4][4], tr = 0.0;
    int i;
    fx_block(f, A);
    for (i = 0; i < 4; i++)
        tr += TH_K * A[i][i];
    r.eigen_tolerance = 1e-10;
    r.eigen_iterations = 1000;
    r.trace_tolerance = 0.0; /* every sample: the estimate's own error */
    r.trace_samples = 4000;
    TMUST(f->t, probe(f, &r, &out));
    near(out.eigenvalue, jacobi_top(A), 1e-4, 1.0, "top eigenvalue vs Jacobi");
    ck_assert_int_eq(out.eigen_converged, 1);
    ck_assert_uint_eq(out.trace_samples, 4000);
    ck_assert_int_eq(out.trace_converged, 0);
    ck_assert_msg(fabs(out.trace - tr) <= 4.0 * out.trace_stderr,
                  "trace %.9g, exact %.9g, stderr %.3g", out.trace, tr, out.trace_stderr);
    ck_assert_msg(out.trace_stderr > 0.0 && out.trace_stderr < 0.05 * tr, "stderr %g",
                  out.trace_stderr);
    fx_free(f);
}
END_TEST

/* H = I / 2 (a = 1): L(w + d) - L(w) = g.d + |d|^2 / 4, whose maximum over
 * |d|_2 <= rho is rho |g| + rho^2 / 4 (d = rho g / |g|), and over
 * |d|_inf <= rho (T) is sum rho T_i |g_i| + rho^2 T_i^2 / 4. */
START_TEST(worst_case_matches_the_closed_forms)
{
    static const double a[3] = {1.0, 1.0, 1.0};
    fx *f = fx_new(a, 0);
    regopt_flatness_request r = request(REGOPT_FLAT_WORST_CASE);
    regopt_flatness out;
    double g[TH_D * TH_K + TH_K], g2 = 0.0, l1 = 0.0, al1 = 0.0, aw2 = 0.0, want;
    const double rho = 0.05;
    size_t i;
    fx_gradient(f, g);
    for (i = 0; i < TH_D * TH_K + TH_K; i++) {
        double w = i < TH_D * TH_K ? f->h.w[i] : f->h.b[i - TH_D * TH_K];
        ck_assert_msg(fabs(g[i]) > 1e-3, "g[%zu] = %g: the L-inf form needs signs", i, g[i]);
        g2 += g[i] * g[i];
        l1 += fabs(g[i]);
        al1 += fabs(w) * fabs(g[i]);
        aw2 += w * w;
    }
    r.rho = rho;
    r.worst_iterations = 60;
    TMUST(f->t, probe(f, &r, &out));
    want = rho * sqrt(g2) + rho * rho / 4.0;
    near(out.worst_case, want, 1e-4, 0.0, "L2 worst case");
    near(out.worst_radius, rho, 1e-4, 0.0, "L2 radius of the maximiser");
    ck_assert_uint_eq(out.worst_iterations, 60);
    r.norm = REGOPT_FLAT_NORM_INF;
    TMUST(f->t, probe(f, &r, &out));
    want = rho * l1 + 16.0 * rho * rho / 4.0;
    near(out.worst_case, want, 1e-4, 0.0, "L-inf worst case");
    r.adaptive = 1;
    TMUST(f->t, probe(f, &r, &out));
    want = rho * al1 + rho * rho * aw2 / 4.0;
    near(out.worst_case, want, 1e-4, 0.0, "adaptive L-inf worst case");
    r.norm = REGOPT_FLAT_NORM_L2; /* the ellipsoid: no closed form, but bounds */
    TMUST(f->t, probe(f, &r, &out));
    ck_assert_msg(out.worst_case > 0.0 && out.worst_radius <= rho * (1 + 1e-6),
                  "adaptive L2: %g at radius %g", out.worst_case, out.worst_radius);
    ck_assert_msg(out.worst_case <= rho * sqrt(aw2 * g2) + rho * rho * aw2 / 4.0,
                  "adaptive L2 above its Cauchy-Schwarz bound: %g", out.worst_case);
    fx_free(f);
}
END_TEST

/* E[g.d + |d|^2 / 4] = sigma^2 n / 4 for d ~ N(0, sigma^2 I), n = 16. */
START_TEST(average_case_is_near_its_expectation)
{
    static const double a[3] = {1.0, 1.0, 1.0};
    fx *f = fx_new(a, 0);
    regopt_flatness_request r = request(REGOPT_FLAT_AVERAGE_CASE);
    regopt_flatness out, again;
    double want;
    r.sigma = 0.1;
    r.average_samples = 2000;
    TMUST(f->t, probe(f, &r, &out));
    want = 0.01 * 16.0 / 4.0;
    ck_assert_uint_eq(out.average_samples, 2000);
    ck_assert_msg(fabs(out.average_case - want) <= 4.0 * out.average_stderr,
                  "average %.6g, expected %.6g, stderr %.3g", out.average_case, want,
                  out.average_stderr);
    TMUST(f->t, probe(f, &r, &again)); /* the same seed: the same bits */
    ck_assert_mem_eq(&out, &again, sizeof out);
    r.seed = 7;
    TMUST(f->t, probe(f, &r, &again));
    ck_assert_msg(again.average_case != out.average_case, "another seed, the same draws");
    fx_free(f);
}
END_TEST

/* ---- nothing changes ----------------------------------------------------- */

typedef struct snapshot {
    unsigned char ck[8192];
    size_t ck_size;
    float w[TH_D * TH_K], b[TH_K];
} snapshot;

static void snap(fx *f, snapshot *s)
{
    memset(s, 0, sizeof *s);
    TMUST(f->t, regopt_trainer_save_buffer(f->t, REGOPT_CHECKPOINT_PARAMS |
                                           REGOPT_CHECKPOINT_OPTIONS, s->ck, sizeof s->ck,
                                           &s->ck_size));
    memcpy(s->w, f->h.w, sizeof s->w);
    memcpy(s->b, f->h.b, sizeof s->b);
}

static void same_as(fx *f, const snapshot *s, const char *when)
{
    snapshot now;
    snap(f, &now);
    ck_assert_msg(now.ck_size == s->ck_size && !memcmp(now.ck, s->ck, s->ck_size),
                  "%s: the checkpoint bytes changed", when);
    ck_assert_msg(!memcmp(now.w, s->w, sizeof now.w) && !memcmp(now.b, s->b, sizeof now.b),
                  "%s: the host's weights changed", when);
}

/* A trainer with SAM and R-Drop-free state after two Adam steps. */
static fx *fx_trained(void)
{
    fx *f = fx_new(NULL, 0);
    regopt_regularizer *sam = tu_add(f->t, REGOPT_REG_SAM);
    (void)sam;
    TMUST(f->t, regopt_trainer_step(f->t, &f->b, 1));
    TMUST(f->t, regopt_trainer_step(f->t, &f->b, 1));
    return f;
}

static regopt_flatness_request small_request(void)
{
    regopt_flatness_request r = request(REGOPT_FLAT_ALL);
    r.worst_iterations = 3;
    r.average_samples = 2;
    r.eigen_iterations = 2;
    r.eigen_tolerance = 0.0;
    r.trace_samples = 2;
    r.trace_tolerance = 0.0;
    return r;
}

START_TEST(nothing_changes)
{
    fx *f = fx_trained();
    regopt_flatness_request r = small_request();
    regopt_flatness out;
    snapshot before;
    double step0 = stat(f->t, REGOPT_STAT_STEP), loss0 = stat(f->t, REGOPT_STAT_LOSS);
    snap(f, &before);
    TMUST(f->t, probe(f, &r, &out));
    same_as(f, &before, "after a probe");
    r.norm = REGOPT_FLAT_NORM_INF;
    r.adaptive = 1;
    TMUST(f->t, probe(f, &r, &out));
    same_as(f, &before, "after an adaptive L-inf probe");
    ck_assert(stat(f->t, REGOPT_STAT_STEP) == step0);
    ck_assert(stat(f->t, REGOPT_STAT_LOSS) == loss0);
    fx_free(f);
}
END_TEST

START_TEST(a_failing_callback_at_every_pass_changes_nothing)
{
    fx *f = fx_trained();
    regopt_flatness_request r = small_request();
    regopt_flatness out, mark;
    snapshot before;
    int n_fwd, n_bwd, i;
    snap(f, &before);
    f->h.forwards = f->h.backwards = 0;
    TMUST(f->t, probe(f, &r, &out));
    n_fwd = f->h.forwards;
    n_bwd = f->h.backwards;
    ck_assert_uint_eq(out.forward_calls, (uint64_t)n_fwd);
    ck_assert_uint_eq(out.backward_calls, (uint64_t)n_bwd);
    for (i = 1; i <= n_fwd + n_bwd; i++) {
        int fwd = i <= n_fwd;
        regopt_status st;
        memset(&mark, 0x5a, sizeof mark);
        mark.size = sizeof mark;
        out = mark;
        f->h.forwards = f->h.backwards = 0;
        f->h.fail_forward = fwd ? i : 0;
        f->h.fail_backward = fwd ? 0 : i - n_fwd;
        st = regopt_trainer_flatness(f->t, &f->b, 1, &r, &out);
        ck_assert_int_eq(st, fwd ? REGOPT_ERR_FORWARD : REGOPT_ERR_BACKWARD);
        ck_assert_mem_eq(&out, &mark, sizeof out);
        same_as(f, &before, fwd ? "a failed forward" : "a failed backward");
    }
    f->h.fail_forward = f->h.fail_backward = 0;
    f->h.nan_output = 3; /* a NaN loss at a perturbed point */
    f->h.forwards = 0;
    ck_assert_int_eq(probe(f, &r, &out), REGOPT_ERR_NONFINITE_LOSS);
    same_as(f, &before, "a NaN loss");
    f->h.nan_output = 0;
    TMUST(f->t, regopt_trainer_step(f->t, &f->b, 1)); /* the trainer still trains */
    fx_free(f);
}
END_TEST

/* A forward that longjmps out of the library at call jump_at (1-based). */
static jmp_buf *jump_buf;
static int jump_at;

static int jump_forward(const regopt_pass *p, void *user)
{
    th_host *h = user;
    if (h->forwards + 1 == jump_at)
        longjmp(*jump_buf, 1);
    return th_forward(p, user);
}

START_TEST(an_abandoned_probe_is_recovered)
{
    regopt_flatness_request r = small_request();
    regopt_flatness out;
    snapshot before;
    jmp_buf jb;
    fx *f;
    int at;
    fx_forward = jump_forward;
    f = fx_new(NULL, 0);
    fx_forward = NULL;
    TMUST(f->t, regopt_trainer_step(f->t, &f->b, 1));
    snap(f, &before);
    jump_buf = &jb;
    for (at = 2; at <= 12; at += 5) { /* at w, then at perturbed points */
        f->h.forwards = 0;
        jump_at = at;
        if (setjmp(jb) == 0) {
            (void)probe(f, &r, &out);
            ck_abort_msg("the forward did not jump");
        }
        jump_at = 0;
        if (at > 2) /* abandoned at a perturbed point: w is not w0 yet */
            ck_assert(memcmp(f->h.w, before.w, sizeof before.w) != 0);
        ck_assert_int_eq(probe(f, &r, &out), REGOPT_ERR_STATE);
        MUST(regopt_trainer_recover(f->t));
        same_as(f, &before, "recovered from an abandoned probe");
    }
    TMUST(f->t, probe(f, &r, &out));
    fx_free(f);
}
END_TEST

/* ---- bad requests -------------------------------------------------------- */

static void refused(fx *f, const regopt_flatness_request *r, regopt_status want,
                    const char *field)
{
    regopt_flatness out;
    regopt_status st = probe(f, r, &out);
    ck_assert_msg(st == want, "%s: %s, want %s", field, regopt_status_string(st),
                  regopt_status_string(want));
    ck_assert_msg(strstr(regopt_trainer_message(f->t), field) != NULL, "message \"%s\" does "
                  "not name %s", regopt_trainer_message(f->t), field);
}

START_TEST(bad_requests_are_refused)
{
    fx *f = fx_trained();
    regopt_flatness_request r;
    regopt_flatness out;
    snapshot before;
    snap(f, &before);
    r = small_request(); r.rho = 0.0; refused(f, &r, REGOPT_ERR_OUT_OF_RANGE, "rho");
    r = small_request(); r.rho = -1.0; refused(f, &r, REGOPT_ERR_OUT_OF_RANGE, "rho");
    r = small_request(); r.rho = NAN; refused(f, &r, REGOPT_ERR_OUT_OF_RANGE, "rho");
    r = small_request(); r.sigma = INFINITY; refused(f, &r, REGOPT_ERR_OUT_OF_RANGE, "sigma");
    r = small_request(); r.worst_iterations = 0;
    refused(f, &r, REGOPT_ERR_OUT_OF_RANGE, "worst_iterations");
    r = small_request(); r.average_samples = 0;
    refused(f, &r, REGOPT_ERR_OUT_OF_RANGE, "average_samples");
    r = small_request(); r.eigen_iterations = 0;
    refused(f, &r, REGOPT_ERR_OUT_OF_RANGE, "eigen_iterations");
    r = small_request(); r.trace_samples = 100001;
    refused(f, &r, REGOPT_ERR_OUT_OF_RANGE, "trace_samples");
    r = small_request(); r.eigen_tolerance = NAN;
    refused(f, &r, REGOPT_ERR_OUT_OF_RANGE, "eigen_tolerance");
    r = small_request(); r.trace_tolerance = -1e-3;
    refused(f, &r, REGOPT_ERR_OUT_OF_RANGE, "trace_tolerance");
    r = small_request(); r.fd_scale = 0.0; refused(f, &r, REGOPT_ERR_OUT_OF_RANGE, "fd_scale");
    r = small_request(); r.measures = 0; refused(f, &r, REGOPT_ERR_INVALID_ARGUMENT, "measures");
    r = small_request(); r.measures = 0x10; refused(f, &r, REGOPT_ERR_INVALID_ARGUMENT, "measures");
    r = small_request(); r.norm = 1; refused(f, &r, REGOPT_ERR_INVALID_ARGUMENT, "norm");
    r = small_request(); r.adaptive = 2; refused(f, &r, REGOPT_ERR_INVALID_ARGUMENT, "adaptive");
    r = small_request(); r.size = 8; refused(f, &r, REGOPT_ERR_INVALID_ARGUMENT, "size");
    /* a value of a measure not asked for is not checked */
    r = small_request(); r.measures = REGOPT_FLAT_TRACE; r.rho = 0.0;
    TMUST(f->t, probe(f, &r, &out));
    ck_assert_int_eq(regopt_trainer_flatness(f->t, &f->b, 1, NULL, &out),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_flatness(f->t, &f->b, 1, &r, NULL),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_flatness(NULL, &f->b, 1, &r, &out),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_flatness(f->t, &f->b, 0, &r, &out),
                     REGOPT_ERR_INVALID_ARGUMENT);
    out.size = 8;
    ck_assert_int_eq(regopt_trainer_flatness(f->t, &f->b, 1, &r, &out),
                     REGOPT_ERR_INVALID_ARGUMENT);
    same_as(f, &before, "refused requests");
    ck_assert_uint_eq(regopt_sizeof_flatness_request(), sizeof(regopt_flatness_request));
    ck_assert_uint_eq(regopt_sizeof_flatness(), sizeof(regopt_flatness));
    fx_free(f);
}
END_TEST

/* ---- passes: flags and the documented counts ----------------------------- */

START_TEST(pass_flags_and_counts)
{
    fx *f = fx_new(NULL, 0);
    regopt_batch two[2];
    regopt_flatness_request r = request(REGOPT_FLAT_AVERAGE_CASE);
    regopt_flatness out;
    int i;
    two[0] = f->b;
    two[1] = f->b;
    r.average_samples = 3;
    out.size = sizeof out;
    f->h.ncalls = 0;
    TMUST(f->t, regopt_trainer_flatness(f->t, two, 2, &r, &out));
    ck_assert_uint_eq(out.forward_calls, 2 * (1 + 3)); /* per batch: 1 + n F */
    ck_assert_uint_eq(out.backward_calls, 0);
    for (i = 0; i < f->h.ncalls; i++) {
        uint32_t want = REGOPT_PASS_PROBE | REGOPT_PASS_NO_GRAD |
                        (i >= 2 ? REGOPT_PASS_PERTURBED_WEIGHTS : 0u);
        ck_assert_uint_eq(f->h.calls[i].flags, want);
        ck_assert_uint_eq(f->h.calls[i].micro_batch, (size_t)(i % 2));
    }
    r = request(REGOPT_FLAT_EIGENVALUE); /* 1 F + 2 (F+B) per iteration */
    r.eigen_iterations = 4;
    r.eigen_tolerance = 0.0;
    TMUST(f->t, regopt_trainer_flatness(f->t, two, 2, &r, &out));
    ck_assert_uint_eq(out.eigen_iterations, 4);
    ck_assert_uint_eq(out.forward_calls, 2 * (1 + 2 * 4));
    ck_assert_uint_eq(out.backward_calls, 2 * 2 * 4);
    r = request(REGOPT_FLAT_TRACE); /* 1 F + 2 (F+B) per sample */
    r.trace_samples = 5;
    r.trace_tolerance = 0.0;
    f->h.ncalls = 0;
    TMUST(f->t, regopt_trainer_flatness(f->t, two, 2, &r, &out));
    ck_assert_uint_eq(out.forward_calls, 2 * (1 + 2 * 5));
    ck_assert_uint_eq(out.backward_calls, 2 * 2 * 5);
    for (i = 2; i < f->h.ncalls; i++)
        ck_assert_uint_eq(f->h.calls[i].flags,
                          REGOPT_PASS_PROBE | REGOPT_PASS_PERTURBED_WEIGHTS);
    r = request(REGOPT_FLAT_WORST_CASE); /* 1 F, 1 F+B, K F + (K-1) B, + halvings */
    r.worst_iterations = 10;
    TMUST(f->t, regopt_trainer_flatness(f->t, two, 2, &r, &out));
    ck_assert_uint_eq(out.forward_calls, 2 * (1 + 1 + 10 + out.worst_halvings));
    ck_assert_uint_eq(out.backward_calls, 2 * (1 + 9 + out.worst_halvings));
    fx_free(f);
}
END_TEST

/* ---- the same bits on every thread count --------------------------------- */

START_TEST(same_bits_on_every_thread_count)
{
    fx *f = fx_new(NULL, 1);
    regopt_flatness_request r = small_request();
    regopt_flatness one, three;
    r.worst_iterations = 5;
    r.rho = 0.5;
    TMUST(f->t, probe(f, &r, &one));
    MUST(regopt_trainer_set_int(f->t, REGOPT_TRAINER_THREADS, 3));
    TMUST(f->t, probe(f, &r, &three));
    ck_assert_mem_eq(&one, &three, sizeof one);
    ck_assert_msg(one.worst_case > 0.0 && one.trace > 0.0, "worst %g, trace %g", one.worst_case,
                  one.trace);
    r.adaptive = 1;
    TMUST(f->t, probe(f, &r, &three));
    MUST(regopt_trainer_set_int(f->t, REGOPT_TRAINER_THREADS, 1));
    TMUST(f->t, probe(f, &r, &one));
    ck_assert_mem_eq(&one, &three, sizeof one);
    fx_free(f);
}
END_TEST

Suite *suite_flatness(void)
{
    Suite *s = suite_create("flatness");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, eigenvalue_and_trace_of_a_diagonal_hessian);
    tcase_add_test(tc, eigenvalue_and_trace_of_a_full_hessian);
    tcase_add_test(tc, worst_case_matches_the_closed_forms);
    tcase_add_test(tc, average_case_is_near_its_expectation);
    tcase_add_test(tc, nothing_changes);
    tcase_add_test(tc, a_failing_callback_at_every_pass_changes_nothing);
    tcase_add_test(tc, an_abandoned_probe_is_recovered);
    tcase_add_test(tc, bad_requests_are_refused);
    tcase_add_test(tc, pass_flags_and_counts);
    tcase_add_test(tc, same_bits_on_every_thread_count);
    suite_add_tcase(s, tc);
    return s;
}
