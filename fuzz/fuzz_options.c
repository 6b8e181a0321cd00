/* fuzz_options.c — options by key, by name and by value: optimizer, group
 * and trainer setters and getters, regularizers switched on and off, key
 * lookups, with a step now and then so the cross-option checks run.
 *
 * Invariants: every status is a documented code and every message one sane
 * line; a setter that fails changes nothing; a value that was accepted reads
 * back as set; a name lookup agrees with regopt_key_info; a failed step
 * leaves the weights as they were. */
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

static void trainer_op(fz *f, regopt_trainer *t, int op)
{
    regopt_key key = fz_key(f);
    double before = 0, after = 0, v;
    int64_t ibefore = 0, iafter = 0, iv;
    regopt_status gs, st;
    int32_t group = (int32_t)fz_below(f, 70) - 2;
    switch (op) {
    case 0:
        v = fz_double(f);
        gs = regopt_trainer_get_double(t, key, &before);
        st = regopt_trainer_set_double(t, key, v);
        check_status(st, "regopt_trainer_set_double");
        FZ_CHECK(fz_sane_message(regopt_trainer_message(t)), "message");
        if (regopt_trainer_get_double(t, key, &after) == REGOPT_OK) {
            if (st == REGOPT_OK)
                FZ_CHECK(after == v, "key %d set to %.17g reads %.17g", (int)key, v, after);
            else if (gs == REGOPT_OK)
                FZ_CHECK(same_bits(after, before), "refused set of key %d changed it", (int)key);
        }
        break;
    case 1:
        iv = fz_int64(f);
        gs = regopt_trainer_get_int(t, key, &ibefore);
        st = regopt_trainer_set_int(t, key, iv);
        check_status(st, "regopt_trainer_set_int");
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
        v = fz_double(f);
        gs = regopt_trainer_get_group(t, group, key, &before);
        st = regopt_trainer_set_group(t, group, key, v);
        check_status(st, "regopt_trainer_set_group");
        if (regopt_trainer_get_group(t, group, key, &after) == REGOPT_OK && st != REGOPT_OK &&
            gs == REGOPT_OK)
            FZ_CHECK(same_bits(after, before), "refused group set of key %d changed it",
                     (int)key);
        break;
    case 3:
        check_status(regopt_trainer_add_regularizer(t, (regopt_regularizer)fz_below(f, 7) - 1),
                     "regopt_trainer_add_regularizer");
        break;
    default:
        check_status(
            regopt_trainer_remove_regularizer(t, (regopt_regularizer)fz_below(f, 7) - 1),
            "regopt_trainer_remove_regularizer");
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
            trainer_op(&f, t, op % 5);
        } else if (t) {
            step_op(&f, t, &h);
        }
    }
    regopt_trainer_free(t);
    regopt_optimizer_free(o);
    regopt_model_free(m);
    return 0;
}
