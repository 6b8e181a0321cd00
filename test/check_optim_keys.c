/* check_optim_keys.c — suite optim: the optimizer options: defaults, bounds,
 * the keys of each kind, integer keys, bad handles and groups. */
#include "optim_rig.h"

/* ======================================================================== */
/* Options: defaults, bounds, errors                                        */
/* ======================================================================== */

#define KIND_BIT(k) (1u << (unsigned)(k))
#define ALL_KINDS (KIND_BIT(REGOPT_SGD) | KIND_BIT(REGOPT_ADAM) | KIND_BIT(REGOPT_ADAMW) | \
                   KIND_BIT(REGOPT_RADAM))
#define ADAM_FAMILY (KIND_BIT(REGOPT_ADAM) | KIND_BIT(REGOPT_ADAMW) | KIND_BIT(REGOPT_RADAM))
#define TWO53 9007199254740992.0

/* Every optimizer and group key as regopt.h documents it. */
typedef struct key_spec {
    regopt_key key;
    const char *name;
    int type;
    double min, max, def;
    uint32_t flags;
    unsigned kinds; /* KIND_BIT of each kind it applies to */
} key_spec;

#define MINX REGOPT_KEY_MIN_EXCLUSIVE
#define MAXX REGOPT_KEY_MAX_EXCLUSIVE
#define GRP REGOPT_KEY_GROUP
#define TD REGOPT_TYPE_DOUBLE
#define TI REGOPT_TYPE_INT

static const key_spec KEYS[] = {
    {REGOPT_OPT_LR, "optimizer.lr", TD, 0, 1e3, 1e-3, MINX, ALL_KINDS},
    {REGOPT_OPT_WEIGHT_DECAY, "optimizer.weight_decay", TD, 0, 1e3, 0, 0, ALL_KINDS},
    {REGOPT_OPT_MOMENTUM, "optimizer.momentum", TD, 0, 1, 0, MAXX, KIND_BIT(REGOPT_SGD)},
    {REGOPT_OPT_DAMPENING, "optimizer.dampening", TD, 0, 1, 0, 0, KIND_BIT(REGOPT_SGD)},
    {REGOPT_OPT_NESTEROV, "optimizer.nesterov", TI, 0, 1, 0, 0, KIND_BIT(REGOPT_SGD)},
    {REGOPT_OPT_BETA1, "optimizer.beta1", TD, 0, 1, 0.9, MAXX, ADAM_FAMILY},
    {REGOPT_OPT_BETA2, "optimizer.beta2", TD, 0, 1, 0.999, MAXX, ADAM_FAMILY},
    {REGOPT_OPT_EPS, "optimizer.eps", TD, 0, 1, 1e-8, MINX, ADAM_FAMILY},
    {REGOPT_OPT_AMSGRAD, "optimizer.amsgrad", TI, 0, 1, 0, 0,
     KIND_BIT(REGOPT_ADAM) | KIND_BIT(REGOPT_ADAMW)},
    {REGOPT_OPT_SCHEDULE, "optimizer.schedule", TI, 0, 2, 0, 0, ALL_KINDS},
    {REGOPT_OPT_WARMUP_STEPS, "optimizer.warmup_steps", TI, 0, TWO53, 0, 0, ALL_KINDS},
    {REGOPT_OPT_TOTAL_STEPS, "optimizer.total_steps", TI, 0, TWO53, 0, 0, ALL_KINDS},
    {REGOPT_OPT_MIN_LR_RATIO, "optimizer.min_lr_ratio", TD, 0, 1, 0, 0, ALL_KINDS},
    {REGOPT_OPT_CLIP_NORM, "optimizer.clip_norm", TD, 0, 1e30, 0, 0, ALL_KINDS},
    {REGOPT_GROUP_LR_SCALE, "group.lr_scale", TD, 0, 1e6, 1, GRP, ALL_KINDS},
    {REGOPT_GROUP_WEIGHT_DECAY, "group.weight_decay", TD, -1, 1e3, -1, GRP, ALL_KINDS},
};
#define N_KEYS (sizeof KEYS / sizeof KEYS[0])

static const regopt_optimizer_kind ALL[4] = {REGOPT_SGD, REGOPT_ADAM, REGOPT_ADAMW,
                                             REGOPT_RADAM};

static regopt_optimizer *new_opt(regopt_optimizer_kind kind)
{
    regopt_status st = REGOPT_ERR_STATE;
    regopt_optimizer *o = regopt_optimizer_create(kind, NULL, &st);
    ck_assert_ptr_nonnull(o);
    ck_assert_int_eq(st, REGOPT_OK);
    ck_assert_int_eq(regopt_optimizer_get_kind(o), kind);
    return o;
}

static int is_group_key(const key_spec *k) { return (k->flags & GRP) != 0; }

/* Set/get a key of either family; group < 0 for optimizer keys. */
static regopt_status key_set(regopt_optimizer *o, int32_t group, regopt_key key, double v)
{
    return group < 0 ? regopt_optimizer_set_double(o, key, v)
                     : regopt_optimizer_set_group(o, group, key, v);
}

static double key_get(const regopt_optimizer *o, int32_t group, regopt_key key)
{
    double v = NAN;
    regopt_status st = group < 0 ? regopt_optimizer_get_double(o, key, &v)
                                 : regopt_optimizer_get_group(o, group, key, &v);
    ck_assert_msg(st == REGOPT_OK, "get key %d: %s", (int)key, regopt_optimizer_message(o));
    return v;
}

static void expect_accepted(regopt_optimizer *o, int32_t group, const key_spec *k, double v)
{
    regopt_status st = key_set(o, group, k->key, v);
    ck_assert_msg(st == REGOPT_OK, "%s (kind %d, group %d) = %.17g refused: %d %s", k->name,
                  (int)regopt_optimizer_get_kind(o), (int)group, v, (int)st,
                  regopt_optimizer_message(o));
    ck_assert_msg(key_get(o, group, k->key) == v, "%s = %.17g reads back %.17g", k->name, v,
                  key_get(o, group, k->key));
}

/* OUT_OF_RANGE, a message naming the key, and the old value kept. */
static void expect_rejected(regopt_optimizer *o, int32_t group, const key_spec *k, double v)
{
    double before = key_get(o, group, k->key);
    regopt_status st = key_set(o, group, k->key, v);
    const char *msg = regopt_optimizer_message(o);
    ck_assert_msg(st == REGOPT_ERR_OUT_OF_RANGE, "%s (kind %d, group %d) = %.17g: status %d",
                  k->name, (int)regopt_optimizer_get_kind(o), (int)group, v, (int)st);
    ck_assert_msg(msg != NULL && strstr(msg, k->name) != NULL,
                  "%s = %.17g: message \"%s\" does not name the key", k->name, v,
                  msg ? msg : "(null)");
    ck_assert_msg(key_get(o, group, k->key) == before, "%s = %.17g changed the value to %.17g",
                  k->name, v, key_get(o, group, k->key));
}

/* Both edges (inclusive or exclusive), just outside, NaN and infinities,
 * and for integer keys a fraction. */
static void check_edges(regopt_optimizer *o, int32_t group, const key_spec *k)
{
    int is_int = k->type == TI;
    double below = is_int ? k->min - 1.0 : nextafter(k->min, -INFINITY);
    double above = is_int ? k->max + 1.0 : nextafter(k->max, INFINITY);
    if (above == k->max) /* 2^53 + 1 is not a double */
        above = nextafter(k->max, INFINITY);
    if (k->flags & MINX) {
        expect_rejected(o, group, k, k->min);
        expect_accepted(o, group, k, nextafter(k->min, INFINITY));
    } else {
        expect_accepted(o, group, k, k->min);
    }
    expect_rejected(o, group, k, below);
    if (k->flags & MAXX) {
        expect_rejected(o, group, k, k->max);
        expect_accepted(o, group, k, nextafter(k->max, -INFINITY));
    } else {
        expect_accepted(o, group, k, k->max);
    }
    expect_rejected(o, group, k, above);
    expect_rejected(o, group, k, NAN);
    expect_rejected(o, group, k, INFINITY);
    expect_rejected(o, group, k, -INFINITY);
    expect_rejected(o, group, k, -1e300);
    expect_rejected(o, group, k, 1e300);
    if (is_int)
        expect_rejected(o, group, k, k->min + 0.5);
}

START_TEST(test_key_info_matches_header)
{
    size_t i;
    for (i = 0; i < N_KEYS; i++) {
        const key_spec *k = &KEYS[i];
        const char *name = NULL;
        int type = 0;
        double min = NAN, max = NAN, def = NAN;
        uint32_t flags = 0xffffffffu;
        regopt_key back = (regopt_key)0;
        ck_assert_int_eq(regopt_key_info(k->key, &name, &type, &min, &max, &def, &flags),
                         REGOPT_OK);
        ck_assert_str_eq(name, k->name);
        ck_assert_msg(type == k->type, "%s: type %d", k->name, type);
        ck_assert_msg(min == k->min && max == k->max, "%s: bounds [%.17g, %.17g]", k->name,
                      min, max);
        ck_assert_msg(def == k->def, "%s: default %.17g, header %.17g", k->name, def, k->def);
        ck_assert_msg(flags == k->flags, "%s: flags 0x%x", k->name, (unsigned)flags);
        ck_assert_int_eq(regopt_key_from_name(k->name, &back), REGOPT_OK);
        ck_assert_int_eq(back, k->key);
    }
}
END_TEST

/* A new optimizer holds key_info's defaults (AdamW: weight decay 1e-2),
 * which are torch's: lr 1e-3, betas 0.9/0.999, eps 1e-8. */
START_TEST(test_defaults)
{
    int j;
    for (j = 0; j < 4; j++) {
        regopt_optimizer *o = new_opt(ALL[j]);
        size_t i;
        int64_t iv = -1;
        for (i = 0; i < N_KEYS; i++) {
            const key_spec *k = &KEYS[i];
            double info_def = NAN, want;
            if (!(k->kinds & KIND_BIT(ALL[j])))
                continue;
            ck_assert_int_eq(regopt_key_info(k->key, NULL, NULL, NULL, NULL, &info_def, NULL),
                             REGOPT_OK);
            want = (k->key == REGOPT_OPT_WEIGHT_DECAY && ALL[j] == REGOPT_ADAMW) ? 1e-2
                                                                                 : info_def;
            if (is_group_key(k)) {
                ck_assert_msg(key_get(o, 0, k->key) == want, "%s group 0", k->name);
                ck_assert_msg(key_get(o, 1, k->key) == want, "%s group 1", k->name);
                ck_assert_msg(key_get(o, 63, k->key) == want, "%s group 63", k->name);
            } else {
                ck_assert_msg(key_get(o, -1, k->key) == want, "kind %d %s = %.17g, want %.17g",
                              (int)ALL[j], k->name, key_get(o, -1, k->key), want);
            }
            if (k->type == TI) {
                ck_assert_int_eq(regopt_optimizer_get_int(o, k->key, &iv), REGOPT_OK);
                ck_assert_int_eq(iv, (int64_t)want);
            }
        }
        ck_assert(key_get(o, -1, REGOPT_OPT_LR) == 1e-3);
        ck_assert(key_get(o, -1, REGOPT_OPT_WEIGHT_DECAY) == (ALL[j] == REGOPT_ADAMW ? 1e-2 : 0.0));
        ck_assert(key_get(o, -1, REGOPT_OPT_CLIP_NORM) == 0.0);
        ck_assert(key_get(o, -1, REGOPT_OPT_SCHEDULE) == REGOPT_SCHEDULE_CONSTANT);
        if (ALL[j] != REGOPT_SGD) {
            ck_assert(key_get(o, -1, REGOPT_OPT_BETA1) == 0.9);
            ck_assert(key_get(o, -1, REGOPT_OPT_BETA2) == 0.999);
            ck_assert(key_get(o, -1, REGOPT_OPT_EPS) == 1e-8);
        } else {
            ck_assert(key_get(o, -1, REGOPT_OPT_MOMENTUM) == 0.0);
            ck_assert(key_get(o, -1, REGOPT_OPT_DAMPENING) == 0.0);
            ck_assert(key_get(o, -1, REGOPT_OPT_NESTEROV) == 0.0);
        }
        regopt_optimizer_free(o);
    }
}
END_TEST

START_TEST(test_optimizer_key_bounds)
{
    int j;
    for (j = 0; j < 4; j++) {
        regopt_optimizer *o = new_opt(ALL[j]);
        size_t i;
        for (i = 0; i < N_KEYS; i++)
            if (!is_group_key(&KEYS[i]) && (KEYS[i].kinds & KIND_BIT(ALL[j])))
                check_edges(o, -1, &KEYS[i]);
        regopt_optimizer_free(o);
    }
}
END_TEST

START_TEST(test_group_key_bounds)
{
    static const int32_t groups[3] = {0, 5, 63};
    regopt_optimizer *o = new_opt(REGOPT_ADAMW);
    size_t i;
    int g;
    for (g = 0; g < 3; g++)
        for (i = 0; i < N_KEYS; i++)
            if (is_group_key(&KEYS[i]))
                check_edges(o, groups[g], &KEYS[i]);
    /* other groups are untouched */
    ck_assert(key_get(o, 6, REGOPT_GROUP_LR_SCALE) == 1.0);
    ck_assert(key_get(o, 6, REGOPT_GROUP_WEIGHT_DECAY) == -1.0);
    ck_assert(key_get(o, 62, REGOPT_GROUP_LR_SCALE) == 1.0);
    regopt_optimizer_free(o);
}
END_TEST

/* Keys of another kind: momentum/dampening/nesterov on the Adam family,
 * betas/eps/amsgrad on SGD, amsgrad on RAdam. */
START_TEST(test_keys_not_for_kind)
{
    int j;
    for (j = 0; j < 4; j++) {
        regopt_optimizer *o = new_opt(ALL[j]);
        size_t i;
        int n = 0;
        for (i = 0; i < N_KEYS; i++) {
            const key_spec *k = &KEYS[i];
            double v = 0.0;
            int64_t iv = 0;
            if (k->kinds & KIND_BIT(ALL[j]))
                continue;
            n++;
            ck_assert_msg(regopt_optimizer_set_double(o, k->key, k->def) ==
                              REGOPT_ERR_UNKNOWN_KEY, "kind %d: set %s", (int)ALL[j], k->name);
            ck_assert_int_eq(regopt_optimizer_set_int(o, k->key, 0), REGOPT_ERR_UNKNOWN_KEY);
            ck_assert_int_eq(regopt_optimizer_get_double(o, k->key, &v), REGOPT_ERR_UNKNOWN_KEY);
            ck_assert_int_eq(regopt_optimizer_get_int(o, k->key, &iv), REGOPT_ERR_UNKNOWN_KEY);
        }
        /* SGD: beta1, beta2, eps, amsgrad; Adam/AdamW: the 3 SGD keys; RAdam: 4 */
        ck_assert_int_eq(n, ALL[j] == REGOPT_SGD || ALL[j] == REGOPT_RADAM ? 4 : 3);
        regopt_optimizer_free(o);
    }
}
END_TEST

/* Keys of another family through the wrong setter, and unknown numbers. */
START_TEST(test_keys_wrong_family)
{
    regopt_optimizer *o = new_opt(REGOPT_ADAM);
    double v = 0.0;
    ck_assert_int_eq(regopt_optimizer_set_double(o, REGOPT_GROUP_LR_SCALE, 1.0),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_optimizer_get_double(o, REGOPT_GROUP_WEIGHT_DECAY, &v),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_optimizer_set_group(o, 0, REGOPT_OPT_LR, 0.1),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_optimizer_get_group(o, 0, REGOPT_OPT_WEIGHT_DECAY, &v),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_optimizer_set_double(o, REGOPT_TRAINER_SEED, 1.0),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_optimizer_set_double(o, REGOPT_STAT_LR, 1.0),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_optimizer_get_double(o, REGOPT_STAT_LR, &v),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_optimizer_set_double(o, (regopt_key)99999, 1.0),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_optimizer_set_group(o, 0, (regopt_key)149, 1.0),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert(key_get(o, -1, REGOPT_OPT_LR) == 1e-3);
    regopt_optimizer_free(o);
}
END_TEST

/* Integer keys take a double only when it is integral. */
START_TEST(test_int_keys_reject_fractions)
{
    static const regopt_key keys[] = {REGOPT_OPT_NESTEROV, REGOPT_OPT_SCHEDULE,
                                      REGOPT_OPT_WARMUP_STEPS, REGOPT_OPT_TOTAL_STEPS};
    regopt_optimizer *o = new_opt(REGOPT_SGD);
    regopt_optimizer *a = new_opt(REGOPT_ADAM);
    int64_t iv = -1;
    size_t i;
    set_opt(o, REGOPT_OPT_SCHEDULE, 1);
    set_opt(o, REGOPT_OPT_WARMUP_STEPS, 7);
    set_opt(o, REGOPT_OPT_TOTAL_STEPS, 100);
    for (i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        double before = key_get(o, -1, keys[i]);
        ck_assert_int_eq(regopt_optimizer_set_double(o, keys[i], 0.5), REGOPT_ERR_OUT_OF_RANGE);
        ck_assert_int_eq(regopt_optimizer_set_double(o, keys[i], 1.0 + 1e-9),
                         REGOPT_ERR_OUT_OF_RANGE);
        ck_assert(key_get(o, -1, keys[i]) == before);
    }
    ck_assert_int_eq(regopt_optimizer_set_double(o, REGOPT_OPT_WARMUP_STEPS, 2.5),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_optimizer_get_int(o, REGOPT_OPT_WARMUP_STEPS, &iv), REGOPT_OK);
    ck_assert_int_eq(iv, 7);
    ck_assert_int_eq(regopt_optimizer_get_int(o, REGOPT_OPT_SCHEDULE, &iv), REGOPT_OK);
    ck_assert_int_eq(iv, REGOPT_SCHEDULE_LINEAR);
    ck_assert_int_eq(regopt_optimizer_set_double(a, REGOPT_OPT_AMSGRAD, 0.25),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert(key_get(a, -1, REGOPT_OPT_AMSGRAD) == 0.0);
    /* integral doubles are fine */
    ck_assert_int_eq(regopt_optimizer_set_double(o, REGOPT_OPT_WARMUP_STEPS, 3.0), REGOPT_OK);
    ck_assert_int_eq(regopt_optimizer_get_int(o, REGOPT_OPT_WARMUP_STEPS, &iv), REGOPT_OK);
    ck_assert_int_eq(iv, 3);
    regopt_optimizer_free(o);
    regopt_optimizer_free(a);
}
END_TEST

/* set_int: the edges of the integer keys, exactly (2^53 is the limit). */
START_TEST(test_set_int_edges)
{
    const int64_t two53 = (int64_t)1 << 53;
    regopt_optimizer *o = new_opt(REGOPT_SGD);
    int64_t iv = -1;
    ck_assert_int_eq(regopt_optimizer_set_int(o, REGOPT_OPT_WARMUP_STEPS, two53), REGOPT_OK);
    ck_assert_int_eq(regopt_optimizer_get_int(o, REGOPT_OPT_WARMUP_STEPS, &iv), REGOPT_OK);
    ck_assert(iv == two53);
    ck_assert_int_eq(regopt_optimizer_set_int(o, REGOPT_OPT_WARMUP_STEPS, 5), REGOPT_OK);
    ck_assert_int_eq(regopt_optimizer_set_int(o, REGOPT_OPT_WARMUP_STEPS, -1),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_optimizer_set_int(o, REGOPT_OPT_WARMUP_STEPS, INT64_MAX),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_optimizer_set_int(o, REGOPT_OPT_WARMUP_STEPS, INT64_MIN),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_optimizer_set_int(o, REGOPT_OPT_NESTEROV, 2),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_optimizer_set_int(o, REGOPT_OPT_SCHEDULE, 3),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_optimizer_set_int(o, REGOPT_OPT_SCHEDULE, 2), REGOPT_OK);
    /* 2^53 + 1 is outside [0, 2^53]; it must not be rounded into range */
    ck_assert_msg(regopt_optimizer_set_int(o, REGOPT_OPT_TOTAL_STEPS, two53 + 1) ==
                      REGOPT_ERR_OUT_OF_RANGE,
                  "optimizer.total_steps = 2^53+1 accepted");
    ck_assert_int_eq(regopt_optimizer_get_int(o, REGOPT_OPT_TOTAL_STEPS, &iv), REGOPT_OK);
    ck_assert(iv == 0);
    ck_assert_int_eq(regopt_optimizer_get_int(o, REGOPT_OPT_WARMUP_STEPS, &iv), REGOPT_OK);
    ck_assert(iv == 5);
    regopt_optimizer_free(o);
}
END_TEST

/* Double keys accept integers (and the bounds still apply). */
START_TEST(test_double_keys_accept_ints)
{
    regopt_optimizer *o = new_opt(REGOPT_SGD);
    ck_assert_int_eq(regopt_optimizer_set_int(o, REGOPT_OPT_LR, 2), REGOPT_OK);
    ck_assert(key_get(o, -1, REGOPT_OPT_LR) == 2.0);
    ck_assert_int_eq(regopt_optimizer_set_int(o, REGOPT_OPT_LR, 0), REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_optimizer_set_int(o, REGOPT_OPT_LR, 1001), REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_optimizer_set_int(o, REGOPT_OPT_MOMENTUM, 1),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_optimizer_set_int(o, REGOPT_OPT_DAMPENING, 1), REGOPT_OK);
    ck_assert(key_get(o, -1, REGOPT_OPT_DAMPENING) == 1.0);
    ck_assert(key_get(o, -1, REGOPT_OPT_LR) == 2.0);
    regopt_optimizer_free(o);
}
END_TEST

START_TEST(test_null_handle)
{
    double v = 0.0;
    int64_t iv = 0;
    ck_assert_int_eq(regopt_optimizer_set_double(NULL, REGOPT_OPT_LR, 0.1),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_str_ne(regopt_last_error_message(), "");
    ck_assert_int_eq(regopt_optimizer_set_int(NULL, REGOPT_OPT_SCHEDULE, 1),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_optimizer_get_double(NULL, REGOPT_OPT_LR, &v),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_optimizer_get_int(NULL, REGOPT_OPT_SCHEDULE, &iv),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_optimizer_set_group(NULL, 0, REGOPT_GROUP_LR_SCALE, 1.0),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_optimizer_get_group(NULL, 0, REGOPT_GROUP_LR_SCALE, &v),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_optimizer_get_double(NULL, REGOPT_OPT_LR, NULL),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq((int)regopt_optimizer_get_kind(NULL), 0);
    ck_assert_ptr_nonnull(regopt_optimizer_message(NULL));
    regopt_optimizer_free(NULL);
}
END_TEST

START_TEST(test_create_invalid_kind)
{
    static const int bad[4] = {0, 6, -1, 100}; /* 5 is REGOPT_HOST since 1.0 */
    int j;
    for (j = 0; j < 4; j++) {
        regopt_status st = REGOPT_OK;
        regopt_optimizer *o = regopt_optimizer_create((regopt_optimizer_kind)bad[j], NULL, &st);
        ck_assert_msg(o == NULL, "kind %d created", bad[j]);
        ck_assert_msg(st != REGOPT_OK && st != REGOPT_ERR_NO_MEMORY, "kind %d: status %d",
                      bad[j], (int)st);
        ck_assert_str_ne(regopt_last_error_message(), "");
        ck_assert_ptr_null(regopt_optimizer_create((regopt_optimizer_kind)bad[j], NULL, NULL));
    }
}
END_TEST

START_TEST(test_get_null_value)
{
    regopt_optimizer *o = new_opt(REGOPT_SGD);
    ck_assert_int_eq(regopt_optimizer_get_double(o, REGOPT_OPT_LR, NULL),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_optimizer_get_int(o, REGOPT_OPT_NESTEROV, NULL),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_optimizer_get_group(o, 0, REGOPT_GROUP_LR_SCALE, NULL),
                     REGOPT_ERR_NULL_POINTER);
    regopt_optimizer_free(o);
}
END_TEST

START_TEST(test_group_out_of_range)
{
    static const int32_t bad[4] = {-1, REGOPT_MAX_GROUPS, INT32_MAX, INT32_MIN};
    regopt_optimizer *o = new_opt(REGOPT_ADAM);
    double v = 0.0;
    int j;
    for (j = 0; j < 4; j++) {
        ck_assert_int_eq(regopt_optimizer_set_group(o, bad[j], REGOPT_GROUP_LR_SCALE, 0.5),
                         REGOPT_ERR_OUT_OF_RANGE);
        ck_assert_int_eq(regopt_optimizer_set_group(o, bad[j], REGOPT_GROUP_WEIGHT_DECAY, 0.0),
                         REGOPT_ERR_OUT_OF_RANGE);
        ck_assert_int_eq(regopt_optimizer_get_group(o, bad[j], REGOPT_GROUP_LR_SCALE, &v),
                         REGOPT_ERR_OUT_OF_RANGE);
    }
    set_group(o, 0, REGOPT_GROUP_LR_SCALE, 0.5);
    set_group(o, REGOPT_MAX_GROUPS - 1, REGOPT_GROUP_LR_SCALE, 0.25);
    ck_assert(key_get(o, 0, REGOPT_GROUP_LR_SCALE) == 0.5);
    ck_assert(key_get(o, REGOPT_MAX_GROUPS - 1, REGOPT_GROUP_LR_SCALE) == 0.25);
    regopt_optimizer_free(o);
}
END_TEST

void optim_keys_tcases(Suite *s)
{
    TCase *opts = tcase_create("options");
    tcase_add_test(opts, test_key_info_matches_header);
    tcase_add_test(opts, test_defaults);
    tcase_add_test(opts, test_optimizer_key_bounds);
    tcase_add_test(opts, test_group_key_bounds);
    tcase_add_test(opts, test_keys_not_for_kind);
    tcase_add_test(opts, test_keys_wrong_family);
    tcase_add_test(opts, test_int_keys_reject_fractions);
    tcase_add_test(opts, test_set_int_edges);
    tcase_add_test(opts, test_double_keys_accept_ints);
    tcase_add_test(opts, test_null_handle);
    tcase_add_test(opts, test_create_invalid_kind);
    tcase_add_test(opts, test_get_null_value);
    tcase_add_test(opts, test_group_out_of_range);
    suite_add_tcase(s, opts);
}
