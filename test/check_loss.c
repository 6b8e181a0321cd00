/* check_loss.c — the task losses, against hand-computed values and finite
 * differences, through the public API. The host here is the identity: its
 * parameters ARE the outputs, so d(loss)/d(outputs) is what backward sees. */
#include "tests.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAXR 6
#define MAXK 5

typedef struct ident {
    size_t rows, k;
    float z[MAXR * MAXK], gz[MAXR * MAXK];
    float seen[MAXR * MAXK]; /* d_outputs of the last backward */
} ident;

static int ident_forward(const regopt_pass *p, void *user)
{
    ident *h = user;
    memcpy(p->outputs, h->z, p->rows * h->k * sizeof(float));
    return 0;
}

static int ident_backward(const regopt_pass *p, void *user)
{
    ident *h = user;
    size_t i;
    memcpy(h->seen, p->d_outputs, p->rows * h->k * sizeof(float));
    for (i = 0; i < p->rows * h->k; i++)
        h->gz[i] += p->d_outputs[i];
    return 0;
}

typedef struct fixture {
    ident h;
    regopt_model *m;
    regopt_optimizer *o;
    regopt_trainer *t;
} fixture;

static void fx_open(fixture *f, size_t rows, size_t k, int loss_kind)
{
    size_t i;
    memset(&f->h, 0, sizeof f->h);
    f->h.rows = rows;
    f->h.k = k;
    for (i = 0; i < rows * k; i++) /* spread-out values, several signs */
        f->h.z[i] = (float)(1.3 * sin(2.1 * (double)i + 0.4) + 0.2 * (double)(i % 3));
    f->m = regopt_model_create(NULL, NULL);
    ck_assert_int_eq(regopt_model_add_param(f->m, "z", f->h.z, f->h.gz, rows * k,
                                            REGOPT_DTYPE_FLOAT32, 0), REGOPT_OK);
    ck_assert_int_eq(regopt_model_set_output_width(f->m, k), REGOPT_OK);
    ck_assert_int_eq(regopt_model_set_callbacks(f->m, ident_forward, ident_backward, &f->h,
                                                NULL), REGOPT_OK);
    f->o = regopt_optimizer_create(REGOPT_SGD, NULL, NULL);
    f->t = regopt_trainer_create(f->m, f->o, NULL);
    ck_assert_ptr_nonnull(f->t);
    ck_assert_int_eq(regopt_trainer_set_int(f->t, REGOPT_TRAINER_LOSS, loss_kind), REGOPT_OK);
}

static void fx_close(fixture *f)
{
    regopt_trainer_free(f->t);
    regopt_optimizer_free(f->o);
    regopt_model_free(f->m);
}

static double loss_at(fixture *f, const regopt_batch *b)
{
    double l = NAN;
    ck_assert_int_eq(regopt_trainer_evaluate(f->t, b, &l, NULL), REGOPT_OK);
    return l;
}

/* The gradient the library hands to backward in a step, with the
 * parameters put back afterwards. */
static void grad_of(fixture *f, const regopt_batch *b, float *dz)
{
    float keep[MAXR * MAXK];
    memcpy(keep, f->h.z, sizeof keep);
    ck_assert_int_eq(regopt_trainer_step(f->t, b, 1), REGOPT_OK);
    memcpy(dz, f->h.seen, f->h.rows * f->h.k * sizeof(float));
    memcpy(f->h.z, keep, sizeof keep);
}

/* Central differences of the evaluated loss against the step's gradient. */
static void check_fd(fixture *f, const regopt_batch *b)
{
    float dz[MAXR * MAXK];
    size_t i;
    grad_of(f, b, dz);
    for (i = 0; i < f->h.rows * f->h.k; i++) {
        float z0 = f->h.z[i], zp = z0 + 1e-2f, zm = z0 - 1e-2f;
        double lp, lm, fd;
        f->h.z[i] = zp;
        lp = loss_at(f, b);
        f->h.z[i] = zm;
        lm = loss_at(f, b);
        f->h.z[i] = z0;
        fd = (lp - lm) / ((double)zp - (double)zm);
        ck_assert_msg(fabs(fd - dz[i]) <= 2e-4 + 1e-3 * fabs(fd),
                      "element %zu: finite difference %.8g, gradient %.8g", i, fd,
                      (double)dz[i]);
    }
}

START_TEST(cross_entropy_by_hand)
{
    fixture f;
    regopt_batch b;
    int32_t y = 2;
    float dz[3];
    fx_open(&f, 1, 3, REGOPT_LOSS_SOFTMAX_CE);
    f.h.z[0] = 1.0f;
    f.h.z[1] = 2.0f;
    f.h.z[2] = 3.0f;
    regopt_batch_init(&b);
    b.rows = 1;
    b.labels = &y;
    /* log(e^1 + e^2 + e^3) - 3 = log(1 + e^-1 + e^-2) */
    ck_assert_double_eq_tol(loss_at(&f, &b), log(1.0 + exp(-1.0) + exp(-2.0)), 1e-7);
    grad_of(&f, &b, dz);
    ck_assert_double_eq_tol(dz[0], exp(1.0) / (exp(1.0) + exp(2.0) + exp(3.0)), 1e-7);
    ck_assert_double_eq_tol(dz[1], exp(2.0) / (exp(1.0) + exp(2.0) + exp(3.0)), 1e-7);
    ck_assert_double_eq_tol(dz[2], exp(3.0) / (exp(1.0) + exp(2.0) + exp(3.0)) - 1.0, 1e-7);
    /* label smoothing 0.1 (torch): q = 0.9 onehot + 0.1/3; loss = lse - 0.9*3 - 0.1*mean(z) */
    ck_assert_int_eq(regopt_trainer_set_double(f.t, REGOPT_TRAINER_LABEL_SMOOTHING, 0.1),
                     REGOPT_OK);
    ck_assert_double_eq_tol(loss_at(&f, &b), 3.0 + log(1.0 + exp(-1.0) + exp(-2.0)) - 2.7 - 0.2,
                            1e-7);
    fx_close(&f);
}
END_TEST

START_TEST(cross_entropy_is_stable_for_huge_logits)
{
    fixture f;
    regopt_batch b;
    int32_t y = 0;
    fx_open(&f, 1, 3, REGOPT_LOSS_SOFTMAX_CE);
    f.h.z[0] = 1e4f;
    f.h.z[1] = 0.0f;
    f.h.z[2] = -1e4f;
    regopt_batch_init(&b);
    b.rows = 1;
    b.labels = &y;
    ck_assert_double_eq_tol(loss_at(&f, &b), 0.0, 1e-12);
    y = 2;
    ck_assert_double_eq_tol(loss_at(&f, &b), 2e4, 1e-6);
    fx_close(&f);
}
END_TEST

START_TEST(cross_entropy_finite_differences)
{
    fixture f;
    regopt_batch b;
    int32_t y[4] = {0, 4, 2, 1};
    fx_open(&f, 4, 5, REGOPT_LOSS_SOFTMAX_CE);
    regopt_batch_init(&b);
    b.rows = 4;
    b.labels = y;
    check_fd(&f, &b);
    ck_assert_int_eq(regopt_trainer_set_double(f.t, REGOPT_TRAINER_LABEL_SMOOTHING, 0.2),
                     REGOPT_OK);
    check_fd(&f, &b);
    fx_close(&f);
}
END_TEST

START_TEST(masked_and_weighted_finite_differences)
{
    fixture f;
    regopt_batch b;
    int32_t y[5] = {1, -100, 3, 2, 999}; /* padding rows may hold anything */
    uint8_t mask[5] = {1, 0, 7, 1, 0};   /* any non-zero keeps */
    float w[5] = {0.5f, 3.0f, 2.0f, 0.0f, 1.0f};
    fx_open(&f, 5, 4, REGOPT_LOSS_SOFTMAX_CE);
    regopt_batch_init(&b);
    b.rows = 5;
    b.labels = y;
    b.mask = mask;
    b.weights = w;
    check_fd(&f, &b);
    fx_close(&f);
}
END_TEST

START_TEST(padding_rows_contribute_nothing)
{
    fixture f;
    regopt_batch b, kept;
    int32_t y[4] = {1, -7, 2, 12345};
    uint8_t mask[4] = {1, 0, 1, 0};
    float dz[4 * 3];
    double l_all, l_kept;
    int32_t yk[2] = {1, 2};
    size_t j;
    fx_open(&f, 4, 3, REGOPT_LOSS_SOFTMAX_CE);
    /* padding outputs may even be NaN: they must not leak into anything */
    f.h.z[3] = NAN;
    f.h.z[10] = INFINITY;
    regopt_batch_init(&b);
    b.rows = 4;
    b.labels = y;
    b.mask = mask;
    l_all = loss_at(&f, &b);
    grad_of(&f, &b, dz);
    for (j = 0; j < 3; j++) {
        ck_assert_float_eq(dz[3 + j], 0.0f);
        ck_assert_float_eq(dz[9 + j], 0.0f);
    }
    /* the same loss as a batch of only the kept rows */
    memcpy(f.h.z + 3, f.h.z + 6, 3 * sizeof(float));
    regopt_batch_init(&kept);
    kept.rows = 2;
    kept.labels = yk;
    l_kept = loss_at(&f, &kept);
    ck_assert_double_eq_tol(l_all, l_kept, 1e-12);
    fx_close(&f);
}
END_TEST

START_TEST(weights_give_a_weighted_mean)
{
    fixture f;
    regopt_batch b, one;
    int32_t y[3] = {2, 0, 1};
    float w[3] = {1.0f, 3.0f, 0.5f};
    double li[3], l;
    float z[3 * 4];
    int i;
    fx_open(&f, 3, 4, REGOPT_LOSS_SOFTMAX_CE);
    memcpy(z, f.h.z, sizeof z);
    for (i = 0; i < 3; i++) { /* each row's loss alone */
        memcpy(f.h.z, z + 4 * i, 4 * sizeof(float));
        regopt_batch_init(&one);
        one.rows = 1;
        one.labels = y + i;
        li[i] = loss_at(&f, &one);
    }
    memcpy(f.h.z, z, sizeof z);
    regopt_batch_init(&b);
    b.rows = 3;
    b.labels = y;
    b.weights = w;
    l = loss_at(&f, &b);
    ck_assert_double_eq_tol(l, (1.0 * li[0] + 3.0 * li[1] + 0.5 * li[2]) / 4.5, 1e-9);
    fx_close(&f);
}
END_TEST

START_TEST(mse_by_hand_and_finite_differences)
{
    fixture f;
    regopt_batch b;
    float t[2] = {0.0f, 4.0f}, dz[2];
    float targets[3 * 4];
    size_t i;
    fx_open(&f, 1, 2, REGOPT_LOSS_MSE);
    f.h.z[0] = 1.0f;
    f.h.z[1] = 2.0f;
    regopt_batch_init(&b);
    b.rows = 1;
    b.targets = t;
    /* ((1-0)^2 + (2-4)^2) / 2, gradient 2 (z - t) / 2 */
    ck_assert_double_eq_tol(loss_at(&f, &b), 2.5, 1e-12);
    grad_of(&f, &b, dz);
    ck_assert_float_eq_tol(dz[0], 1.0f, 1e-7f);
    ck_assert_float_eq_tol(dz[1], -2.0f, 1e-7f);
    fx_close(&f);

    fx_open(&f, 3, 4, REGOPT_LOSS_MSE);
    for (i = 0; i < 12; i++)
        targets[i] = (float)i * 0.25f - 1.0f;
    regopt_batch_init(&b);
    b.rows = 3;
    b.targets = targets;
    check_fd(&f, &b);
    fx_close(&f);
}
END_TEST

/* A user loss: l_i = sum_k log(1 + exp(z_k)) - z_{y_i}, a smooth function
 * the library knows nothing about. */
static int softplus_loss(const regopt_batch *b, const float *z, size_t rows, size_t k,
                         float *row_loss, float *dz, void *user)
{
    size_t i, j;
    int *calls = user;
    (*calls)++;
    for (i = 0; i < rows; i++) {
        double l = -z[i * k + (size_t)b->labels[i]];
        for (j = 0; j < k; j++) {
            double e = exp(z[i * k + j]);
            l += log1p(e);
            dz[i * k + j] = (float)(e / (1.0 + e) - (j == (size_t)b->labels[i] ? 1.0 : 0.0));
        }
        row_loss[i] = (float)l;
    }
    return 0;
}

static int failing_loss(const regopt_batch *b, const float *z, size_t rows, size_t k,
                        float *row_loss, float *dz, void *user)
{
    (void)b; (void)z; (void)rows; (void)k; (void)row_loss; (void)dz; (void)user;
    return 5;
}

START_TEST(user_loss_callback)
{
    fixture f;
    regopt_batch b;
    int32_t y[3] = {0, 2, 1};
    float w[3] = {2.0f, 1.0f, 1.0f};
    int calls = 0;
    double l, expect = 0.0;
    size_t i, j;
    fx_open(&f, 3, 3, REGOPT_LOSS_SOFTMAX_CE);
    ck_assert_int_eq(regopt_trainer_set_loss_callback(f.t, softplus_loss, &calls, NULL),
                     REGOPT_OK);
    regopt_batch_init(&b);
    b.rows = 3;
    b.labels = y;
    b.weights = w;
    for (i = 0; i < 3; i++) {
        double li = -f.h.z[i * 3 + (size_t)y[i]];
        for (j = 0; j < 3; j++)
            li += log1p(exp(f.h.z[i * 3 + j]));
        expect += w[i] * li / 4.0;
    }
    l = loss_at(&f, &b);
    ck_assert_double_eq_tol(l, expect, 1e-6);
    ck_assert_int_gt(calls, 0);
    check_fd(&f, &b);
    /* a failing user loss aborts the step and names itself */
    ck_assert_int_eq(regopt_trainer_set_loss_callback(f.t, failing_loss, NULL, NULL),
                     REGOPT_OK);
    ck_assert_int_eq(regopt_trainer_step(f.t, &b, 1), REGOPT_ERR_LOSS_CALLBACK);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(f.t), "returned 5"));
    /* NULL callback: back to cross-entropy */
    ck_assert_int_eq(regopt_trainer_set_loss_callback(f.t, NULL, NULL, NULL), REGOPT_OK);
    {
        int64_t kind = -1;
        ck_assert_int_eq(regopt_trainer_get_int(f.t, REGOPT_TRAINER_LOSS, &kind), REGOPT_OK);
        ck_assert_int_eq(kind, REGOPT_LOSS_SOFTMAX_CE);
    }
    fx_close(&f);
}
END_TEST

START_TEST(bad_labels_and_targets)
{
    fixture f;
    regopt_batch b;
    int32_t y[2] = {0, 3};
    float w[2] = {1.0f, -1.0f};
    uint8_t none[2] = {0, 0};
    double l;
    fx_open(&f, 2, 3, REGOPT_LOSS_SOFTMAX_CE);
    regopt_batch_init(&b);
    b.rows = 2;
    ck_assert_int_eq(regopt_trainer_step(f.t, &b, 1), REGOPT_ERR_NULL_POINTER);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(f.t), "labels is NULL"));
    b.labels = y;
    ck_assert_int_eq(regopt_trainer_step(f.t, &b, 1), REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(f.t), "row 1: label 3"));
    ck_assert_int_eq(regopt_trainer_evaluate(f.t, &b, &l, NULL), REGOPT_ERR_INVALID_ARGUMENT);
    y[1] = -1;
    ck_assert_int_eq(regopt_trainer_step(f.t, &b, 1), REGOPT_ERR_INVALID_ARGUMENT);
    y[1] = 2;
    b.weights = w;
    ck_assert_int_eq(regopt_trainer_step(f.t, &b, 1), REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(f.t), "weight"));
    w[1] = NAN;
    ck_assert_int_eq(regopt_trainer_step(f.t, &b, 1), REGOPT_ERR_INVALID_ARGUMENT);
    b.weights = NULL;
    b.mask = none;
    ck_assert_int_eq(regopt_trainer_step(f.t, &b, 1), REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(f.t), "no weight"));
    /* MSE needs targets, and finite ones */
    b.mask = NULL;
    ck_assert_int_eq(regopt_trainer_set_int(f.t, REGOPT_TRAINER_LOSS, REGOPT_LOSS_MSE),
                     REGOPT_OK);
    ck_assert_int_eq(regopt_trainer_step(f.t, &b, 1), REGOPT_ERR_NULL_POINTER);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(f.t), "targets is NULL"));
    {
        float t[6] = {0, 0, 0, 0, INFINITY, 0};
        b.targets = t;
        ck_assert_int_eq(regopt_trainer_step(f.t, &b, 1), REGOPT_ERR_INVALID_ARGUMENT);
        ck_assert_ptr_nonnull(strstr(regopt_trainer_message(f.t), "row 1: target 1"));
    }
    /* evaluating without a loss needs no labels at all */
    b.labels = NULL;
    b.targets = NULL;
    {
        float out[6];
        ck_assert_int_eq(regopt_trainer_evaluate(f.t, &b, NULL, out), REGOPT_OK);
        ck_assert_float_eq(out[4], f.h.z[4]);
    }
    fx_close(&f);
}
END_TEST

Suite *suite_loss(void)
{
    Suite *s = suite_create("loss");
    TCase *tc = tcase_create("values");
    tcase_add_test(tc, cross_entropy_by_hand);
    tcase_add_test(tc, cross_entropy_is_stable_for_huge_logits);
    tcase_add_test(tc, weights_give_a_weighted_mean);
    tcase_add_test(tc, padding_rows_contribute_nothing);
    tcase_add_test(tc, mse_by_hand_and_finite_differences);
    suite_add_tcase(s, tc);
    tc = tcase_create("gradients");
    tcase_add_test(tc, cross_entropy_finite_differences);
    tcase_add_test(tc, masked_and_weighted_finite_differences);
    tcase_add_test(tc, user_loss_callback);
    suite_add_tcase(s, tc);
    tc = tcase_create("bad input");
    tcase_add_test(tc, bad_labels_and_targets);
    suite_add_tcase(s, tc);
    return s;
}
