/* fuzz_options.c — options by key, by name and by value: optimizer, group,
 * trainer and regularizer setters and getters (the regularizers are handles
 * of every kind, a second SAM and two user terms among them, set before and
 * after they are attached), regularizers attached, detached and freed in
 * any order, key lookups, with a step now and then so the cross-option
 * checks run.
 *
 * Invariants: every status is a documented code and every message one sane
 * line; a setter that fails changes nothing; a value that was accepted reads
 * back as set; a regularizer's key is refused by the trainer and by the
 * handles of other kinds (REGOPT_ERR_UNKNOWN_KEY); a name lookup agrees with
 * regopt_key_info; attach and detach change the trainer's list exactly when
 * they succeed, a handle attached twice or a second weight-side one is
 * REGOPT_ERR_STATE, an attached handle is not freed; a failed step leaves
 * the weights as they were. */
#include "fuzz.h"

#define NW 4 /* weights of the host: z = w0 x + w1, two outputs */

typedef struct host {
    float w[NW], g[NW];
    const float *x;
} host;

static int forward(const regopt_pass *p, void *user)
{
    host *h = user;
    size_t i;
    h->x = p->batch;
    for (i = 0; i < p->rows; i++) {
        p->outputs[2 * i] = h->w[0] * h->x[i] + h->w[1];
        p->outputs[2 * i + 1] = h->w[2] * h->x[i] + h->w[3];
    }
    return 0;
}

static int backward(const regopt_pass *p, void *user)
{
    host *h = user;
    size_t i;
    for (i = 0; i < p->rows; i++) {
        h->g[0] += p->d_outputs[2 * i] * h->x[i];
        h->g[1] += p->d_outputs[2 * i];
        h->g[2] += p->d_outputs[2 * i + 1] * h->x[i];
        h->g[3] += p->d_outputs[2 * i + 1];
    }
    return 0;
}

/* A refused set must leave the very bits (a NaN stays that NaN); an
 * accepted one reads back equal (an integer key turns -0 into 0). */
static int same_bits(double a, double b) { return memcmp(&a, &b, sizeof a) == 0; }

static int key_type(regopt_key key)
{
    int type = 0;
    regopt_key_info(key, NULL, &type, NULL, NULL, NULL, NULL);
    return type;
}

static void check_status(regopt_status st, const char *what)
{
    FZ_CHECK(fz_known_status(st), "%s returned %d", what, (int)st);
}

/* The regularizer kind a key belongs to (its name is "<kind name>.*"), 0 for
 * the keys of the optimizer and the trainer and for unknown keys. */
static regopt_regularizer_kind key_kind(regopt_key key)
{
    const char *name = NULL, *kname = NULL;
    regopt_regularizer_kind kind;
    size_t i;
    if (regopt_key_info(key, &name, NULL, NULL, NULL, NULL, NULL) != REGOPT_OK || !name)
        return (regopt_regularizer_kind)0;
    for (i = 0; regopt_regularizer_kind_info(i, &kind, &kname, NULL) == REGOPT_OK; i++) {
        size_t n = kname ? strlen(kname) : 0;
        if (n && strncmp(name, kname, n) == 0 && name[n] == '.')
            return kind;
    }
    return (regopt_regularizer_kind)0;
}

/* ---- regularizer handles ------------------------------------------------ */

/* A user term: a small penalty on the outputs, c_i = 0.01 sum_k z_ik^2,
 * as a weighted mean (optionally over a second, fresh-seed pass too). */
static int term_value(const regopt_term_view *v, double *value, void *user)
{
    size_t i, k, p;
    double sum = 0;
    (void)user;
    for (p = 0; p < v->n_outputs; p++)
        for (i = 0; i < v->rows; i++) {
            double wi = (v->batch->mask && !v->batch->mask[i]) ? 0.0 : 1.0;
            if (v->batch->weights)
                wi *= v->batch->weights[i];
            for (k = 0; k < v->output_width; k++) {
                float z = v->outputs[p][i * v->output_width + k];
                sum += wi * 0.01 * (double)z * z;
                if (v->d_outputs[p])
                    v->d_outputs[p][i * v->output_width + k] =
                        (float)(v->inv_weight * wi * 0.02 * z);
            }
        }
    *value = v->inv_weight * sum;
    return 0;
}

/* The handles the input plays with: one of each built-in kind, a second SAM
 * (a second weight-side regularizer) and two user terms (a term may be
 * attached any number of times, each handle once). */
enum { P_SAM, P_RDROP, P_SMART, P_BREGMAN, P_TERM, P_SAM2, P_TERM2, P_N };

typedef struct pool {
    regopt_regularizer *r[P_N];
} pool;

static void pool_make(pool *p)
{
    static const regopt_regularizer_kind kinds[4] = {REGOPT_REG_SAM, REGOPT_REG_RDROP,
                                                     REGOPT_REG_SMART, REGOPT_REG_BREGMAN};
    regopt_term_ops ops;
    regopt_status st = REGOPT_OK;
    size_t i;
    for (i = 0; i < 4; i++) {
        p->r[i] = regopt_regularizer_create(kinds[i], NULL, &st);
        FZ_CHECK(p->r[i] && st == REGOPT_OK, "create kind %d: %d", (int)kinds[i], (int)st);
    }
    p->r[P_SAM2] = regopt_regularizer_create(REGOPT_REG_SAM, NULL, &st);
    FZ_CHECK(p->r[P_SAM2], "second SAM");
    memset(&ops, 0, sizeof ops);
    ops.size = sizeof ops;
    ops.name = "penalty";
    ops.value = term_value;
    p->r[P_TERM] = regopt_regularizer_create_term(&ops, NULL, NULL, NULL, &st);
    FZ_CHECK(p->r[P_TERM], "term: %d %s", (int)st, regopt_last_error_message());
    ops.name = "penalty.fresh";
    ops.passes = 1;
    ops.pass_flags[0] = REGOPT_TERM_PASS_FRESH_SEED;
    p->r[P_TERM2] = regopt_regularizer_create_term(&ops, NULL, NULL, NULL, &st);
    FZ_CHECK(p->r[P_TERM2], "term with a pass: %d %s", (int)st, regopt_last_error_message());
    for (i = 0; i < P_N; i++)
        FZ_CHECK(regopt_regularizer_get_trainer(p->r[i]) == NULL, "a new handle is attached");
}

/* After the trainer is gone every handle is detached and can be freed. */
static void pool_free(pool *p)
{
    size_t i;
    for (i = 0; i < P_N; i++) {
        FZ_CHECK(regopt_regularizer_get_trainer(p->r[i]) == NULL,
                 "handle %zu attached after its trainer was freed", i);
        regopt_regularizer_free(p->r[i]);
    }
}

/* A handle: mostly the one of the key's kind (so the set can succeed),
 * otherwise any handle of the pool. */
static regopt_regularizer *pool_pick(fz *f, pool *p, regopt_key key)
{
    uint8_t b = fz_u8(f);
    regopt_regularizer_kind kind = key_kind(key);
    if (b < 192 && kind) {
        size_t i;
        for (i = 0; i < P_N; i++)
            if (regopt_regularizer_get_kind(p->r[(i + b) % P_N]) == kind)
                return p->r[(i + b) % P_N];
    }
    return p->r[b % P_N];
}

/* Set a regularizer key on a handle, double, int or per group. */
static void regularizer_op(fz *f, pool *p, int op)
{
    regopt_key key = fz_key(f);
    regopt_regularizer *r = pool_pick(f, p, key);
    regopt_regularizer_kind kind = regopt_regularizer_get_kind(r);
    double before = 0, after = 0, v;
    int64_t ibefore = 0, iafter = 0, iv;
    regopt_status gs, st;
    int32_t group = (int32_t)fz_below(f, 70) - 2;
    switch (op) {
    case 0:
        v = fz_double(f);
        gs = regopt_regularizer_get_double(r, key, &before);
        st = regopt_regularizer_set_double(r, key, v);
        check_status(st, "regopt_regularizer_set_double");
        if (regopt_regularizer_get_double(r, key, &after) == REGOPT_OK) {
            if (st == REGOPT_OK)
                FZ_CHECK(after == v, "key %d set to %.17g reads %.17g", (int)key, v, after);
            else if (gs == REGOPT_OK)
                FZ_CHECK(same_bits(after, before), "refused set of key %d changed it", (int)key);
        }
        break;
    case 1:
        iv = fz_int64(f);
        gs = regopt_regularizer_get_int(r, key, &ibefore);
        st = regopt_regularizer_set_int(r, key, iv);
        check_status(st, "regopt_regularizer_set_int");
        if (regopt_regularizer_get_int(r, key, &iafter) == REGOPT_OK) {
            if (st == REGOPT_OK) {
                if (key_type(key) == REGOPT_TYPE_INT)
                    FZ_CHECK(iafter == iv, "key %d set to %lld reads %lld", (int)key,
                             (long long)iv, (long long)iafter);
            } else if (gs == REGOPT_OK)
                FZ_CHECK(iafter == ibefore, "refused set of key %d changed it", (int)key);
        }
        break;
    default:
        v = fz_double(f);
        gs = regopt_regularizer_get_group(r, group, key, &before);
        st = regopt_regularizer_set_group(r, group, key, v);
        check_status(st, "regopt_regularizer_set_group");
        if (regopt_regularizer_get_group(r, group, key, &after) == REGOPT_OK) {
            if (st == REGOPT_OK)
                FZ_CHECK(after == v || key_type(key) == REGOPT_TYPE_INT,
                         "group %d key %d set to %.17g reads %.17g", (int)group, (int)key, v,
                         after);
            else if (gs == REGOPT_OK)
                FZ_CHECK(same_bits(after, before), "refused group set of key %d changed it",
                         (int)key);
        }
        break;
    }
    /* the keys of another kind, the trainer's and the optimizer's: unknown */
    if (key_kind(key) != kind)
        FZ_CHECK(st == REGOPT_ERR_UNKNOWN_KEY, "kind %d took key %d (kind %d): %d", (int)kind,
                 (int)key, (int)key_kind(key), (int)st);
    FZ_CHECK(fz_sane_message(regopt_regularizer_message(r)), "message");
}

/* Attach a handle of the pool (or NULL); the list changes exactly when
 * attach succeeds. */
static void attach_op(fz *f, regopt_trainer *t, pool *p)
{
    size_t pick = fz_below(f, P_N + 1), n = regopt_trainer_regularizer_count(t), i;
    regopt_regularizer *r = pick < P_N ? p->r[pick] : NULL;
    regopt_trainer *owner = r ? regopt_regularizer_get_trainer(r) : NULL;
    int weight_side = 0;
    regopt_status st;
    for (i = 0; i < n; i++)
        weight_side |= regopt_regularizer_get_kind(regopt_trainer_regularizer_at(t, i)) ==
                       REGOPT_REG_SAM;
    st = regopt_trainer_attach(t, r);
    check_status(st, "regopt_trainer_attach");
    if (!r)
        FZ_CHECK(st == REGOPT_ERR_NULL_POINTER, "attach(NULL) -> %d", (int)st);
    else if (owner == t)
        FZ_CHECK(st == REGOPT_ERR_STATE, "attached twice -> %d", (int)st);
    else if (weight_side && regopt_regularizer_get_kind(r) == REGOPT_REG_SAM)
        FZ_CHECK(st == REGOPT_ERR_STATE, "a second SAM -> %d", (int)st);
    if (st == REGOPT_OK) {
        FZ_CHECK(regopt_regularizer_get_trainer(r) == t, "attached, but not to the trainer");
        FZ_CHECK(regopt_trainer_regularizer_count(t) == n + 1, "count %zu -> %zu", n,
                 regopt_trainer_regularizer_count(t));
        for (i = 0; i <= n && regopt_trainer_regularizer_at(t, i) != r; i++)
            ;
        FZ_CHECK(i <= n, "attached, but not in the list");
    } else {
        FZ_CHECK(!r || regopt_regularizer_get_trainer(r) == owner, "a failed attach moved it");
        FZ_CHECK(regopt_trainer_regularizer_count(t) == n, "a failed attach: count %zu -> %zu",
                 n, regopt_trainer_regularizer_count(t));
    }
    FZ_CHECK(regopt_trainer_regularizer_at(t, regopt_trainer_regularizer_count(t)) == NULL,
             "an entry past the end");
}

/* Detach a handle of the pool, then try to free what is still attached
 * (refused: it stays usable). */
static void detach_op(fz *f, regopt_trainer *t, pool *p)
{
    size_t pick = fz_below(f, P_N + 1), n = regopt_trainer_regularizer_count(t);
    regopt_regularizer *r = pick < P_N ? p->r[pick] : NULL;
    regopt_trainer *owner = r ? regopt_regularizer_get_trainer(r) : NULL;
    regopt_status st = regopt_trainer_detach(t, r);
    check_status(st, "regopt_trainer_detach");
    if (r && owner != t)
        FZ_CHECK(st != REGOPT_OK, "detached one that was not attached");
    if (st == REGOPT_OK) {
        FZ_CHECK(regopt_regularizer_get_trainer(r) == NULL, "detached, still attached");
        FZ_CHECK(regopt_trainer_regularizer_count(t) == n - 1, "count %zu -> %zu", n,
                 regopt_trainer_regularizer_count(t));
    } else {
        FZ_CHECK(regopt_trainer_regularizer_count(t) == n, "a failed detach: count %zu -> %zu",
                 n, regopt_trainer_regularizer_count(t));
    }
    if (r && regopt_regularizer_get_trainer(r) == t) {
        regopt_regularizer_free(r); /* refused: attached */
        FZ_CHECK(regopt_regularizer_get_trainer(r) == t, "free detached an attached handle");
        FZ_CHECK(fz_sane_message(regopt_last_error_message()), "last error");
    }
}

static void optimizer_op(fz *f, regopt_optimizer *o, int op)
{
    regopt_key key = fz_key(f);
    double before = 0, after = 0, v;
    int64_t ibefore = 0, iafter = 0, iv;
    regopt_status gs, st;
    int32_t group = (int32_t)fz_below(f, 70) - 2; /* around [0, REGOPT_MAX_GROUPS) */
    switch (op) {
    case 0:
        v = fz_double(f);
        gs = regopt_optimizer_get_double(o, key, &before);
        st = regopt_optimizer_set_double(o, key, v);
        check_status(st, "regopt_optimizer_set_double");
        FZ_CHECK(fz_sane_message(regopt_optimizer_message(o)), "message");
        if (regopt_optimizer_get_double(o, key, &after) == REGOPT_OK) {
            if (st == REGOPT_OK)
                FZ_CHECK(after == v, "key %d set to %.17g reads %.17g", (int)key, v, after);
            else if (gs == REGOPT_OK)
                FZ_CHECK(same_bits(after, before), "refused set of key %d changed it", (int)key);
        }
        break;
    case 1:
        iv = fz_int64(f);
        gs = regopt_optimizer_get_int(o, key, &ibefore);
        st = regopt_optimizer_set_int(o, key, iv);
        check_status(st, "regopt_optimizer_set_int");
        if (regopt_optimizer_get_int(o, key, &iafter) == REGOPT_OK) {
            if (st == REGOPT_OK) {
                if (key_type(key) == REGOPT_TYPE_INT) /* a double key may round */
                    FZ_CHECK(iafter == iv, "key %d set to %lld reads %lld", (int)key,
                             (long long)iv, (long long)iafter);
            } else if (gs == REGOPT_OK)
                FZ_CHECK(iafter == ibefore, "refused set of key %d changed it", (int)key);
        }
        break;
    default:
        v = fz_double(f);
        gs = regopt_optimizer_get_group(o, group, key, &before);
        st = regopt_optimizer_set_group(o, group, key, v);
        check_status(st, "regopt_optimizer_set_group");
        if (regopt_optimizer_get_group(o, group, key, &after) == REGOPT_OK && st != REGOPT_OK &&
            gs == REGOPT_OK)
            FZ_CHECK(same_bits(after, before), "refused group set of key %d changed it",
                     (int)key);
        break;
    }
}

/* Trainer ops: its keys (a regularizer's key is refused), per-group keys
 * (0.x had them on the trainer; they are the regularizers' now), attach,
 * detach, and the regularizers' own keys. */
static void trainer_op(fz *f, regopt_trainer *t, pool *p, int op)
{
    regopt_key key;
    double before = 0, after = 0, v;
    int64_t ibefore = 0, iafter = 0, iv;
    regopt_status gs, st;
    switch (op) {
    case 0:
        key = fz_key(f);
        v = fz_double(f);
        gs = regopt_trainer_get_double(t, key, &before);
        st = regopt_trainer_set_double(t, key, v);
        check_status(st, "regopt_trainer_set_double");
        FZ_CHECK(fz_sane_message(regopt_trainer_message(t)), "message");
        FZ_CHECK(!key_kind(key) || st == REGOPT_ERR_UNKNOWN_KEY,
                 "the trainer took regularizer key %d: %d", (int)key, (int)st);
        if (regopt_trainer_get_double(t, key, &after) == REGOPT_OK) {
            if (st == REGOPT_OK)
                FZ_CHECK(after == v, "key %d set to %.17g reads %.17g", (int)key, v, after);
            else if (gs == REGOPT_OK)
                FZ_CHECK(same_bits(after, before), "refused set of key %d changed it", (int)key);
        }
        break;
    case 1:
        key = fz_key(f);
        iv = fz_int64(f);
        gs = regopt_trainer_get_int(t, key, &ibefore);
        st = regopt_trainer_set_int(t, key, iv);
        check_status(st, "regopt_trainer_set_int");
        FZ_CHECK(!key_kind(key) || st == REGOPT_ERR_UNKNOWN_KEY,
                 "the trainer took regularizer key %d: %d", (int)key, (int)st);
        if (regopt_trainer_get_int(t, key, &iafter) == REGOPT_OK) {
            if (st == REGOPT_OK) {
                if (key_type(key) == REGOPT_TYPE_INT) /* a double key may round */
                    FZ_CHECK(iafter == iv, "key %d set to %lld reads %lld", (int)key,
                             (long long)iv, (long long)iafter);
            } else if (gs == REGOPT_OK)
                FZ_CHECK(iafter == ibefore, "refused set of key %d changed it", (int)key);
        }
        break;
    case 2:
        regularizer_op(f, p, 2);
        break;
    case 3:
        attach_op(f, t, p);
        break;
    case 4:
        detach_op(f, t, p);
        break;
    default:
        regularizer_op(f, p, fz_u8(f) & 1);
        break;
    }
    FZ_CHECK(fz_sane_message(regopt_trainer_message(t)), "message");
}

static void name_op(fz *f)
{
    char name[80];
    regopt_key key = (regopt_key)-1, again;
    const char *info_name = NULL;
    int type = 0;
    double lo = 0, hi = 0, def = 0;
    uint32_t flags = 0;
    regopt_status st;
    if (fz_u8(f) & 1) { /* a real name, perhaps cut short or extended */
        const regopt_key *keys;
        size_t n = fz_known_keys(&keys);
        const char *real = NULL;
        if (!n || regopt_key_info(keys[fz_below(f, n)], &real, NULL, NULL, NULL, NULL, NULL))
            return;
        snprintf(name, sizeof name, "%s", real);
        if (fz_u8(f) & 1)
            name[fz_below(f, strlen(name) + 1)] = '\0';
    } else {
        fz_string(f, name, sizeof name);
    }
    again = key;
    st = regopt_key_from_name(name, &key);
    check_status(st, "regopt_key_from_name");
    FZ_CHECK(fz_sane_message(regopt_last_error_message()), "last error");
    if (st != REGOPT_OK) {
        FZ_CHECK(key == again, "failed lookup of \"%s\" wrote the key", name);
        return;
    }
    st = regopt_key_info(key, &info_name, &type, &lo, &hi, &def, &flags);
    FZ_CHECK(st == REGOPT_OK && info_name && strcmp(info_name, name) == 0,
             "\"%s\" -> key %d -> \"%s\"", name, (int)key, info_name ? info_name : "(null)");
    FZ_CHECK(type == REGOPT_TYPE_DOUBLE || type == REGOPT_TYPE_INT, "key %d type %d", (int)key,
             type);
    FZ_CHECK(!(lo > hi), "key %d bounds [%g, %g]", (int)key, lo, hi);
    FZ_CHECK(def >= lo && def <= hi, "key %d default %g outside [%g, %g]", (int)key, def, lo, hi);
}

static void step_op(fz *f, regopt_trainer *t, host *h)
{
    static const float x[4] = {0.5f, -1.0f, 2.0f, 0.25f};
    static const int32_t y[4] = {0, 1, 1, 0};
    static const float targets[8] = {1, 0, 0, 1, 0.5f, 0.5f, -1, 2};
    float saved[NW];
    regopt_batch b;
    regopt_status st;
    regopt_batch_init(&b);
    b.data = x;
    b.rows = 1 + fz_below(f, 4);
    b.labels = y;
    b.targets = targets;
    memcpy(saved, h->w, sizeof saved);
    st = regopt_trainer_step(t, &b, 1);
    check_status(st, "regopt_trainer_step");
    FZ_CHECK(fz_sane_message(regopt_trainer_message(t)), "message");
    if (st != REGOPT_OK)
        FZ_CHECK(memcmp(saved, h->w, sizeof saved) == 0, "failed step (%s) moved the weights",
                 regopt_trainer_message(t));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz f = {data, size};
    host h;
    regopt_model *m;
    regopt_optimizer *o;
    regopt_trainer *t = NULL;
    regopt_status st = REGOPT_OK;
    pool p;
    int ops = 0;

    memset(&h, 0, sizeof h);
    h.w[0] = 0.5f;
    h.w[2] = -0.25f;
    /* a kind outside the enum must be refused with NULL and a status */
    o = regopt_optimizer_create((regopt_optimizer_kind)fz_below(&f, 6), NULL, &st);
    check_status(st, "regopt_optimizer_create");
    FZ_CHECK((o != NULL) == (st == REGOPT_OK), "create: handle vs status %d", (int)st);
    if (!o)
        return 0;
    m = regopt_model_create(NULL, NULL);
    FZ_CHECK(m, "model");
    FZ_CHECK(!regopt_model_add_param(m, "w", h.w, h.g, 2, REGOPT_DTYPE_FLOAT32, 0) &&
                 !regopt_model_add_param(m, "v", h.w + 2, h.g + 2, 2, REGOPT_DTYPE_FLOAT32, 1) &&
                 !regopt_model_set_output_width(m, 2) && !regopt_model_set_slots(m, 2) &&
                 !regopt_model_set_callbacks(m, forward, backward, &h, NULL),
             "model setup");

    pool_make(&p);

    while (f.n && ops++ < 64) {
        uint8_t op = fz_u8(&f);
        if (op < 64) {
            optimizer_op(&f, o, op % 3);
        } else if (op < 80) {
            name_op(&f);
        } else if (op < 88) { /* bind late: some options are checked when binding */
            if (!t) {
                t = regopt_trainer_create(m, o, &st);
                check_status(st, "regopt_trainer_create");
                FZ_CHECK(fz_sane_message(regopt_last_error_message()), "last error");
            }
        } else if (t && op < 232) {
            trainer_op(&f, t, &p, op % 6);
        } else if (op < 232) { /* no trainer yet: the handles' options */
            regularizer_op(&f, &p, op % 3);
        } else if (t) {
            step_op(&f, t, &h);
        }
    }
    regopt_trainer_free(t); /* detaches whatever is attached */
    pool_free(&p);
    regopt_optimizer_free(o);
    regopt_model_free(m);
    return 0;
}
