/* check_backend_checkpoint.c — checkpoints of a trainer whose parameter
 * memory is a backend's (REGOPT_VOP_READ / REGOPT_VOP_WRITE), with the
 * registered buffers mapped PROT_NONE (backend_rig.h). The expectations
 * come from the library without a backend: the same run saves the same
 * bytes; either checkpoint loads into the other kind of trainer and both
 * go on with the same bits; the frozen tensor is saved and restored; a
 * READ failing during a save fails it by name and changes nothing; a WRITE
 * failing during a load fails it by name, and loading again recovers. */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */
#include "backend_rig.h"

#include <stdio.h>
#include <unistd.h>

#define STEPS 4 /* before the save */
#define AFTER 3 /* after it */
#define FLAGS (REGOPT_CHECKPOINT_PARAMS | REGOPT_CHECKPOINT_OPTIONS)

enum { M_SAM = 1, M_MESA = 2, M_EMA = 4, M_VASSO = 8, M_LOOK = 16 };

typedef struct method {
    const char *name;
    int bits;
    regopt_optimizer_kind kind;
} method;

static const method methods[] = {
    {"Adam", 0, REGOPT_ADAM},
    {"SAM + MESA, AdamW with AMSGrad", M_SAM | M_MESA, REGOPT_ADAMW},
    {"EMA average, SGD", M_EMA, REGOPT_SGD},
    {"MESA + EMA of its decay (shared without a backend)", M_MESA | M_EMA, REGOPT_ADAM},
    {"VaSSO", M_SAM | M_VASSO, REGOPT_ADAM},
    {"LookSAM", M_SAM | M_LOOK, REGOPT_RADAM},
};
#define N_METHODS (sizeof methods / sizeof methods[0])

static void open_run(bk_run *r, int backend, const method *m)
{
    bk_open(r, backend, m->kind);
    if (m->bits & M_SAM) {
        regopt_regularizer *s = tu_add(r->t, REGOPT_REG_SAM);
        MUST(regopt_regularizer_set_double(s, REGOPT_SAM_RHO, 0.1));
        if (m->bits & M_VASSO)
            MUST(regopt_regularizer_set_int(s, REGOPT_SAM_DIRECTION,
                                            REGOPT_SAM_DIRECTION_VASSO));
        if (m->bits & M_LOOK) {
            MUST(regopt_regularizer_set_int(s, REGOPT_SAM_LOOKSAM, 1));
            MUST(regopt_regularizer_set_int(s, REGOPT_SAM_EVERY, 2));
        }
    }
    if (m->bits & M_MESA) {
        regopt_regularizer *b = tu_add(r->t, REGOPT_REG_BREGMAN);
        MUST(regopt_regularizer_set_double(b, REGOPT_BREGMAN_BETA, 0.8));
        MUST(regopt_regularizer_set_double(b, REGOPT_BREGMAN_BETA_LATE, 0.8));
        MUST(regopt_regularizer_set_int(b, REGOPT_BREGMAN_DIVERGENCE, REGOPT_BREGMAN_KL_TEACHER));
        MUST(regopt_regularizer_set_double(b, REGOPT_BREGMAN_TAU, 2.0));
        MUST(regopt_regularizer_set_int(b, REGOPT_BREGMAN_START_STEP, 1));
    }
    if (m->bits & M_EMA) {
        regopt_regularizer *v = tu_add(r->t, REGOPT_REG_AVERAGE);
        MUST(regopt_regularizer_set_double(v, REGOPT_AVERAGE_DECAY, 0.8));
    }
}

/* The host moves the frozen offset (its own business): a checkpoint with
 * the tensors must carry it. */
static void move_frozen(bk_run *r)
{
    size_t i;
    for (i = 0; i < bk_count[4]; i++)
        r->h.w[4][i] = 0.25f * (float)i - 0.3f;
}

/* A checkpoint in a malloc'd buffer; its size in *size. */
static unsigned char *save(bk_run *r, size_t *size)
{
    unsigned char *buf;
    size_t written = 0;
    TMUST(r->t, regopt_trainer_checkpoint_size(r->t, FLAGS, size));
    buf = malloc(*size);
    ck_assert_ptr_nonnull(buf);
    TMUST(r->t, regopt_trainer_save_buffer(r->t, FLAGS, buf, *size, &written));
    ck_assert_uint_eq(written, *size);
    return buf;
}

static void same_losses(const double *a, const double *b, const char *what)
{
    int i;
    for (i = 0; i < AFTER; i++)
        ck_assert_msg(memcmp(&a[i], &b[i], sizeof a[i]) == 0, "%s: loss %d is %.17g, %.17g "
                      "expected", what, i, b[i], a[i]);
}

static void close_run(bk_run *r)
{
    bk_close(r);
    free(r);
}

/* The same run with and without a backend saves the same bytes, and a size
 * query asks the backend nothing; each checkpoint loads into a fresh
 * trainer of the other kind, and all four go on with the same bits. */
START_TEST(same_bytes_either_way)
{
    const method *m = &methods[_i];
    bk_run *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b);
    bk_run *c = calloc(1, sizeof *c), *d = calloc(1, sizeof *d);
    double la[AFTER], lb[AFTER], lc[AFTER], ld[AFTER];
    unsigned char *ba, *bb;
    size_t sa = 0, sb = 0, i;
    long reads;
    open_run(a, 0, m);
    open_run(b, 1, m);
    bk_train(a, STEPS, NULL);
    bk_train(b, STEPS, NULL);
    move_frozen(a);
    move_frozen(b);
    reads = b->s.calls[REGOPT_VOP_READ];
    TMUST(b->t, regopt_trainer_checkpoint_size(b->t, FLAGS, &sb));
    ck_assert_int_eq(b->s.calls[REGOPT_VOP_READ], reads);
    ba = save(a, &sa);
    bb = save(b, &sb);
    ck_assert_uint_eq(sa, sb);
    for (i = 0; i < sa; i++)
        ck_assert_msg(ba[i] == bb[i], "%s: byte %zu of %zu differs", m->name, i, sa);
    ck_assert_int_gt(b->s.calls[REGOPT_VOP_READ], reads);
    ck_assert_int_eq(b->s.calls[REGOPT_VOP_WRITE], 0);

    open_run(c, 0, m); /* built-in, the backend's checkpoint */
    open_run(d, 1, m); /* backend, the built-in checkpoint */
    TMUST(c->t, regopt_trainer_load_buffer(c->t, FLAGS, bb, sb));
    TMUST(d->t, regopt_trainer_load_buffer(d->t, FLAGS, ba, sa));
    ck_assert_int_gt(d->s.calls[REGOPT_VOP_WRITE], 0);
    bk_same_weights(a, c, "loaded, built-in");
    bk_same_weights(a, d, "loaded, backend");
    ck_assert_float_eq(d->h.w[4][3], 0.25f * 3.0f - 0.3f); /* the frozen tensor, restored */
    bk_train(a, AFTER, la);
    bk_train(b, AFTER, lb);
    bk_train(c, AFTER, lc);
    bk_train(d, AFTER, ld);
    same_losses(la, lb, "backend run");
    same_losses(la, lc, "built-in from the backend's checkpoint");
    same_losses(la, ld, "backend from the built-in checkpoint");
    bk_same_weights(a, b, m->name);
    bk_same_weights(a, c, m->name);
    bk_same_weights(a, d, m->name);
    free(ba);
    free(bb);
    close_run(a);
    close_run(b);
    close_run(c);
    close_run(d);
    tu_free_regs();
}
END_TEST

/* A READ failing anywhere in a save (the first pass, which sums the CRCs,
 * or the second, which writes) fails it with REGOPT_ERR_BACKEND naming the
 * operation; the trainer is untouched: the next save gives the same bytes
 * and training goes on as without the failure. Files too. */
START_TEST(read_failure_fails_the_save)
{
    const method *m = &methods[1];
    bk_run *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b);
    unsigned char *ref, *again, *buf;
    size_t size = 0, size2 = 0, written = 0;
    long per_pass, at[3], before;
    double la[AFTER], lb[AFTER];
    char path[64];
    int j;
    open_run(a, 0, m);
    open_run(b, 1, m);
    bk_train(a, STEPS, NULL);
    bk_train(b, STEPS, NULL);
    before = b->s.calls[REGOPT_VOP_READ];
    ref = save(b, &size);
    per_pass = (b->s.calls[REGOPT_VOP_READ] - before) / 2;
    ck_assert_int_gt(per_pass, 10);
    at[0] = 1;
    at[1] = per_pass - 1;
    at[2] = per_pass + 7;
    buf = malloc(size);
    ck_assert_ptr_nonnull(buf);
    for (j = 0; j < 3; j++) {
        b->s.fail_code = REGOPT_VOP_READ;
        b->s.fail_at = b->s.calls[REGOPT_VOP_READ] + at[j];
        ck_assert_int_eq(regopt_trainer_save_buffer(b->t, FLAGS, buf, size, &written),
                         REGOPT_ERR_BACKEND);
        ck_assert_msg(strstr(regopt_trainer_message(b->t), "REGOPT_VOP_READ") != NULL, "%s",
                      regopt_trainer_message(b->t));
    }
    b->s.fail_code = 0;
    again = save(b, &size2);
    ck_assert_uint_eq(size2, size);
    ck_assert(memcmp(ref, again, size) == 0);
    /* a file round trip on the backend trainer itself */
    snprintf(path, sizeof path, "/tmp/regopt_bk_ck_%ld.bin", (long)getpid());
    TMUST(b->t, regopt_trainer_save_file(b->t, FLAGS, path));
    TMUST(b->t, regopt_trainer_load_file(b->t, FLAGS, path));
    unlink(path);
    bk_train(a, AFTER, la);
    bk_train(b, AFTER, lb);
    same_losses(la, lb, "after the failed saves");
    bk_same_weights(a, b, "after the failed saves");
    free(ref);
    free(again);
    free(buf);
    close_run(a);
    close_run(b);
    tu_free_regs();
}
END_TEST

/* A damaged checkpoint is refused before any WRITE; a WRITE failing after
 * the validation (in a regularizer's state, in the moments, in the
 * tensors) fails the load with REGOPT_ERR_BACKEND naming it; loading again
 * then restores the whole checkpoint and training goes on with the bits
 * of the run that saved it. */
START_TEST(write_failure_fails_the_load)
{
    const method *m = &methods[1];
    bk_run *a = calloc(1, sizeof *a), *d = calloc(1, sizeof *d);
    unsigned char *ba;
    size_t sa = 0;
    long per_load, at[3], before;
    double la[AFTER], ld[AFTER];
    int j;
    open_run(a, 0, m);
    bk_train(a, STEPS, NULL);
    move_frozen(a);
    ba = save(a, &sa);
    open_run(d, 1, m);
    bk_train(d, 1, NULL);
    ba[sa - 5] ^= 0x40; /* the last section's CRC no longer holds */
    ck_assert_int_eq(regopt_trainer_load_buffer(d->t, FLAGS, ba, sa), REGOPT_ERR_CORRUPT);
    ck_assert_int_eq(d->s.calls[REGOPT_VOP_WRITE], 0);
    ba[sa - 5] ^= 0x40;
    before = d->s.calls[REGOPT_VOP_WRITE];
    TMUST(d->t, regopt_trainer_load_buffer(d->t, FLAGS, ba, sa));
    per_load = d->s.calls[REGOPT_VOP_WRITE] - before;
    ck_assert_int_gt(per_load, 10);
    at[0] = 1;
    at[1] = per_load / 2;
    at[2] = per_load;
    for (j = 0; j < 3; j++) {
        d->s.fail_code = REGOPT_VOP_WRITE;
        d->s.fail_at = d->s.calls[REGOPT_VOP_WRITE] + at[j];
        ck_assert_int_eq(regopt_trainer_load_buffer(d->t, FLAGS, ba, sa), REGOPT_ERR_BACKEND);
        ck_assert_msg(strstr(regopt_trainer_message(d->t), "REGOPT_VOP_WRITE") != NULL, "%s",
                      regopt_trainer_message(d->t));
    }
    d->s.fail_code = 0;
    TMUST(d->t, regopt_trainer_load_buffer(d->t, FLAGS, ba, sa));
    bk_same_weights(a, d, "loaded again");
    bk_train(a, AFTER, la);
    bk_train(d, AFTER, ld);
    same_losses(la, ld, "loaded again after the failures");
    bk_same_weights(a, d, "loaded again after the failures");
    free(ba);
    close_run(a);
    close_run(d);
    tu_free_regs();
}
END_TEST

Suite *suite_backend_checkpoint(void)
{
    Suite *s = suite_create("backend_checkpoint");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, same_bytes_either_way, 0, (int)N_METHODS);
    tcase_add_test(tc, read_failure_fails_the_save);
    tcase_add_test(tc, write_failure_fails_the_load);
    suite_add_tcase(s, tc);
    return s;
}
