/* check_term.c — user-defined loss-side terms (REGOPT_REG_TERM): R-Drop
 * written as a term against the built-in R-Drop, the rollback of a step
 * whose term fails or is not finite, and a term's state in checkpoints
 * (the bad inputs of regopt_regularizer_create_term and term.weight:
 * check_term_inputs.c; the rig: term_rig.h).
 * Expected values come from a second, independent path (the built-in
 * method, a twin run that never failed, the checkpoint bytes taken before
 * the call), never from the library's output for the call under test. */
#include "tests.h"

#include "term_rig.h"

/* ---- 1. R-Drop as a user term equals the built-in ---------------------- */

/* Same init, seed and batches; the user term's fresh copy is copy 0, the
 * seed of R-Drop's second pass (methods.md §7.3), so both runs minimise the
 * same objective with the same masks and differ by rounding only. A run
 * without any regularizer must be far from both, or the test could pass
 * with the term ignored. */
START_TEST(user_rdrop_matches_builtin)
{
    rig bi, us, plain;
    double d_user, d_plain, cons;
    int s;
    rig_open(&bi, R_RDROP, 1);
    rig_open(&us, R_USER_RDROP, 1);
    rig_open(&plain, R_NONE, 1);
    for (s = 0; s < 100; s++) {
        rig_step(&bi, s);
        rig_step(&us, s);
        rig_step(&plain, s);
    }
    d_user = param_diff(&us, &bi);
    d_plain = param_diff(&plain, &bi);
    ck_assert_msg(d_user <= 1e-6, "user term vs built-in: max rel diff %.3e", d_user);
    ck_assert_msg(d_plain > 1e-2, "no regularizer vs built-in: max rel diff only %.3e",
                  d_plain);
    /* the dropout copies still differ (R-Drop has pulled them to ~7e-4 by
       now), and the objectives agree */
    cons = rstat(bi.reg, REGOPT_STAT_RDROP_CONSISTENCY);
    ck_assert_msg(cons > 1e-4, "consistency %g: the two passes are (nearly) equal", cons);
    near(rstat(us.reg, REGOPT_STAT_TERM_VALUE),
         rstat(bi.reg, REGOPT_STAT_RDROP_LOSS2) + ALPHA * cons, 1e-5, 1e-3, "term value");
    near(stat(us.t, REGOPT_STAT_OBJECTIVE), stat(bi.t, REGOPT_STAT_OBJECTIVE), 1e-5, 1e-3,
         "objective");
    ck_assert_int_eq(stat_int(us.t, REGOPT_STAT_FORWARD_CALLS), 2 * MB);
    ck_assert_int_eq(stat_int(us.t, REGOPT_STAT_BACKWARD_CALLS), 2 * MB);
    rig_close(&bi);
    rig_close(&us);
    rig_close(&plain);
}
END_TEST

/* ---- 2, 3. a failing or non-finite term rolls the step back ------------ */

/* Three good steps; step 3 goes wrong in the term of its second
 * micro-batch; then three more. The failed step must leave the whole
 * training state (checkpoint bytes) as it was and not call committed, and
 * the run must then go on bit for bit like a twin that never failed. */
static void check_rollback(enum fault f, double bad, regopt_status want, const char *w1,
                           const char *w2)
{
    rig r, twin;
    unsigned char *before = NULL, *end;
    size_t nb = 0, ne;
    regopt_status st;
    const char *msg;
    int s, calls;
    rig_open(&r, R_PROBE, 1);
    rig_open(&twin, R_PROBE, 1);
    for (s = 0; s < 6; s++) {
        if (s == 3) {
            before = ckpt(&r, &nb);
            calls = r.pr.calls;
            r.pr.bad_at = calls + 2;
            r.pr.fault = f;
            r.pr.bad = bad;
            st = rig_try(&r, 3);
            msg = regopt_trainer_message(r.t);
            ck_assert_msg(st == want, "got %s (%s)", regopt_status_string(st), msg);
            ck_assert_msg(strstr(msg, w1) && strstr(msg, w2), "message \"%s\"", msg);
            ck_assert_int_eq(r.pr.calls, calls + 2);
            ck_assert_uint_eq(r.pr.commits, 3);
            ck_assert_int_eq(stat_int(r.t, REGOPT_STAT_STEP), 3);
            same_ckpt(&r, before, nb, "after the failed step");
            r.pr.bad_at = 0;
        }
        rig_step(&r, s);
        rig_step(&twin, s);
    }
    end = ckpt(&twin, &ne);
    same_ckpt(&r, end, ne, "against the twin");
    ck_assert_uint_eq(r.pr.commits, 6);
    free(before);
    free(end);
    rig_close(&r);
    rig_close(&twin);
}

/* The value callback fails; the value is NaN or infinite; a d_outputs
 * element is NaN or infinite (it reaches the host's gradients through the
 * task pass's backward for [0], the term's own pass for [1], and the norm
 * check refuses the step, naming the tensor). */
START_TEST(failing_term_rolls_back)
{
    check_rollback(F_FAIL, 0.0, REGOPT_ERR_LOSS_CALLBACK, "\"probe\" returned 5",
                   "micro-batch 1");
    check_rollback(F_VALUE, NAN, REGOPT_ERR_NONFINITE_LOSS, "\"probe\"", "nan");
    check_rollback(F_VALUE, -INFINITY, REGOPT_ERR_NONFINITE_LOSS, "\"probe\"", "inf");
    check_rollback(F_GRAD0, NAN, REGOPT_ERR_NONFINITE_GRADIENT, "gradient", "not finite");
    check_rollback(F_GRAD1, INFINITY, REGOPT_ERR_NONFINITE_GRADIENT, "gradient", "not finite");
}
END_TEST

/* ---- save_state failures ----------------------------------------------- */

typedef struct sink {
    unsigned char p[16384];
    size_t used;
} sink;

static int sink_write(const void *data, size_t n, void *user)
{
    sink *s = user;
    if (n > sizeof s->p - s->used)
        return 1;
    memcpy(s->p + s->used, data, n);
    s->used += n;
    return 0;
}

/* save_state fails on call `nth` of one save (-1: on every call). A save
 * calls it more than once (the size, then the bytes; save_buffer asks for
 * the size first). The save must fail with REGOPT_ERR_IO and a message
 * naming the term, or write a checkpoint that loads: never OK on damaged
 * or mis-sized bytes. Either way the trainer is unchanged. */
static void check_save_failure(int through_buffer, int nth)
{
    rig r, fresh;
    unsigned char *before;
    size_t nb, k;
    sink out = {{0}, 0};
    regopt_status st;
    const char *how = through_buffer ? "save_buffer" : "save";
    rig_open(&r, R_PROBE, 1);
    rig_step(&r, 0);
    before = ckpt(&r, &nb);
    r.pr.fail_save_at = nth < 0 ? -1 : r.pr.saves + nth;
    st = through_buffer ? regopt_trainer_save_buffer(r.t, ALL, out.p, sizeof out.p, &out.used)
                        : regopt_trainer_save(r.t, ALL, sink_write, &out);
    if (st == REGOPT_OK && r.pr.saves < r.pr.fail_save_at) { /* the call never came */
        rig_open(&fresh, R_PROBE, 0);
        TMUST(fresh.t, regopt_trainer_load_buffer(fresh.t, ALL, out.p, out.used));
        ck_assert_uint_eq(fresh.pr.commits, 1);
        rig_close(&fresh);
    } else {
        ck_assert_msg(st == REGOPT_ERR_IO, "%s, save_state call %d failing: %s", how, nth,
                      regopt_status_string(st));
        ck_assert_msg(strstr(regopt_trainer_message(r.t), "term \"probe\" returned 7"),
                      "%s, call %d: message \"%s\"", how, nth, regopt_trainer_message(r.t));
    }
    if (nth < 0) { /* a size query asks state_size only: save_state is not called */
        int saves = r.pr.saves;
        TMUST(r.t, regopt_trainer_checkpoint_size(r.t, ALL, &k));
        ck_assert_uint_eq(k, nb);
        ck_assert_int_eq(r.pr.saves, saves);
    }
    r.pr.fail_save_at = 0;
    same_ckpt(&r, before, nb, how);
    ck_assert_uint_eq(r.pr.commits, 1);
    free(before);
    rig_close(&r);
}

START_TEST(save_state_failure)
{
    int nth;
    for (nth = -1; nth <= 3; nth++) {
        if (nth == 0)
            continue;
        check_save_failure(0, nth);
        check_save_failure(1, nth);
    }
}
END_TEST

/* ---- 4. a term's state in checkpoints ---------------------------------- */

/* Resume: a fresh trainer and a fresh term handle (commits 0, garbage
 * weights) loaded from the checkpoint continue exactly like the original,
 * and the term's committed count comes back with it. */
START_TEST(term_state_resumes)
{
    rig a, b;
    float w[5][NW], bias[5][TH_K];
    unsigned char *mid;
    size_t n;
    int s;
    rig_open(&a, R_PROBE, 1);
    for (s = 0; s < 4; s++) {
        rig_step(&a, s);
        ck_assert_uint_eq(a.pr.last_step, a.pr.commits); /* committed(new step count) */
    }
    mid = ckpt(&a, &n);
    for (s = 4; s < 9; s++) {
        rig_step(&a, s);
        memcpy(w[s - 4], a.h.th.w, sizeof w[0]);
        memcpy(bias[s - 4], a.h.th.b, sizeof bias[0]);
    }
    rig_open(&b, R_PROBE, 0);
    TMUST(b.t, regopt_trainer_load_buffer(b.t, ALL, mid, n));
    ck_assert_uint_eq(b.pr.commits, 4);
    ck_assert_int_eq(stat_int(b.t, REGOPT_STAT_STEP), 4);
    for (s = 4; s < 9; s++) {
        rig_step(&b, s);
        ck_assert_msg(memcmp(w[s - 4], b.h.th.w, sizeof w[0]) == 0 &&
                      memcmp(bias[s - 4], b.h.th.b, sizeof bias[0]) == 0,
                      "resumed run differs after step %d", s);
    }
    ck_assert_uint_eq(b.pr.commits, 9);
    ck_assert_uint_eq(b.pr.last_step, 9);
    free(mid);
    rig_close(&a);
    rig_close(&b);
}
END_TEST

/* Load `ck` into r, expecting status `want` with `word` in the message,
 * and nothing changed: checkpoint bytes and the term's state. */
static void refused_load(rig *r, const unsigned char *ck, size_t n, regopt_status want,
                         const char *word, const char *what)
{
    unsigned char *before;
    size_t nb;
    uint64_t commits = r->pr.commits;
    regopt_status st;
    before = ckpt(r, &nb);
    st = regopt_trainer_load_buffer(r->t, ALL, ck, n);
    ck_assert_msg(st == want, "%s: got %s (%s)", what, regopt_status_string(st),
                  regopt_trainer_message(r->t));
    ck_assert_msg(strstr(regopt_trainer_message(r->t), word), "%s: message \"%s\"", what,
                  regopt_trainer_message(r->t));
    ck_assert_uint_eq(r->pr.commits, commits);
    same_ckpt(r, before, nb, what);
    free(before);
}

START_TEST(term_state_refused)
{
    rig a, c, d;
    unsigned char *mid, *plain;
    size_t n, np;
    int s;
    rig_open(&a, R_PROBE, 1);
    for (s = 0; s < 4; s++)
        rig_step(&a, s);
    mid = ckpt(&a, &n);
    rig_open(&c, R_PROBE, 1);
    rig_step(&c, 0); /* c has a state of its own: 1 commit */
    c.pr.fail_load = 1;
    refused_load(&c, mid, n, REGOPT_ERR_CORRUPT, "\"probe\"", "load_state refuses");
    c.pr.fail_load = 0;
    c.pr.state_bytes = 16; /* a term that keeps 16 bytes gets 8 */
    refused_load(&c, mid, n, REGOPT_ERR_CORRUPT, "\"probe\"", "state of another size");
    c.pr.state_bytes = 8;
    /* a stateless term of the same name: the saved state has no taker */
    rig_open(&d, R_PROBE_STATELESS, 1);
    rig_step(&d, 0);
    refused_load(&d, mid, n, REGOPT_ERR_MISMATCH, "\"probe\"", "no load_state");
    /* the other way round: no state saved, load_state gets 0 bytes */
    plain = ckpt(&d, &np);
    refused_load(&c, plain, np, REGOPT_ERR_CORRUPT, "\"probe\"", "0 bytes of state");
    /* and the good checkpoint still loads */
    TMUST(c.t, regopt_trainer_load_buffer(c.t, ALL, mid, n));
    ck_assert_uint_eq(c.pr.commits, 4);
    free(mid);
    free(plain);
    rig_close(&a);
    rig_close(&c);
    rig_close(&d);
}
END_TEST

Suite *suite_term(void)
{
    Suite *s = suite_create("term");
    TCase *tc = tcase_create("rdrop");
    tcase_add_test(tc, user_rdrop_matches_builtin);
    suite_add_tcase(s, tc);
    tc = tcase_create("rollback");
    tcase_add_test(tc, failing_term_rolls_back);
    tcase_add_test(tc, save_state_failure);
    suite_add_tcase(s, tc);
    tc = tcase_create("state");
    tcase_add_test(tc, term_state_resumes);
    tcase_add_test(tc, term_state_refused);
    suite_add_tcase(s, tc);
    return s;
}
