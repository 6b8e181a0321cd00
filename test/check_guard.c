/* check_guard.c — calls a trainer cannot survive unguarded (issue 16):
 * callbacks that call back into their own trainer, callbacks that longjmp
 * out of the library (what a C++ exception does to a C caller), and a
 * trainer with worker threads used in a forked child. */
#define _XOPEN_SOURCE 700 /* fork, pipe, alarm */
#include "tests.h"
#include "test_host.h"
#include "test_util.h"

#include <setjmp.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- a host that acts from inside a callback --------------------------- */

typedef struct gh gh;
struct gh {
    th_host h;             /* first: the th_* callbacks get &g->h */
    int act_forward;       /* act in this forward call (1-based), 0: never */
    uint32_t act_flags;    /* or in the first forward with these flags */
    int acted;
    void (*act)(gh *g);
    regopt_trainer *t;
    regopt_model *m;
    regopt_optimizer *o;
    regopt_regularizer *r;
    jmp_buf *jb;
    regopt_status got[24];
    int n_got;
};

static int gh_forward(const regopt_pass *p, void *user)
{
    gh *g = user;
    int rc = th_forward(p, &g->h);
    if (g->act && !g->acted &&
        ((g->act_forward && g->h.forwards == g->act_forward) ||
         (g->act_flags && (p->flags & g->act_flags) == g->act_flags))) {
        g->acted = 1;
        g->act(g);
    }
    return rc;
}

static int gh_backward(const regopt_pass *p, void *user) { return th_backward(p, user); }

static regopt_model *gh_model(gh *g)
{
    regopt_model *m = regopt_model_create(NULL, NULL);
    ck_assert_ptr_nonnull(m);
    MUST(regopt_model_add_param(m, "W", g->h.w, g->h.gw, TH_D * TH_K, REGOPT_DTYPE_FLOAT32, 0));
    MUST(regopt_model_add_param(m, "b", g->h.b, g->h.gb, TH_K, REGOPT_DTYPE_FLOAT32, 1));
    MUST(regopt_model_set_output_width(m, TH_K));
    MUST(regopt_model_set_slots(m, 4));
    MUST(regopt_model_set_callbacks(m, gh_forward, gh_backward, g, NULL));
    return m;
}

#define GN 8
static float gx[GN * TH_D];
static int32_t gy[GN];
static th_batch ghb;
static regopt_batch gb;

/* A trainer over g with SGD + momentum (optimizer state that a broken
 * rollback would show) and, when kind >= 0, one regularizer of that kind. */
static regopt_trainer *gh_trainer(gh *g, int kind)
{
    regopt_status st;
    th_init(&g->h);
    th_data(gx, gy, GN, 0);
    th_batch_of(&gb, &ghb, gx, gy, GN);
    g->o = regopt_optimizer_create(REGOPT_SGD, NULL, &st);
    ck_assert_ptr_nonnull(g->o);
    MUST(regopt_optimizer_set_double(g->o, REGOPT_OPT_LR, 0.1));
    MUST(regopt_optimizer_set_double(g->o, REGOPT_OPT_MOMENTUM, 0.9));
    g->m = gh_model(g);
    g->t = regopt_trainer_create(g->m, g->o, &st);
    ck_assert_ptr_nonnull(g->t);
    g->r = kind >= 0 ? tu_add(g->t, (regopt_regularizer_kind)kind) : NULL;
    return g->t;
}

static void gh_free(gh *g)
{
    regopt_trainer_free(g->t);
    tu_free_regs();
    regopt_model_free(g->m);
    regopt_optimizer_free(g->o);
}

static void snapshot(regopt_trainer *t, unsigned char *buf, size_t cap, size_t *n)
{
    TMUST(t, regopt_trainer_save_buffer(t, REGOPT_CHECKPOINT_PARAMS | REGOPT_CHECKPOINT_OPTIONS,
                                        buf, cap, n));
}

/* ---- re-entrancy --------------------------------------------------------- */

static void record(gh *g, regopt_status st) { g->got[g->n_got++] = st; }

/* Everything that changes or runs the trainer, from inside its forward. */
static void call_back_in(gh *g)
{
    unsigned char buf[4096];
    size_t n = 0;
    double v = 0.0;
    regopt_regularizer *other = regopt_regularizer_create(REGOPT_REG_RDROP, NULL, NULL);
    record(g, regopt_trainer_step(g->t, &gb, 1));
    record(g, regopt_trainer_evaluate(g->t, &gb, &v, NULL));
    record(g, regopt_trainer_set_double(g->t, REGOPT_TRAINER_LABEL_SMOOTHING, 0.1));
    record(g, regopt_trainer_set_int(g->t, REGOPT_TRAINER_THREADS, 2));
    record(g, regopt_trainer_reserve(g->t, 64));
    record(g, regopt_trainer_attach(g->t, other));
    record(g, regopt_trainer_detach(g->t, g->r));
    record(g, regopt_regularizer_set_double(g->r, REGOPT_SAM_RHO, 0.5));
    record(g, regopt_optimizer_set_double(g->o, REGOPT_OPT_LR, 1.0));
    record(g, regopt_trainer_save_buffer(g->t, 0, buf, sizeof buf, &n));
    record(g, regopt_trainer_checkpoint_size(g->t, 0, &n));
    record(g, regopt_trainer_load_buffer(g->t, 0, buf, sizeof buf));
    record(g, regopt_trainer_set_loss_callback(g->t, NULL, NULL, NULL));
    record(g, regopt_trainer_set_allreduce(g->t, NULL, NULL, NULL));
    record(g, regopt_trainer_free(g->t)); /* refused: the trainer stays usable */
    /* reads are allowed */
    ck_assert_int_eq(regopt_trainer_get_double(g->t, REGOPT_STAT_LOSS, &v), REGOPT_OK);
    ck_assert_int_eq(regopt_regularizer_get_double(g->r, REGOPT_SAM_RHO, &v), REGOPT_OK);
    ck_assert_int_eq(regopt_optimizer_get_double(g->o, REGOPT_OPT_LR, &v), REGOPT_OK);
    ck_assert_double_eq(v, 0.1);
    ck_assert_uint_eq(regopt_trainer_regularizer_count(g->t), 1);
    regopt_regularizer_free(other);
}

START_TEST(test_reentrant_calls_refused)
{
    gh g, ref;
    int i;
    memset(&g, 0, sizeof g);
    memset(&ref, 0, sizeof ref);
    gh_trainer(&g, REGOPT_REG_SAM);
    g.act = call_back_in;
    g.act_forward = 2; /* SAM's perturbed forward: w is at w + eps */
    gh_trainer(&ref, REGOPT_REG_SAM);
    TMUST(g.t, regopt_trainer_step(g.t, &gb, 1));
    TMUST(ref.t, regopt_trainer_step(ref.t, &gb, 1));
    ck_assert_int_eq(g.n_got, 15);
    for (i = 0; i < g.n_got; i++)
        ck_assert_msg(g.got[i] == REGOPT_ERR_STATE, "re-entrant call %d -> %s", i,
                      regopt_status_string(g.got[i]));
    /* nothing the refused calls asked for happened */
    ck_assert_mem_eq(g.h.w, ref.h.w, sizeof g.h.w);
    ck_assert_mem_eq(g.h.b, ref.h.b, sizeof g.h.b);
    ck_assert_uint_eq(regopt_trainer_regularizer_count(g.t), 1);
    ck_assert_double_eq(rstat(g.r, REGOPT_SAM_RHO), 0.05);
    /* the trainer works on */
    TMUST(g.t, regopt_trainer_step(g.t, &gb, 1));
    TMUST(ref.t, regopt_trainer_step(ref.t, &gb, 1));
    ck_assert_mem_eq(g.h.w, ref.h.w, sizeof g.h.w);
    gh_free(&g);
    gh_free(&ref);
}
END_TEST

/* ---- abandoned calls ------------------------------------------------------ */

static void jump_out(gh *g) { longjmp(*g->jb, 1); }

/* Run a step whose act longjmps out; returns 1 if it did. */
static int step_jumps(gh *g)
{
    jmp_buf jb;
    g->jb = &jb;
    if (setjmp(jb) != 0)
        return 1;
    return regopt_trainer_step(g->t, &gb, 1) == REGOPT_OK ? 0 : -1;
}

static void assert_refused_until_recover(gh *g)
{
    double v;
    const char *msg;
    ck_assert_int_eq(regopt_trainer_step(g->t, &gb, 1), REGOPT_ERR_STATE);
    msg = regopt_trainer_message(g->t);
    ck_assert_msg(strstr(msg, "regopt_trainer_recover") != NULL, "message: %s", msg);
    ck_assert_int_eq(regopt_trainer_set_double(g->t, REGOPT_TRAINER_LABEL_SMOOTHING, 0.1),
                     REGOPT_ERR_STATE);
    ck_assert_int_eq(regopt_optimizer_set_double(g->o, REGOPT_OPT_LR, 0.2), REGOPT_ERR_STATE);
    if (g->r)
        ck_assert_int_eq(regopt_regularizer_set_double(g->r, REGOPT_TERM_WEIGHT, 0.5) ==
                             REGOPT_ERR_STATE ||
                         regopt_regularizer_set_double(g->r, REGOPT_SAM_RHO, 0.5) ==
                             REGOPT_ERR_STATE,
                         1);
    ck_assert_int_eq(regopt_trainer_free(g->t), REGOPT_ERR_STATE); /* the handle stays live */
    ck_assert_int_eq(regopt_trainer_get_double(g->t, REGOPT_STAT_LOSS, &v), REGOPT_OK);
}

/* An abandoned step with weights swapped out (SAM's w + eps, the Bregman
 * teacher's weights): recover puts back parameters and state bit-exactly,
 * and the next step equals a trainer that never saw the abandoned one. */
static void abandoned_step(int kind, int act_forward, uint32_t act_flags, int warmup,
                           int swapped)
{
    static unsigned char before[8192], after[8192];
    size_t nb = 0, na = 0;
    gh g, ref;
    int i;
    memset(&g, 0, sizeof g);
    memset(&ref, 0, sizeof ref);
    gh_trainer(&g, kind);
    gh_trainer(&ref, kind);
    for (i = 0; i < warmup; i++) {
        TMUST(g.t, regopt_trainer_step(g.t, &gb, 1));
        TMUST(ref.t, regopt_trainer_step(ref.t, &gb, 1));
    }
    snapshot(g.t, before, sizeof before, &nb);
    g.act = jump_out;
    g.act_forward = act_forward ? g.h.forwards + act_forward : 0;
    g.act_flags = act_flags;
    ck_assert_int_eq(step_jumps(&g), 1);
    if (swapped) /* the test means something: the weights are not w now */
        ck_assert_int_ne(memcmp(g.h.w, ref.h.w, sizeof g.h.w), 0);
    assert_refused_until_recover(&g);
    TMUST(g.t, regopt_trainer_recover(g.t));
    ck_assert_mem_eq(g.h.w, ref.h.w, sizeof g.h.w);
    ck_assert_mem_eq(g.h.b, ref.h.b, sizeof g.h.b);
    snapshot(g.t, after, sizeof after, &na);
    ck_assert_uint_eq(na, nb);
    ck_assert_mem_eq(after, before, nb);
    TMUST(g.t, regopt_trainer_recover(g.t)); /* nothing left: a no-op */
    g.act = NULL;
    TMUST(g.t, regopt_trainer_step(g.t, &gb, 1));
    TMUST(ref.t, regopt_trainer_step(ref.t, &gb, 1));
    ck_assert_mem_eq(g.h.w, ref.h.w, sizeof g.h.w);
    ck_assert_mem_eq(g.h.b, ref.h.b, sizeof g.h.b);
    gh_free(&g);
    gh_free(&ref);
}

START_TEST(test_abandoned_sam_step)
{
    abandoned_step(REGOPT_REG_SAM, 2, 0, 1, 1); /* forward 2: the perturbed pass */
}
END_TEST

START_TEST(test_abandoned_bregman_step)
{
    /* two steps first: the teacher then differs from the student */
    abandoned_step(REGOPT_REG_BREGMAN, 0, REGOPT_PASS_TEACHER, 2, 1);
}
END_TEST

START_TEST(test_abandoned_plain_step)
{
    abandoned_step(-1, 1, 0, 1, 0);
}
END_TEST

/* ---- a user term whose hooks longjmp ------------------------------------ */

typedef struct jterm {
    uint64_t count;      /* its state: committed steps */
    jmp_buf *jb;
    int jump_in_load, jump_in_commit;
} jterm;

static int jt_value(const regopt_term_view *v, double *value, void *user)
{
    (void)v;
    (void)user;
    *value = 0.0;
    return 0;
}

static size_t jt_size(void *user)
{
    (void)user;
    return sizeof(uint64_t);
}

static int jt_save(void *buf, size_t n, void *user)
{
    memcpy(buf, &((jterm *)user)->count, n);
    return 0;
}

static int jt_load(const void *buf, size_t n, void *user)
{
    jterm *j = user;
    if (j->jump_in_load)
        longjmp(*j->jb, 1);
    memcpy(&j->count, buf, n);
    return 0;
}

static void jt_committed(uint64_t step, void *user)
{
    jterm *j = user;
    (void)step;
    j->count++;
    if (j->jump_in_commit)
        longjmp(*j->jb, 1);
}

static regopt_regularizer *jt_attach(regopt_trainer *t, jterm *j)
{
    regopt_term_ops ops;
    regopt_status st;
    regopt_regularizer *r;
    memset(&ops, 0, sizeof ops);
    ops.size = sizeof ops;
    ops.name = "jumper";
    ops.value = jt_value;
    ops.state_size = jt_size;
    ops.save_state = jt_save;
    ops.load_state = jt_load;
    ops.committed = jt_committed;
    r = regopt_regularizer_create_term(&ops, j, NULL, NULL, &st);
    ck_assert_ptr_nonnull(r);
    TMUST(t, regopt_trainer_attach(t, r));
    return r;
}

/* A load whose term load_state never returns has already applied the
 * checkpoint's options: recover puts the old ones back (and frees the
 * load's buffers: LeakSanitizer would see them otherwise). */
START_TEST(test_abandoned_load)
{
    static unsigned char ck[8192];
    size_t n = 0;
    double lr = 0.0, ls = 0.0;
    jmp_buf jb;
    jterm j;
    gh g;
    regopt_regularizer *r;
    memset(&g, 0, sizeof g);
    memset(&j, 0, sizeof j);
    j.jb = &jb;
    gh_trainer(&g, -1);
    r = jt_attach(g.t, &j);
    TMUST(g.t, regopt_trainer_step(g.t, &gb, 1));
    snapshot(g.t, ck, sizeof ck, &n); /* lr 0.1, no label smoothing */
    MUST(regopt_optimizer_set_double(g.o, REGOPT_OPT_LR, 0.03));
    TMUST(g.t, regopt_trainer_set_double(g.t, REGOPT_TRAINER_LABEL_SMOOTHING, 0.2));
    j.jump_in_load = 1;
    if (setjmp(jb) == 0) {
        regopt_status st = regopt_trainer_load_buffer(g.t, REGOPT_CHECKPOINT_PARAMS |
                                                      REGOPT_CHECKPOINT_OPTIONS, ck, n);
        ck_abort_msg("load_state did not run (%s)", regopt_status_string(st));
    }
    MUST(regopt_optimizer_get_double(g.o, REGOPT_OPT_LR, &lr));
    ck_assert_double_eq(lr, 0.1); /* the checkpoint's: applied before load_state */
    ck_assert_int_eq(regopt_trainer_step(g.t, &gb, 1), REGOPT_ERR_STATE);
    TMUST(g.t, regopt_trainer_recover(g.t));
    MUST(regopt_optimizer_get_double(g.o, REGOPT_OPT_LR, &lr));
    MUST(regopt_trainer_get_double(g.t, REGOPT_TRAINER_LABEL_SMOOTHING, &ls));
    ck_assert_double_eq(lr, 0.03);
    ck_assert_double_eq(ls, 0.2);
    ck_assert_int_eq(stat_int(g.t, REGOPT_STAT_STEP), 1);
    /* and a load that completes works afterwards */
    j.jump_in_load = 0;
    TMUST(g.t, regopt_trainer_load_buffer(g.t, REGOPT_CHECKPOINT_PARAMS |
                                          REGOPT_CHECKPOINT_OPTIONS, ck, n));
    MUST(regopt_optimizer_get_double(g.o, REGOPT_OPT_LR, &lr));
    ck_assert_double_eq(lr, 0.1);
    ck_assert_uint_eq(j.count, 1);
    gh_free(&g);
    MUST(regopt_regularizer_free(r)); /* after the trainer that held it */
}
END_TEST

/* A committed hook that never returns comes after the update: the step
 * counts, and recover says so. */
START_TEST(test_abandoned_committed_hook)
{
    jmp_buf jb;
    jterm j;
    gh g;
    regopt_regularizer *r;
    memset(&g, 0, sizeof g);
    memset(&j, 0, sizeof j);
    j.jb = &jb;
    gh_trainer(&g, -1);
    r = jt_attach(g.t, &j);
    j.jump_in_commit = 1;
    if (setjmp(jb) == 0) {
        regopt_status st = regopt_trainer_step(g.t, &gb, 1);
        ck_abort_msg("committed did not run (%s)", regopt_status_string(st));
    }
    ck_assert_int_eq(regopt_trainer_step(g.t, &gb, 1), REGOPT_ERR_STATE);
    ck_assert_int_eq(stat_int(g.t, REGOPT_STAT_STEP), 1);
    TMUST(g.t, regopt_trainer_recover(g.t));
    ck_assert_msg(strstr(regopt_trainer_message(g.t), "had been applied") != NULL, "%s",
                  regopt_trainer_message(g.t));
    j.jump_in_commit = 0;
    TMUST(g.t, regopt_trainer_step(g.t, &gb, 1));
    ck_assert_int_eq(stat_int(g.t, REGOPT_STAT_STEP), 2);
    ck_assert_uint_eq(j.count, 2);
    gh_free(&g);
    MUST(regopt_regularizer_free(r));
}
END_TEST

/* A committed hook that never returns comes after ALL the step's own work:
 * the methods' after-update work rides in the update's pass (an average's
 * SWA mean, the teacher's EMA, SAM's restore), so their bookkeeping, the
 * statistics and trainer.check_host's record must be done before the hook
 * runs. After recover the trainer equals one whose hook returned, and its
 * next steps are not refused as if the host had moved the weights. */
START_TEST(test_abandoned_committed_hook_finishes_the_step)
{
    static unsigned char ca[16384], cb[16384];
    jmp_buf jb;
    jterm ja, jr;
    gh g, ref;
    regopt_regularizer *ra, *rr;
    gh *both[2];
    size_t na = 0, nb = 0;
    int i, k;
    memset(&g, 0, sizeof g);
    memset(&ref, 0, sizeof ref);
    memset(&ja, 0, sizeof ja);
    memset(&jr, 0, sizeof jr);
    ja.jb = &jb;
    both[0] = &g;
    both[1] = &ref;
    gh_trainer(&g, REGOPT_REG_SAM);
    gh_trainer(&ref, REGOPT_REG_SAM);
    for (k = 0; k < 2; k++) {
        regopt_regularizer *avg = tu_add(both[k]->t, REGOPT_REG_AVERAGE);
        MUST(regopt_regularizer_set_int(avg, REGOPT_AVERAGE_MODE, REGOPT_AVERAGE_SWA));
        (void)tu_add(both[k]->t, REGOPT_REG_BREGMAN);
        TMUST(both[k]->t, regopt_trainer_set_int(both[k]->t, REGOPT_TRAINER_CHECK_HOST, 1));
    }
    ra = jt_attach(g.t, &ja);
    rr = jt_attach(ref.t, &jr);
    for (i = 0; i < 2; i++) { /* the SWA mean holds two models */
        TMUST(g.t, regopt_trainer_step(g.t, &gb, 1));
        TMUST(ref.t, regopt_trainer_step(ref.t, &gb, 1));
    }
    ja.jump_in_commit = 1;
    if (setjmp(jb) == 0) {
        regopt_status st = regopt_trainer_step(g.t, &gb, 1);
        ck_abort_msg("committed did not run (%s)", regopt_status_string(st));
    }
    TMUST(ref.t, regopt_trainer_step(ref.t, &gb, 1));
    TMUST(g.t, regopt_trainer_recover(g.t));
    ja.jump_in_commit = 0;
    for (i = 0; i < 3; i++) {
        snapshot(g.t, ca, sizeof ca, &na);
        snapshot(ref.t, cb, sizeof cb, &nb);
        ck_assert_uint_eq(na, nb);
        ck_assert_msg(memcmp(ca, cb, na) == 0, "after the abandoned hook (+%d steps): the "
                      "trainer differs from one whose hook returned", i);
        ck_assert_mem_eq(g.h.w, ref.h.w, sizeof g.h.w);
        TMUST(g.t, regopt_trainer_step(g.t, &gb, 1)); /* check_host: not refused */
        TMUST(ref.t, regopt_trainer_step(ref.t, &gb, 1));
    }
    ck_assert_uint_eq(ja.count, jr.count);
    gh_free(&g);
    gh_free(&ref);
    MUST(regopt_regularizer_free(ra));
    MUST(regopt_regularizer_free(rr));
}
END_TEST

/* ---- the message follows the last call ----------------------------------- */

START_TEST(test_message_cleared_by_success)
{
    gh g;
    memset(&g, 0, sizeof g);
    gh_trainer(&g, -1);
    ck_assert_int_eq(regopt_trainer_set_double(g.t, REGOPT_TRAINER_LABEL_SMOOTHING, 2.0),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_str_ne(regopt_trainer_message(g.t), "");
    TMUST(g.t, regopt_trainer_set_double(g.t, REGOPT_TRAINER_LABEL_SMOOTHING, 0.1));
    ck_assert_str_eq(regopt_trainer_message(g.t), "");
    ck_assert_int_eq(regopt_optimizer_set_double(g.o, REGOPT_OPT_LR, -1.0),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_str_ne(regopt_optimizer_message(g.o), "");
    MUST(regopt_optimizer_set_double(g.o, REGOPT_OPT_LR, 0.2));
    ck_assert_str_eq(regopt_optimizer_message(g.o), "");
    gh_free(&g);
}
END_TEST

/* ---- frees that are refused say so ----------------------------------------- */

START_TEST(refused_frees_return_a_status)
{
    gh g;
    regopt_regularizer *spare;
    memset(&g, 0, sizeof g);
    gh_trainer(&g, REGOPT_REG_SAM);
    ck_assert_int_eq(regopt_model_free(g.m), REGOPT_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(regopt_last_error_message(), "still bound"));
    ck_assert_int_eq(regopt_optimizer_free(g.o), REGOPT_ERR_STATE);
    ck_assert_int_eq(regopt_regularizer_free(g.r), REGOPT_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(regopt_last_error_message(), "attached"));
    ck_assert_uint_eq(regopt_model_param_count(g.m), 2); /* all still live */
    ck_assert_int_eq(regopt_model_free(NULL), REGOPT_OK);
    ck_assert_int_eq(regopt_optimizer_free(NULL), REGOPT_OK);
    ck_assert_int_eq(regopt_trainer_free(NULL), REGOPT_OK);
    ck_assert_int_eq(regopt_regularizer_free(NULL), REGOPT_OK);
    /* a handle of another type */
    ck_assert_int_eq(regopt_model_free((regopt_model *)(void *)g.o), REGOPT_ERR_INVALID_ARGUMENT);
    spare = regopt_regularizer_create(REGOPT_REG_RDROP, NULL, NULL);
    ck_assert_int_eq(regopt_regularizer_free(spare), REGOPT_OK);
    ck_assert_int_eq(regopt_trainer_free(g.t), REGOPT_OK);
    g.t = NULL;
    ck_assert_int_eq(regopt_model_free(g.m), REGOPT_OK);
    ck_assert_int_eq(regopt_optimizer_free(g.o), REGOPT_OK);
    g.m = NULL;
    g.o = NULL;
    tu_free_regs();
}
END_TEST

/* ---- fork ---------------------------------------------------------------- */

/* A model big enough for the worker threads (RO_PAR_MIN: 2^18 elements). */
#define FK_N (300u * 1000u)
static float fk_w[FK_N], fk_g[FK_N];

static int fk_forward(const regopt_pass *p, void *user)
{
    size_t i;
    (void)user;
    for (i = 0; i < p->rows; i++) {
        p->outputs[2 * i] = fk_w[i];
        p->outputs[2 * i + 1] = fk_w[FK_N - 1 - i];
    }
    return 0;
}

static int fk_backward(const regopt_pass *p, void *user)
{
    size_t i;
    (void)user;
    for (i = 0; i < FK_N; i++) /* every element gets a gradient */
        fk_g[i] += p->d_outputs[i % (2 * p->rows)] * (float)(1 + i % 7);
    return 0;
}

static uint64_t fk_hash(void)
{
    uint64_t h = 1469598103934665603ull;
    const unsigned char *b = (const unsigned char *)fk_w;
    size_t i;
    for (i = 0; i < sizeof fk_w; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* The child of a fork steps, changes its thread count and frees its
 * trainer without hanging (the workers do not exist there), with the
 * parent's bits. */
START_TEST(test_fork_with_worker_threads)
{
    int32_t y[4] = {0, 1, 1, 0};
    int fd[2], status = 0;
    uint64_t mine, theirs = 0;
    regopt_status st;
    regopt_batch b;
    pid_t pid;
    size_t i;
    regopt_optimizer *o = regopt_optimizer_create(REGOPT_ADAMW, NULL, &st);
    regopt_model *m = regopt_model_create(NULL, NULL);
    regopt_trainer *t;
    for (i = 0; i < FK_N; i++)
        fk_w[i] = 1e-3f * (float)(i % 101);
    MUST(regopt_model_add_param(m, "w", fk_w, fk_g, FK_N, REGOPT_DTYPE_FLOAT32, 0));
    MUST(regopt_model_set_output_width(m, 2));
    MUST(regopt_model_set_callbacks(m, fk_forward, fk_backward, NULL, NULL));
    t = regopt_trainer_create(m, o, &st);
    ck_assert_ptr_nonnull(t);
    TMUST(t, regopt_trainer_set_int(t, REGOPT_TRAINER_THREADS, 2));
    regopt_batch_init(&b);
    b.rows = 4;
    b.labels = y;
    TMUST(t, regopt_trainer_step(t, &b, 1)); /* the workers have run */
    ck_assert_int_eq(pipe(fd), 0);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        uint64_t h;
        int ok;
        alarm(60); /* a hang fails the test instead of stalling the suite */
        close(fd[0]);
        ok = regopt_trainer_step(t, &b, 1) == REGOPT_OK &&
             regopt_trainer_step(t, &b, 1) == REGOPT_OK;
        h = fk_hash();
        ok = ok && write(fd[1], &h, sizeof h) == (ssize_t)sizeof h;
        ok = ok && regopt_trainer_set_int(t, REGOPT_TRAINER_THREADS, 1) == REGOPT_OK;
#ifndef __SANITIZE_THREAD__ /* TSan cannot follow threads started after a fork */
        ok = ok && regopt_trainer_set_int(t, REGOPT_TRAINER_THREADS, 3) == REGOPT_OK;
#endif
        ok = ok && regopt_trainer_step(t, &b, 1) == REGOPT_OK;
        regopt_trainer_free(t);
        _exit(ok ? 0 : 3);
    }
    close(fd[1]);
    TMUST(t, regopt_trainer_step(t, &b, 1));
    TMUST(t, regopt_trainer_step(t, &b, 1));
    mine = fk_hash();
    ck_assert_int_eq(read(fd[0], &theirs, sizeof theirs), (ssize_t)sizeof theirs);
    close(fd[0]);
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "the child %s (status 0x%x)", WIFSIGNALED(status) ? "was killed" : "failed",
                  (unsigned)status);
    ck_assert_msg(mine == theirs, "the child's weights differ from the parent's");
    regopt_trainer_free(t);
    regopt_model_free(m);
    regopt_optimizer_free(o);
}
END_TEST

Suite *suite_guard(void)
{
    Suite *s = suite_create("guard");
    TCase *tc = tcase_create("guard");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_reentrant_calls_refused);
    tcase_add_test(tc, test_abandoned_sam_step);
    tcase_add_test(tc, test_abandoned_bregman_step);
    tcase_add_test(tc, test_abandoned_plain_step);
    tcase_add_test(tc, test_abandoned_load);
    tcase_add_test(tc, test_abandoned_committed_hook);
    tcase_add_test(tc, test_abandoned_committed_hook_finishes_the_step);
    tcase_add_test(tc, test_message_cleared_by_success);
    tcase_add_test(tc, refused_frees_return_a_status);
    tcase_add_test(tc, test_fork_with_worker_threads);
    suite_add_tcase(s, tc);
    return s;
}
