/* check_sam_options.c — SAM's options: bounds and defaults, statistics
 * keys, attach and detach, the per-group sam.group_adaptive key (the rig:
 * sam_rig.h). */
#include "tests.h"

#include "sam_rig.h"

/* ======================================================================== */
/* 12. Options                                                              */
/* ======================================================================== */

typedef struct samkey {
    regopt_key key;
    const char *name;
    int type;
    double min, max, def;
} samkey;

/* As documented in regopt.h. */
static const samkey sam_keys[] = {
    {REGOPT_SAM_RHO, "sam.rho", REGOPT_TYPE_DOUBLE, 0, 1e3, 0.05},
    {REGOPT_SAM_DELTA, "sam.delta", REGOPT_TYPE_DOUBLE, 0, 1, 1e-12},
    {REGOPT_SAM_ADAPTIVE, "sam.adaptive", REGOPT_TYPE_INT, 0, 1, 0},
    {REGOPT_SAM_ETA, "sam.eta", REGOPT_TYPE_DOUBLE, 0, 1e3, 0.01},
    {REGOPT_SAM_GSAM, "sam.gsam", REGOPT_TYPE_INT, 0, 1, 0},
    {REGOPT_SAM_GSAM_ALPHA, "sam.gsam_alpha", REGOPT_TYPE_DOUBLE, 0, 1e3, 0.4},
    {REGOPT_SAM_RHO_MIN, "sam.rho_min", REGOPT_TYPE_DOUBLE, 0, 1e3, 0},
    {REGOPT_SAM_RHO_FOLLOWS_LR, "sam.rho_follows_lr", REGOPT_TYPE_INT, 0, 1, 0},
    {REGOPT_SAM_EVERY, "sam.every", REGOPT_TYPE_INT, 1, 2147483648.0, 1},
    {REGOPT_SAM_M_ROWS, "sam.m_rows", REGOPT_TYPE_INT, 0, 2147483648.0, 0},
    {REGOPT_SAM_SAME_SEED, "sam.same_seed", REGOPT_TYPE_INT, 0, 1, 1},
    {REGOPT_SAM_ASCENT_WEIGHT_DECAY, "sam.ascent_weight_decay", REGOPT_TYPE_DOUBLE, 0, 1e3, 0},
    {REGOPT_SAM_SYNC_ASCENT, "sam.sync_ascent", REGOPT_TYPE_INT, 0, 1, 0},
};

static void refused(regopt_regularizer *r, const samkey *k, double v, double keep)
{
    regopt_status st = regopt_regularizer_set_double(r, k->key, v);
    ck_assert_msg(st == REGOPT_ERR_OUT_OF_RANGE, "%s = %.17g: %s", k->name, v,
                  regopt_status_string(st));
    ck_assert_msg(strstr(regopt_regularizer_message(r), k->name) != NULL,
                  "%s = %g: message \"%s\" does not name the key", k->name, v,
                  regopt_regularizer_message(r));
    ck_assert_double_eq(rstat(r, k->key), keep);
}

START_TEST(sam_options_bounds_and_defaults)
{
    lrun *r = lrun_open(REGOPT_SGD, 0.05, NULL, 0);
    size_t i;
    for (i = 0; i < sizeof sam_keys / sizeof sam_keys[0]; i++) {
        const samkey *k = &sam_keys[i];
        const char *name = NULL;
        int type = 0;
        double mn = -1, mx = -1, def = -1, tv = -1;
        int64_t iv = -1;
        uint32_t flags = 99;
        regopt_key found = (regopt_key)0;
        MUST(regopt_key_info(k->key, &name, &type, &mn, &mx, &def, &flags));
        ck_assert_str_eq(name, k->name);
        ck_assert_int_eq(type, k->type);
        ck_assert_double_eq(mn, k->min);
        ck_assert_double_eq(mx, k->max);
        ck_assert_double_eq(def, k->def);
        ck_assert_uint_eq(flags, 0);
        MUST(regopt_key_from_name(k->name, &found));
        ck_assert_int_eq(found, k->key);
        /* a new handle holds the default (before it is attached) */
        ck_assert_double_eq(rstat(r->sam, k->key), def);
        /* 1.0: method keys are no trainer keys any more */
        ck_assert_int_eq(regopt_trainer_set_double(r->t, k->key, k->def),
                         REGOPT_ERR_UNKNOWN_KEY);
        ck_assert_int_eq(regopt_trainer_set_int(r->t, k->key, (int64_t)k->min),
                         REGOPT_ERR_UNKNOWN_KEY);
        ck_assert_int_eq(regopt_trainer_get_double(r->t, k->key, &tv), REGOPT_ERR_UNKNOWN_KEY);
        ck_assert_int_eq(regopt_trainer_get_int(r->t, k->key, &iv), REGOPT_ERR_UNKNOWN_KEY);
    }
    TMUST(r->t, regopt_trainer_attach(r->t, r->sam));
    for (i = 0; i < sizeof sam_keys / sizeof sam_keys[0]; i++) {
        const samkey *k = &sam_keys[i];
        regopt_regularizer *s = r->sam;
        ck_assert_double_eq(rstat(s, k->key), k->def);
        RMUST(s, regopt_regularizer_set_double(s, k->key, k->min));
        ck_assert_double_eq(rstat(s, k->key), k->min);
        RMUST(s, regopt_regularizer_set_double(s, k->key, k->max));
        ck_assert_double_eq(rstat(s, k->key), k->max);
        if (k->type == REGOPT_TYPE_INT) {
            int64_t v = -1;
            RMUST(s, regopt_regularizer_set_int(s, k->key, (int64_t)k->min));
            RMUST(s, regopt_regularizer_get_int(s, k->key, &v));
            ck_assert_int_eq(v, (int64_t)k->min);
            ck_assert_int_eq(regopt_regularizer_set_int(s, k->key, (int64_t)k->min - 1),
                             REGOPT_ERR_OUT_OF_RANGE);
            ck_assert_int_eq(regopt_regularizer_set_int(s, k->key, (int64_t)k->max + 1),
                             REGOPT_ERR_OUT_OF_RANGE);
            refused(s, k, k->min - 1.0, k->min);
            refused(s, k, k->max + 1.0, k->min);
            refused(s, k, k->min + 0.5, k->min);
            RMUST(s, regopt_regularizer_set_double(s, k->key, k->max));
        } else {
            refused(s, k, nextafter(k->min, -INFINITY), k->max);
            refused(s, k, nextafter(k->max, INFINITY), k->max);
        }
        refused(s, k, NAN, k->max);
        refused(s, k, INFINITY, k->max);
        refused(s, k, -INFINITY, k->max);
        RMUST(s, regopt_regularizer_set_double(s, k->key, k->def));
        ck_assert_double_eq(rstat(s, k->key), k->def);
        /* still no trainer key while SAM is attached */
        ck_assert_int_eq(regopt_trainer_set_double(r->t, k->key, k->def),
                         REGOPT_ERR_UNKNOWN_KEY);
    }
    lrun_close(r);
}
END_TEST

/* The statistics of the SAM handle: numbers, names, read-only, 0 before the
 * first step after attach; the trainer does not serve them. */
START_TEST(sam_statistics_keys)
{
    static const struct { regopt_key key; int value; const char *name; } stats[] = {
        {REGOPT_STAT_SAM_CLEAN_LOSS, 1090, "sam.clean_loss"},
        {REGOPT_STAT_SAM_PERTURBED_LOSS, 1091, "sam.perturbed_loss"},
        {REGOPT_STAT_SAM_SHARPNESS, 1092, "sam.sharpness"},
        {REGOPT_STAT_SAM_ASCENT_NORM, 1093, "sam.ascent_norm"},
        {REGOPT_STAT_SAM_RHO, 1094, "sam.rho_used"},
        {REGOPT_STAT_SAM_APPLIED, 1095, "sam.applied"},
    };
    lrun *r = lrun_open(REGOPT_SGD, 0.05, NULL, 0);
    size_t i;
    for (i = 0; i < sizeof stats / sizeof stats[0]; i++) {
        const char *name = NULL;
        uint32_t flags = 0;
        regopt_key found = (regopt_key)0;
        double v = -1;
        ck_assert_int_eq(stats[i].key, stats[i].value);
        MUST(regopt_key_info(stats[i].key, &name, NULL, NULL, NULL, NULL, &flags));
        ck_assert_str_eq(name, stats[i].name);
        ck_assert(flags & REGOPT_KEY_READ_ONLY);
        MUST(regopt_key_from_name(stats[i].name, &found));
        ck_assert_int_eq(found, stats[i].key);
        ck_assert_double_eq(rstat(r->sam, stats[i].key), 0.0);
        ck_assert_int_eq(regopt_regularizer_set_double(r->sam, stats[i].key, 1.0),
                         REGOPT_ERR_STATE);
        ck_assert_int_eq(regopt_trainer_get_double(r->t, stats[i].key, &v),
                         REGOPT_ERR_UNKNOWN_KEY);
    }
    TMUST(r->t, regopt_trainer_attach(r->t, r->sam));
    for (i = 0; i < sizeof stats / sizeof stats[0]; i++)
        ck_assert_double_eq(rstat(r->sam, stats[i].key), 0.0);
    lstep(r, 1);
    ck_assert_double_eq(rstat(r->sam, REGOPT_STAT_SAM_APPLIED), 1.0);
    ck_assert_double_eq(rstat(r->sam, REGOPT_STAT_SAM_RHO), 0.05);
    ck_assert(rstat(r->sam, REGOPT_STAT_SAM_ASCENT_NORM) > 0.0);
    /* the trainer's own statistics stay on the trainer */
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_FORWARD_CALLS), 2);
    lrun_close(r);
}
END_TEST

START_TEST(regularizer_attach_and_detach)
{
    lrun *r = lrun_open(REGOPT_SGD, 0.05, NULL, 0);
    regopt_regularizer *sam2 = new_sam(NULL);
    regopt_status st = REGOPT_OK;
    static const int bad_kinds[] = {0, 1000, 99, -1};
    size_t i;
    ck_assert_int_eq(regopt_trainer_detach(r->t, r->sam), REGOPT_ERR_STATE);
    ck_assert_uint_eq(regopt_trainer_regularizer_count(r->t), 0);
    ck_assert_ptr_null(regopt_trainer_regularizer_at(r->t, 0));
    TMUST(r->t, regopt_trainer_attach(r->t, r->sam));
    ck_assert_ptr_eq(regopt_regularizer_get_trainer(r->sam), r->t);
    ck_assert_uint_eq(regopt_trainer_regularizer_count(r->t), 1);
    ck_assert_ptr_eq(regopt_trainer_regularizer_at(r->t, 0), r->sam);
    ck_assert_ptr_null(regopt_trainer_regularizer_at(r->t, 1));
    /* the same handle twice, and a second SAM: refused, nothing changes */
    ck_assert_int_eq(regopt_trainer_attach(r->t, r->sam), REGOPT_ERR_STATE);
    ck_assert_int_eq(regopt_trainer_attach(r->t, sam2), REGOPT_ERR_STATE);
    ck_assert_msg(strstr(regopt_trainer_message(r->t), "weight-side") != NULL,
                  "message \"%s\"", regopt_trainer_message(r->t));
    ck_assert_ptr_null(regopt_regularizer_get_trainer(sam2));
    ck_assert_uint_eq(regopt_trainer_regularizer_count(r->t), 1);
    lset(r, REGOPT_SAM_RHO, 0.07); /* set while attached */
    lstep(r, 1);
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_FORWARD_CALLS), 2);
    ck_assert_int_eq(rstat_int(r->sam, REGOPT_STAT_SAM_APPLIED), 1);
    TMUST(r->t, regopt_trainer_detach(r->t, r->sam));
    ck_assert_ptr_null(regopt_regularizer_get_trainer(r->sam));
    ck_assert_uint_eq(regopt_trainer_regularizer_count(r->t), 0);
    ck_assert_int_eq(regopt_trainer_detach(r->t, r->sam), REGOPT_ERR_STATE);
    ck_assert_double_eq(rstat(r->sam, REGOPT_SAM_RHO), 0.07); /* options are kept */
    lstep(r, 1);
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_FORWARD_CALLS), 1);
    /* kinds that do not exist */
    for (i = 0; i < sizeof bad_kinds / sizeof bad_kinds[0]; i++) {
        st = REGOPT_OK;
        ck_assert_ptr_null(
            regopt_regularizer_create((regopt_regularizer_kind)bad_kinds[i], NULL, &st));
        ck_assert_int_eq(st, REGOPT_ERR_INVALID_ARGUMENT);
    }
    ck_assert_int_eq(regopt_trainer_attach(NULL, r->sam), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_detach(NULL, r->sam), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_attach(r->t, NULL), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_detach(r->t, NULL), REGOPT_ERR_NULL_POINTER);
    ck_assert_ptr_null(regopt_regularizer_get_trainer(r->sam));
    /* on again after being off: same handle, options kept, statistics reset */
    TMUST(r->t, regopt_trainer_attach(r->t, r->sam));
    ck_assert_double_eq(rstat(r->sam, REGOPT_STAT_SAM_APPLIED), 0.0);
    lstep(r, 2);
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_FORWARD_CALLS), 4);
    ck_assert_double_eq(rstat(r->sam, REGOPT_STAT_SAM_RHO), 0.07);
    /* another SAM handle may take the place once the first one is detached */
    TMUST(r->t, regopt_trainer_detach(r->t, r->sam));
    TMUST(r->t, regopt_trainer_attach(r->t, sam2));
    ck_assert_ptr_eq(regopt_trainer_regularizer_at(r->t, 0), sam2);
    lstep(r, 1);
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_FORWARD_CALLS), 2);
    ck_assert_double_eq(rstat(sam2, REGOPT_STAT_SAM_RHO), 0.05);
    lrun_close(r); /* the trainer detaches sam2 */
    ck_assert_ptr_null(regopt_regularizer_get_trainer(sam2));
    regopt_regularizer_free(sam2);
}
END_TEST

START_TEST(group_sam_adaptive_key)
{
    lrun *r = lrun_open(REGOPT_SGD, 0.05, NULL, 0);
    regopt_regularizer *s = r->sam;
    const char *name = NULL;
    int type = 0;
    double mn = -1, mx = -1, def = -1, v = -1;
    uint32_t flags = 0;
    regopt_key found = (regopt_key)0;
    ck_assert_int_eq(REGOPT_SAM_GROUP_ADAPTIVE, 1050);
    MUST(regopt_key_info(REGOPT_SAM_GROUP_ADAPTIVE, &name, &type, &mn, &mx, &def, &flags));
    ck_assert_str_eq(name, "sam.group_adaptive");
    ck_assert_int_eq(type, REGOPT_TYPE_INT);
    ck_assert_double_eq(mn, 0.0);
    ck_assert_double_eq(mx, 1.0);
    ck_assert_double_eq(def, 1.0);
    ck_assert(flags & REGOPT_KEY_GROUP);
    MUST(regopt_key_from_name("sam.group_adaptive", &found));
    ck_assert_int_eq(found, REGOPT_SAM_GROUP_ADAPTIVE);
    ck_assert_int_eq(regopt_key_from_name("group.sam_adaptive", &found), REGOPT_ERR_UNKNOWN_KEY);
    RMUST(s, regopt_regularizer_get_group(s, 0, REGOPT_SAM_GROUP_ADAPTIVE, &v));
    ck_assert_double_eq(v, 1.0);
    RMUST(s, regopt_regularizer_get_group(s, REGOPT_MAX_GROUPS - 1, REGOPT_SAM_GROUP_ADAPTIVE,
                                          &v));
    ck_assert_double_eq(v, 1.0);
    RMUST(s, regopt_regularizer_set_group(s, 5, REGOPT_SAM_GROUP_ADAPTIVE, 0.0));
    RMUST(s, regopt_regularizer_get_group(s, 5, REGOPT_SAM_GROUP_ADAPTIVE, &v));
    ck_assert_double_eq(v, 0.0);
    RMUST(s, regopt_regularizer_get_group(s, 4, REGOPT_SAM_GROUP_ADAPTIVE, &v));
    ck_assert_double_eq(v, 1.0);
    RMUST(s, regopt_regularizer_set_group(s, REGOPT_MAX_GROUPS - 1, REGOPT_SAM_GROUP_ADAPTIVE,
                                          0.0));
    ck_assert_int_eq(regopt_regularizer_set_group(s, -1, REGOPT_SAM_GROUP_ADAPTIVE, 0.0),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(
        regopt_regularizer_set_group(s, REGOPT_MAX_GROUPS, REGOPT_SAM_GROUP_ADAPTIVE, 0.0),
        REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(
        regopt_regularizer_get_group(s, REGOPT_MAX_GROUPS, REGOPT_SAM_GROUP_ADAPTIVE, &v),
        REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_regularizer_set_group(s, 5, REGOPT_SAM_GROUP_ADAPTIVE, 0.5),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_regularizer_set_group(s, 5, REGOPT_SAM_GROUP_ADAPTIVE, 2.0),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_regularizer_set_group(s, 5, REGOPT_SAM_GROUP_ADAPTIVE, -1.0),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_regularizer_set_group(s, 5, REGOPT_SAM_GROUP_ADAPTIVE, NAN),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_ptr_nonnull(strstr(regopt_regularizer_message(s), "sam.group_adaptive"));
    RMUST(s, regopt_regularizer_get_group(s, 5, REGOPT_SAM_GROUP_ADAPTIVE, &v));
    ck_assert_double_eq(v, 0.0);
    ck_assert_int_eq(regopt_regularizer_set_group(s, 0, REGOPT_GROUP_LR_SCALE, 1.0),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_regularizer_set_group(s, 0, REGOPT_SAM_RHO, 1.0),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_regularizer_get_group(s, 0, REGOPT_SAM_GROUP_ADAPTIVE, NULL),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_regularizer_set_group(NULL, 0, REGOPT_SAM_GROUP_ADAPTIVE, 1.0),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_regularizer_get_group(NULL, 0, REGOPT_SAM_GROUP_ADAPTIVE, &v),
                     REGOPT_ERR_NULL_POINTER);
    /* a group key is no plain key, of the handle or of the trainer */
    ck_assert_int_eq(regopt_regularizer_set_double(s, REGOPT_SAM_GROUP_ADAPTIVE, 1.0),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_trainer_set_double(r->t, REGOPT_SAM_GROUP_ADAPTIVE, 1.0),
                     REGOPT_ERR_UNKNOWN_KEY);
    /* nor an optimizer group key */
    ck_assert_int_eq(regopt_optimizer_set_group(r->o, 0, REGOPT_SAM_GROUP_ADAPTIVE, 1.0),
                     REGOPT_ERR_UNKNOWN_KEY);
    /* group settings survive attach and can change while attached */
    TMUST(r->t, regopt_trainer_attach(r->t, s));
    RMUST(s, regopt_regularizer_get_group(s, 5, REGOPT_SAM_GROUP_ADAPTIVE, &v));
    ck_assert_double_eq(v, 0.0);
    RMUST(s, regopt_regularizer_set_group(s, 5, REGOPT_SAM_GROUP_ADAPTIVE, 1.0));
    RMUST(s, regopt_regularizer_get_group(s, 5, REGOPT_SAM_GROUP_ADAPTIVE, &v));
    ck_assert_double_eq(v, 1.0);
    lrun_close(r);
}
END_TEST

Suite *suite_sam_options(void)
{
    Suite *s = suite_create("sam_options");
    TCase *tc = tcase_create("options");
    tcase_add_test(tc, sam_options_bounds_and_defaults);
    tcase_add_test(tc, sam_statistics_keys);
    tcase_add_test(tc, regularizer_attach_and_detach);
    tcase_add_test(tc, group_sam_adaptive_key);
    suite_add_tcase(s, tc);
    return s;
}
