/* check_status.c — versions, status codes, messages and the key table
 * (the regularizer handles' bad inputs: check_status_regularizer.c). */
#include "tests.h"
#include "test_util.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

START_TEST(version_matches_header)
{
    char expect[32];
    snprintf(expect, sizeof expect, "%d.%d.%d", REGOPT_VERSION_MAJOR, REGOPT_VERSION_MINOR,
             REGOPT_VERSION_PATCH);
    ck_assert_uint_eq(regopt_version_number(), REGOPT_VERSION_NUMBER);
    ck_assert_uint_eq(REGOPT_VERSION_NUMBER, REGOPT_VERSION_MAJOR * 10000u +
                                                 REGOPT_VERSION_MINOR * 100u +
                                                 REGOPT_VERSION_PATCH);
    ck_assert_str_eq(regopt_version_string(), expect);
    ck_assert_str_eq(REGOPT_VERSION_STRING, expect);
}
END_TEST

START_TEST(status_codes_are_fixed_and_named)
{
    /* values are ABI: they must never move */
    static const struct { regopt_status st; int value; const char *name; } codes[] = {
        {REGOPT_OK, 0, "REGOPT_OK"},
        {REGOPT_ERR_NULL_POINTER, -1, "REGOPT_ERR_NULL_POINTER"},
        {REGOPT_ERR_INVALID_ARGUMENT, -2, "REGOPT_ERR_INVALID_ARGUMENT"},
        {REGOPT_ERR_OUT_OF_RANGE, -3, "REGOPT_ERR_OUT_OF_RANGE"},
        {REGOPT_ERR_UNKNOWN_KEY, -4, "REGOPT_ERR_UNKNOWN_KEY"},
        {REGOPT_ERR_UNSUPPORTED, -5, "REGOPT_ERR_UNSUPPORTED"},
        {REGOPT_ERR_NO_MEMORY, -6, "REGOPT_ERR_NO_MEMORY"},
        {REGOPT_ERR_STATE, -7, "REGOPT_ERR_STATE"},
        {REGOPT_ERR_FORWARD, -8, "REGOPT_ERR_FORWARD"},
        {REGOPT_ERR_BACKWARD, -9, "REGOPT_ERR_BACKWARD"},
        {REGOPT_ERR_LOSS_CALLBACK, -10, "REGOPT_ERR_LOSS_CALLBACK"},
        {REGOPT_ERR_NONFINITE_LOSS, -11, "REGOPT_ERR_NONFINITE_LOSS"},
        {REGOPT_ERR_NONFINITE_GRADIENT, -12, "REGOPT_ERR_NONFINITE_GRADIENT"},
        {REGOPT_ERR_ALLREDUCE, -13, "REGOPT_ERR_ALLREDUCE"},
        {REGOPT_ERR_CORRUPT, -14, "REGOPT_ERR_CORRUPT"},
        {REGOPT_ERR_MISMATCH, -15, "REGOPT_ERR_MISMATCH"},
        {REGOPT_ERR_IO, -16, "REGOPT_ERR_IO"},
    };
    size_t i;
    for (i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        const char *s = regopt_status_string(codes[i].st);
        ck_assert_int_eq((int)codes[i].st, codes[i].value);
        ck_assert_ptr_nonnull(s);
        ck_assert_msg(strncmp(s, codes[i].name, strlen(codes[i].name)) == 0 &&
                          s[strlen(codes[i].name)] == ':',
                      "status %d is named \"%s\"", codes[i].value, s);
    }
    ck_assert_str_eq(regopt_status_string((regopt_status)-999), "unknown status");
    ck_assert_str_eq(regopt_status_string((regopt_status)5), "unknown status");
}
END_TEST

START_TEST(thread_message_after_failed_create)
{
    regopt_status st = REGOPT_OK;
    regopt_optimizer *o = regopt_optimizer_create((regopt_optimizer_kind)42, NULL, &st);
    ck_assert_ptr_null(o);
    ck_assert_int_eq(st, REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_last_error_message(), "42"));
    /* a NULL status pointer is allowed */
    ck_assert_ptr_null(regopt_optimizer_create((regopt_optimizer_kind)0, NULL, NULL));
}
END_TEST

START_TEST(allocator_needs_both_hooks)
{
    regopt_allocator a = {sizeof(regopt_allocator), NULL, NULL, NULL};
    regopt_status st = REGOPT_OK;
    ck_assert_ptr_null(regopt_model_create(&a, &st));
    ck_assert_int_eq(st, REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_last_error_message(), "alloc and free"));
    a.size = 0; /* forgot to set the size */
    ck_assert_ptr_null(regopt_optimizer_create(REGOPT_SGD, &a, &st));
    ck_assert_int_eq(st, REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_last_error_message(), "sizeof(regopt_allocator)"));
}
END_TEST

/* Every key the header declares. */
static const regopt_key all_keys[] = {
    REGOPT_OPT_LR, REGOPT_OPT_WEIGHT_DECAY, REGOPT_OPT_MOMENTUM, REGOPT_OPT_DAMPENING,
    REGOPT_OPT_NESTEROV, REGOPT_OPT_BETA1, REGOPT_OPT_BETA2, REGOPT_OPT_EPS,
    REGOPT_OPT_AMSGRAD, REGOPT_OPT_SCHEDULE, REGOPT_OPT_WARMUP_STEPS, REGOPT_OPT_TOTAL_STEPS,
    REGOPT_OPT_MIN_LR_RATIO, REGOPT_OPT_CLIP_NORM, REGOPT_GROUP_LR_SCALE,
    REGOPT_GROUP_WEIGHT_DECAY, REGOPT_TRAINER_LOSS, REGOPT_TRAINER_LABEL_SMOOTHING,
    REGOPT_TRAINER_SEED, REGOPT_TRAINER_THREADS, REGOPT_STAT_LOSS, REGOPT_STAT_OBJECTIVE,
    REGOPT_STAT_GRAD_NORM, REGOPT_STAT_CLIP_SCALE, REGOPT_STAT_LR, REGOPT_STAT_STEP,
    REGOPT_STAT_WEIGHT, REGOPT_STAT_FORWARD_CALLS, REGOPT_STAT_BACKWARD_CALLS,
    /* SAM */
    REGOPT_SAM_GROUP_ADAPTIVE, REGOPT_SAM_RHO, REGOPT_SAM_DELTA, REGOPT_SAM_ADAPTIVE,
    REGOPT_SAM_ETA, REGOPT_SAM_GSAM, REGOPT_SAM_GSAM_ALPHA, REGOPT_SAM_RHO_MIN,
    REGOPT_SAM_RHO_FOLLOWS_LR, REGOPT_SAM_EVERY, REGOPT_SAM_M_ROWS, REGOPT_SAM_SAME_SEED,
    REGOPT_SAM_ASCENT_WEIGHT_DECAY, REGOPT_SAM_SYNC_ASCENT, REGOPT_SAM_DIRECTION,
    REGOPT_SAM_FRIENDLY_SIGMA, REGOPT_SAM_FRIENDLY_LAMBDA, REGOPT_SAM_VASSO_THETA,
    REGOPT_SAM_WSAM, REGOPT_SAM_WSAM_GAMMA, REGOPT_SAM_LOOKSAM, REGOPT_SAM_LOOKSAM_ALPHA,
    REGOPT_SAM_MOMENTUM, REGOPT_SAM_GROUP_PERTURB, REGOPT_STAT_SAM_CLEAN_LOSS,
    REGOPT_STAT_SAM_PERTURBED_LOSS, REGOPT_STAT_SAM_SHARPNESS, REGOPT_STAT_SAM_ASCENT_NORM,
    REGOPT_STAT_SAM_RHO, REGOPT_STAT_SAM_APPLIED,
    /* R-Drop */
    REGOPT_RDROP_ALPHA, REGOPT_RDROP_CE_WEIGHT, REGOPT_RDROP_KL_SUM, REGOPT_RDROP_EVERY,
    REGOPT_RDROP_DOUBLED, REGOPT_STAT_RDROP_LOSS1, REGOPT_STAT_RDROP_LOSS2,
    REGOPT_STAT_RDROP_CONSISTENCY, REGOPT_STAT_RDROP_APPLIED,
    /* SMART */
    REGOPT_SMART_LAMBDA, REGOPT_SMART_EPSILON, REGOPT_SMART_SIGMA, REGOPT_SMART_ETA,
    REGOPT_SMART_STEPS, REGOPT_SMART_NORM, REGOPT_SMART_MTDNN, REGOPT_SMART_STABLE_KL,
    REGOPT_SMART_SAME_SEED, REGOPT_SMART_DETACH_TARGET, REGOPT_STAT_SMART_RS,
    REGOPT_STAT_SMART_NOISE_NORM,
    /* adversarial training */
    REGOPT_ADV_METHOD, REGOPT_ADV_ALPHA, REGOPT_ADV_EPSILON, REGOPT_ADV_STEP, REGOPT_ADV_STEPS,
    REGOPT_ADV_INIT_MAG, REGOPT_ADV_NORM, REGOPT_ADV_SCOPE, REGOPT_ADV_OBJECTIVE,
    REGOPT_ADV_INIT, REGOPT_ADV_PARAM_GRAD, REGOPT_ADV_CLEAN_PASS, REGOPT_ADV_SAME_SEED,
    REGOPT_STAT_ADV_LOSS, REGOPT_STAT_ADV_NORM,
    /* Bregman */
    REGOPT_BREGMAN_MU, REGOPT_BREGMAN_BETA, REGOPT_BREGMAN_BETA_LATE, REGOPT_BREGMAN_SWITCH,
    REGOPT_BREGMAN_SWITCH_STEP, REGOPT_BREGMAN_DIVERGENCE, REGOPT_BREGMAN_TAU,
    REGOPT_BREGMAN_START_STEP, REGOPT_BREGMAN_END_STEP, REGOPT_STAT_BREGMAN_D,
    REGOPT_STAT_BREGMAN_BETA,
    /* user-defined terms */
    REGOPT_TERM_WEIGHT, REGOPT_STAT_TERM_VALUE,
    /* weight averaging */
    REGOPT_AVERAGE_MODE, REGOPT_AVERAGE_DECAY, REGOPT_AVERAGE_WARMUP,
    REGOPT_AVERAGE_WARMUP_GAMMA, REGOPT_AVERAGE_WARMUP_POWER, REGOPT_AVERAGE_MIN_DECAY,
    REGOPT_AVERAGE_START, REGOPT_AVERAGE_EVERY, REGOPT_STAT_AVERAGE_COUNT,
    REGOPT_STAT_AVERAGE_DECAY};

#define N_ALL_KEYS (sizeof all_keys / sizeof all_keys[0])

/* The key ranges of regopt.h: statistics are 900..999 and the tail of each
 * regularizer's range; group keys are 150..199 and the SAM group key. */
static int is_stat_key(regopt_key k)
{
    return (k >= 900 && k < 1000) || (k >= 1090 && k < 1100) || (k >= 1190 && k < 1200) ||
           (k >= 1240 && k < 1250) || (k >= 1290 && k < 1300) || (k >= 1390 && k < 1400) ||
           (k >= 1490 && k < 1500) || (k >= 1590 && k < 1600);
}

static int is_group_key(regopt_key k)
{
    return (k >= 150 && k < 200) || k == REGOPT_SAM_GROUP_ADAPTIVE ||
           k == REGOPT_SAM_GROUP_PERTURB;
}

START_TEST(key_values_are_fixed)
{
    ck_assert_int_eq(REGOPT_OPT_LR, 100);
    ck_assert_int_eq(REGOPT_OPT_CLIP_NORM, 130);
    ck_assert_int_eq(REGOPT_GROUP_LR_SCALE, 150);
    ck_assert_int_eq(REGOPT_TRAINER_LOSS, 300);
    ck_assert_int_eq(REGOPT_TRAINER_SEED, 302);
    ck_assert_int_eq(REGOPT_TRAINER_THREADS, 303);
    ck_assert_int_eq(REGOPT_STAT_LOSS, 900);
    ck_assert_int_eq(REGOPT_STAT_BACKWARD_CALLS, 908);
    ck_assert_int_eq(REGOPT_SAM_RHO, 1000);
    ck_assert_int_eq(REGOPT_SAM_SYNC_ASCENT, 1012);
    ck_assert_int_eq(REGOPT_SAM_GROUP_ADAPTIVE, 1050);
    ck_assert_int_eq(REGOPT_STAT_SAM_CLEAN_LOSS, 1090);
    ck_assert_int_eq(REGOPT_STAT_SAM_APPLIED, 1095);
    ck_assert_int_eq(REGOPT_RDROP_ALPHA, 1100);
    ck_assert_int_eq(REGOPT_RDROP_DOUBLED, 1104);
    ck_assert_int_eq(REGOPT_STAT_RDROP_LOSS1, 1190);
    ck_assert_int_eq(REGOPT_STAT_RDROP_APPLIED, 1193);
    ck_assert_int_eq(REGOPT_SMART_LAMBDA, 1200);
    ck_assert_int_eq(REGOPT_SMART_SAME_SEED, 1208);
    ck_assert_int_eq(REGOPT_SMART_DETACH_TARGET, 1209);
    ck_assert_int_eq(REGOPT_ADV_METHOD, 1500);
    ck_assert_int_eq(REGOPT_ADV_SAME_SEED, 1512);
    ck_assert_int_eq(REGOPT_STAT_ADV_LOSS, 1590);
    ck_assert_int_eq(REGOPT_STAT_ADV_NORM, 1591);
    ck_assert_int_eq(REGOPT_REG_ADVERSARIAL, 7);
    ck_assert_int_eq(REGOPT_STAT_SMART_RS, 1240);
    ck_assert_int_eq(REGOPT_STAT_SMART_NOISE_NORM, 1241);
    ck_assert_int_eq(REGOPT_BREGMAN_MU, 1250);
    ck_assert_int_eq(REGOPT_BREGMAN_SWITCH_STEP, 1254);
    ck_assert_int_eq(REGOPT_BREGMAN_DIVERGENCE, 1255);
    ck_assert_int_eq(REGOPT_BREGMAN_END_STEP, 1258);
    ck_assert_int_eq(REGOPT_AVERAGE_MODE, 1400);
    ck_assert_int_eq(REGOPT_AVERAGE_EVERY, 1407);
    ck_assert_int_eq(REGOPT_STAT_AVERAGE_COUNT, 1490);
    ck_assert_int_eq(REGOPT_STAT_AVERAGE_DECAY, 1491);
    ck_assert_int_eq(REGOPT_REG_AVERAGE, 6);
    ck_assert_uint_eq(REGOPT_PASS_RECALIBRATE, 0x80u);
    ck_assert_int_eq(REGOPT_STAT_BREGMAN_D, 1290);
    ck_assert_int_eq(REGOPT_STAT_BREGMAN_BETA, 1291);
    ck_assert_int_eq(REGOPT_TERM_WEIGHT, 1300);
    ck_assert_int_eq(REGOPT_STAT_TERM_VALUE, 1390);
    ck_assert_int_eq(REGOPT_REG_SAM, 1);
    ck_assert_int_eq(REGOPT_REG_RDROP, 2);
    ck_assert_int_eq(REGOPT_REG_SMART, 3);
    ck_assert_int_eq(REGOPT_REG_BREGMAN, 4);
    ck_assert_int_eq(REGOPT_REG_TERM, 5);
    ck_assert_uint_eq(REGOPT_REG_WEIGHT_SIDE, 0x1);
    ck_assert_uint_eq(REGOPT_REG_SINGLE, 0x2);
    ck_assert_int_eq(REGOPT_TERM_MAX_PASSES, 8);
    ck_assert_uint_eq(REGOPT_TERM_PASS_FRESH_SEED, 0x1);
    ck_assert_uint_eq(REGOPT_TERM_PASS_EVAL, 0x2);
    ck_assert_uint_eq(REGOPT_TERM_PASS_NO_GRAD, 0x4);
    ck_assert_int_eq(REGOPT_PASS_NO_PARAM_GRAD, 0x10);
    ck_assert_int_eq(REGOPT_DTYPE_FLOAT32, 1);
    ck_assert_int_eq(REGOPT_RADAM, 4);
}
END_TEST

START_TEST(every_key_has_a_name_that_round_trips)
{
    size_t i;
    for (i = 0; i < N_ALL_KEYS; i++) {
        const char *name = NULL;
        int type = 0;
        double lo = NAN, hi = NAN, def = NAN;
        uint32_t flags = 99;
        regopt_key back = (regopt_key)0;
        ck_assert_msg(regopt_key_info(all_keys[i], &name, &type, &lo, &hi, &def, &flags) ==
                          REGOPT_OK,
                      "key %d: %s", (int)all_keys[i], regopt_last_error_message());
        ck_assert_ptr_nonnull(name);
        ck_assert(type == REGOPT_TYPE_DOUBLE || type == REGOPT_TYPE_INT);
        ck_assert_msg(lo <= def && def <= hi, "%s default %g outside [%g, %g]", name, def,
                      lo, hi);
        ck_assert_int_eq(regopt_key_from_name(name, &back), REGOPT_OK);
        ck_assert_int_eq(back, all_keys[i]);
        ck_assert_msg(!!(flags & REGOPT_KEY_READ_ONLY) == is_stat_key(all_keys[i]),
                      "%s: read-only flag %u", name, (unsigned)(flags & REGOPT_KEY_READ_ONLY));
        ck_assert_msg(!!(flags & REGOPT_KEY_GROUP) == is_group_key(all_keys[i]),
                      "%s: group flag %u", name, (unsigned)(flags & REGOPT_KEY_GROUP));
    }
    /* out pointers are optional */
    ck_assert_int_eq(regopt_key_info(REGOPT_OPT_LR, NULL, NULL, NULL, NULL, NULL, NULL),
                     REGOPT_OK);
    /* the retired 0.x statistics 909..922 and the 0.x group key are gone */
    for (i = 909; i <= 922; i++)
        ck_assert_int_eq(regopt_key_info((regopt_key)i, NULL, NULL, NULL, NULL, NULL, NULL),
                         REGOPT_ERR_UNKNOWN_KEY);
    {
        regopt_key k = REGOPT_OPT_LR;
        ck_assert_int_eq(regopt_key_from_name("group.sam_adaptive", &k), REGOPT_ERR_UNKNOWN_KEY);
        ck_assert_int_eq(k, REGOPT_OPT_LR);
    }
}
END_TEST

/* The handle a key belongs to, by its name's prefix (regopt_key_at), and
 * the number range the header gives that handle. */
static const struct {
    const char *prefix;
    int lo, hi;
} key_owners[] = {
    {"optimizer.", 100, 149}, {"group.", 150, 199},    {"trainer.", 300, 399},
    {"stat.", 900, 999},      {"sam.", 1000, 1099},    {"rdrop.", 1100, 1199},
    {"smart.", 1200, 1249},   {"bregman.", 1250, 1299}, {"term.", 1300, 1399},
    {"average.", 1400, 1499},
    {"adv.", 1500, 1599},
};

START_TEST(key_at_lists_every_key)
{
    regopt_key listed[1024];
    size_t n = 0, i, j;
    int saw_rho = 0, saw_term_weight = 0;
    regopt_status st = REGOPT_OK;
    for (;;) {
        regopt_key k = (regopt_key)-1, back = (regopt_key)-1;
        const char *name = NULL;
        uint32_t flags = 0;
        int owner = -1;
        ck_assert_msg(n < sizeof listed / sizeof listed[0], "regopt_key_at does not end");
        st = regopt_key_at(n, &k);
        if (st != REGOPT_OK)
            break;
        ck_assert_msg(regopt_key_info(k, &name, NULL, NULL, NULL, NULL, &flags) == REGOPT_OK,
                      "key_at(%zu) = %d has no info: %s", n, (int)k,
                      regopt_last_error_message());
        ck_assert_ptr_nonnull(name);
        ck_assert_msg(regopt_key_from_name(name, &back) == REGOPT_OK && back == k,
                      "key_at(%zu) = %d \"%s\" does not round-trip (got %d)", n, (int)k, name,
                      (int)back);
        for (j = 0; j < sizeof key_owners / sizeof key_owners[0]; j++)
            if (strncmp(name, key_owners[j].prefix, strlen(key_owners[j].prefix)) == 0)
                owner = (int)j;
        ck_assert_msg(owner >= 0, "key %d \"%s\" has no handle prefix", (int)k, name);
        ck_assert_msg(k >= key_owners[owner].lo && k <= key_owners[owner].hi,
                      "key %d \"%s\" outside the range of %s keys", (int)k, name,
                      key_owners[owner].prefix);
        ck_assert_msg(!!(flags & REGOPT_KEY_READ_ONLY) == is_stat_key(k),
                      "%s: read-only flag", name);
        ck_assert_msg(!!(flags & REGOPT_KEY_GROUP) == is_group_key(k), "%s: group flag", name);
        for (j = 0; j < n; j++)
            ck_assert_msg(listed[j] != k, "key %d \"%s\" listed twice", (int)k, name);
        saw_rho |= strcmp(name, "sam.rho") == 0;
        saw_term_weight |= strcmp(name, "term.weight") == 0;
        listed[n++] = k;
    }
    ck_assert_int_eq(st, REGOPT_ERR_OUT_OF_RANGE);
    ck_assert(saw_rho);
    ck_assert(saw_term_weight);
    /* every key of the header is listed */
    for (i = 0; i < N_ALL_KEYS; i++) {
        int found = 0;
        for (j = 0; j < n; j++)
            found |= listed[j] == all_keys[i];
        ck_assert_msg(found, "key %d is not listed by regopt_key_at", (int)all_keys[i]);
    }
    /* past the end, far past it, and a NULL out pointer */
    {
        regopt_key k = (regopt_key)0;
        ck_assert_int_eq(regopt_key_at(n, &k), REGOPT_ERR_OUT_OF_RANGE);
        ck_assert_int_eq(regopt_key_at(n + 1, &k), REGOPT_ERR_OUT_OF_RANGE);
        ck_assert_int_eq(regopt_key_at(SIZE_MAX, &k), REGOPT_ERR_OUT_OF_RANGE);
        ck_assert_int_eq(regopt_key_at(0, NULL), REGOPT_ERR_NULL_POINTER);
        /* the listing is stable */
        MUST(regopt_key_at(0, &k));
        ck_assert_int_eq(k, listed[0]);
        MUST(regopt_key_at(n - 1, &k));
        ck_assert_int_eq(k, listed[n - 1]);
    }
}
END_TEST

START_TEST(regularizer_kind_info_lists_the_kinds)
{
    static const struct { regopt_regularizer_kind kind; const char *name; uint32_t flags; }
    want[] = {
        {REGOPT_REG_SAM, "sam", REGOPT_REG_WEIGHT_SIDE | REGOPT_REG_SINGLE},
        {REGOPT_REG_RDROP, "rdrop", REGOPT_REG_SINGLE},
        {REGOPT_REG_SMART, "smart", REGOPT_REG_SINGLE},
        {REGOPT_REG_BREGMAN, "bregman", REGOPT_REG_SINGLE},
        {REGOPT_REG_TERM, "term", 0},
        {REGOPT_REG_AVERAGE, "average", REGOPT_REG_SINGLE},
        {REGOPT_REG_ADVERSARIAL, "adv", REGOPT_REG_SINGLE},
    };
    size_t i, n = sizeof want / sizeof want[0];
    for (i = 0; i < n; i++) {
        regopt_regularizer_kind kind = (regopt_regularizer_kind)0;
        const char *name = NULL;
        uint32_t flags = 99;
        ck_assert_int_eq(regopt_regularizer_kind_info(i, &kind, &name, &flags), REGOPT_OK);
        ck_assert_int_eq(kind, want[i].kind);
        if (i < 5) /* 1..5 in order; later kinds by their fixed values */
            ck_assert_int_eq(kind, (int)i + 1);
        ck_assert_ptr_nonnull(name);
        ck_assert_str_eq(name, want[i].name);
        ck_assert_uint_eq(flags, want[i].flags);
        /* every out pointer may be NULL */
        ck_assert_int_eq(regopt_regularizer_kind_info(i, NULL, NULL, NULL), REGOPT_OK);
    }
    {
        regopt_regularizer_kind kind = (regopt_regularizer_kind)77;
        const char *name = "x";
        uint32_t flags = 77;
        ck_assert_int_eq(regopt_regularizer_kind_info(n, &kind, &name, &flags),
                         REGOPT_ERR_OUT_OF_RANGE);
        ck_assert_int_eq(regopt_regularizer_kind_info(n + 1, NULL, NULL, NULL),
                         REGOPT_ERR_OUT_OF_RANGE);
        ck_assert_int_eq(regopt_regularizer_kind_info(SIZE_MAX, &kind, &name, &flags),
                         REGOPT_ERR_OUT_OF_RANGE);
    }
}
END_TEST

START_TEST(lr_bounds_are_documented_ones)
{
    double lo, hi, def;
    uint32_t flags;
    const char *name;
    ck_assert_int_eq(regopt_key_info(REGOPT_OPT_LR, &name, NULL, &lo, &hi, &def, &flags),
                     REGOPT_OK);
    ck_assert_str_eq(name, "optimizer.lr");
    ck_assert_double_eq(lo, 0.0);
    ck_assert_double_eq(hi, 1e3);
    ck_assert_double_eq(def, 1e-3);
    ck_assert_uint_eq(flags, REGOPT_KEY_MIN_EXCLUSIVE);
}
END_TEST

START_TEST(unknown_keys_and_names)
{
    regopt_key k = REGOPT_OPT_LR;
    ck_assert_int_eq(regopt_key_info((regopt_key)12345, NULL, NULL, NULL, NULL, NULL, NULL),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_ptr_nonnull(strstr(regopt_last_error_message(), "12345"));
    ck_assert_int_eq(regopt_key_from_name("optimizer.nope", &k), REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(k, REGOPT_OPT_LR);
    ck_assert_ptr_nonnull(strstr(regopt_last_error_message(), "optimizer.nope"));
    ck_assert_int_eq(regopt_key_from_name(NULL, &k), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_key_from_name("optimizer.lr", NULL), REGOPT_ERR_NULL_POINTER);
    /* a kind's name alone is no key, nor an unknown key of a kind */
    ck_assert_int_eq(regopt_key_from_name("sam", &k), REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_key_from_name("sam.nope", &k), REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(k, REGOPT_OPT_LR);
}
END_TEST

START_TEST(struct_sizes_for_bindings)
{
    regopt_batch b;
    memset(&b, 0xab, sizeof b);
    regopt_batch_init(&b);
    ck_assert_uint_eq(b.size, sizeof(regopt_batch));
    ck_assert_ptr_null(b.labels);
    ck_assert_uint_eq(b.rows, 0);
    regopt_batch_init(NULL);
    ck_assert_uint_eq(regopt_sizeof_batch(), sizeof(regopt_batch));
    ck_assert_uint_eq(regopt_sizeof_pass(), sizeof(regopt_pass));
    ck_assert_uint_eq(regopt_sizeof_allocator(), sizeof(regopt_allocator));
    ck_assert_uint_eq(regopt_sizeof_term_ops(), sizeof(regopt_term_ops));
    ck_assert_uint_eq(regopt_sizeof_term_view(), sizeof(regopt_term_view));
    ck_assert_uint_eq(sizeof(regopt_key), 4); /* an int32_t since 1.0 */
}
END_TEST

START_TEST(free_null_is_a_noop)
{
    regopt_model_free(NULL);
    regopt_optimizer_free(NULL);
    regopt_trainer_free(NULL);
    ck_assert_str_eq(regopt_model_message(NULL), "invalid regopt_model handle");
    ck_assert_str_eq(regopt_optimizer_message(NULL), "invalid regopt_optimizer handle");
    ck_assert_str_eq(regopt_trainer_message(NULL), "invalid regopt_trainer handle");
    ck_assert_uint_eq(regopt_model_param_count(NULL), 0);
    ck_assert_uint_eq(regopt_model_element_count(NULL), 0);
    ck_assert_int_eq(regopt_optimizer_get_kind(NULL), 0);
    regopt_regularizer_free(NULL);
    ck_assert_str_eq(regopt_regularizer_message(NULL), "invalid regopt_regularizer handle");
    ck_assert_int_eq(regopt_regularizer_get_kind(NULL), 0);
    ck_assert_ptr_null(regopt_regularizer_get_trainer(NULL));
    ck_assert_uint_eq(regopt_trainer_regularizer_count(NULL), 0);
    ck_assert_ptr_null(regopt_trainer_regularizer_at(NULL, 0));
}
END_TEST

Suite *suite_status(void)
{
    Suite *s = suite_create("status");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, version_matches_header);
    tcase_add_test(tc, status_codes_are_fixed_and_named);
    tcase_add_test(tc, thread_message_after_failed_create);
    tcase_add_test(tc, allocator_needs_both_hooks);
    tcase_add_test(tc, free_null_is_a_noop);
    suite_add_tcase(s, tc);
    tc = tcase_create("keys");
    tcase_add_test(tc, key_values_are_fixed);
    tcase_add_test(tc, every_key_has_a_name_that_round_trips);
    tcase_add_test(tc, lr_bounds_are_documented_ones);
    tcase_add_test(tc, unknown_keys_and_names);
    tcase_add_test(tc, struct_sizes_for_bindings);
    tcase_add_test(tc, key_at_lists_every_key);
    tcase_add_test(tc, regularizer_kind_info_lists_the_kinds);
    suite_add_tcase(s, tc);
    return s;
}
