/* checkpoint.c — what a checkpoint holds: the sections of the trainer's
 * state (step, seed, moments, the Bregman teacher, statistics, the model's
 * layout, optionally the host's tensors and every option), how each is
 * written, and how a loaded set is validated in full before any of it is
 * applied. The container (header, table, CRCs) is checkpoint_format.c. */
#include "internal.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define TRAINER_FIXED 64u /* bytes of the "trainer" section before the stats */
#define OPTION_ENTRY 24u
#define NO_GROUP 0xffffffffu
#define RO_CK_MAX_STEP 9007199254740992ull /* 2^53, as stat.step */

static uint32_t regularizer_mask(const regopt_trainer *t)
{
    return (uint32_t)(t->sam.enabled << REGOPT_REG_SAM | t->rdrop.enabled << REGOPT_REG_RDROP |
                      t->smart.enabled << REGOPT_REG_SMART |
                      t->bregman.enabled << REGOPT_REG_BREGMAN);
}

/* ---- writing ----------------------------------------------------------- */

static void emit_trainer(const regopt_trainer *t, ro_ck_sink *s)
{
    size_t i;
    ro_ck_u64(s, t->step);
    ro_ck_u64(s, t->seed);
    ro_ck_u32(s, (uint32_t)t->opt->kind);
    ro_ck_u32(s, (uint32_t)t->per_element);
    ro_ck_u32(s, (uint32_t)t->momentum_ready);
    ro_ck_u32(s, regularizer_mask(t));
    ro_ck_u64(s, t->model->n_trainable);
    ro_ck_u32(s, (uint32_t)t->bregman.ready);
    ro_ck_u32(s, 0);
    ro_ck_f64(s, t->bregman.enabled ? t->bregman.last_beta : 0.0);
    ro_ck_u32(s, RO_N_STATS);
    ro_ck_u32(s, 0);
    for (i = 0; i < RO_N_STATS; i++)
        ro_ck_f64(s, t->stats[i]);
}

static void emit_model(const regopt_trainer *t, ro_ck_sink *s)
{
    const regopt_model *m = t->model;
    size_t i;
    ro_ck_u32(s, (uint32_t)m->n_params);
    ro_ck_u32(s, 0);
    for (i = 0; i < m->n_params; i++) {
        const ro_param *p = &m->params[i];
        uint32_t len = (uint32_t)strlen(p->name);
        ro_ck_u32(s, len);
        ro_ck_u32(s, (uint32_t)p->group);
        ro_ck_u64(s, p->count);
        ro_ck_u32(s, p->grad != NULL);
        ro_ck_u32(s, 0);
        ro_ck_put(s, p->name, len);
    }
}

static void emit_moments(const regopt_trainer *t, ro_ck_sink *s)
{
    ro_ck_floats(s, t->state, t->model->n_trainable * t->per_element);
}

static void emit_teacher(const regopt_trainer *t, ro_ck_sink *s)
{
    ro_ck_floats(s, t->bregman.teacher, t->model->n_trainable);
}

static void emit_params(const regopt_trainer *t, ro_ck_sink *s)
{
    const regopt_model *m = t->model;
    size_t i;
    for (i = 0; i < m->n_params; i++)
        ro_ck_floats(s, m->params[i].data, m->params[i].count);
}

/* Options worth saving: settable keys of the optimizer and the trainer.
 * trainer.seed is state, saved with the step in "trainer"; trainer.threads
 * is the machine's business, not the run's (results do not depend on it). */
static int saved_option(const ro_key_desc *d)
{
    if (d->flags & REGOPT_KEY_READ_ONLY)
        return 0;
    if (d->owner == RO_OWNER_STAT || d->key == REGOPT_TRAINER_SEED ||
        d->key == REGOPT_TRAINER_THREADS)
        return 0;
    return 1;
}

static int is_group(const ro_key_desc *d)
{
    return d->owner == RO_OWNER_GROUP || d->owner == RO_OWNER_TRAINER_GROUP;
}

/* Read one option's current value; 0 when it does not apply (an SGD key
 * of an Adam optimizer). Inapplicable keys are skipped before any getter
 * runs, so that saving never writes a failure into a handle's message. */
static int read_option(const regopt_trainer *t, const ro_key_desc *d, int32_t g, double *dv,
                       int64_t *iv)
{
    regopt_status st;
    *iv = 0;
    *dv = 0.0;
    if (d->owner == RO_OWNER_OPTIMIZER && !ro_optimizer_key_applies(t->opt->kind, d->key))
        return 0;
    if (d->owner == RO_OWNER_GROUP)
        st = regopt_optimizer_get_group(t->opt, g, d->key, dv);
    else if (d->owner == RO_OWNER_TRAINER_GROUP)
        st = regopt_trainer_get_group(t, g, d->key, dv);
    else if (d->owner == RO_OWNER_OPTIMIZER)
        st = d->type == REGOPT_TYPE_INT ? regopt_optimizer_get_int(t->opt, d->key, iv)
                                        : regopt_optimizer_get_double(t->opt, d->key, dv);
    else
        st = d->type == REGOPT_TYPE_INT ? regopt_trainer_get_int(t, d->key, iv)
                                        : regopt_trainer_get_double(t, d->key, dv);
    if (st == REGOPT_OK && d->type == REGOPT_TYPE_INT && is_group(d))
        *iv = (int64_t)*dv;
    return st == REGOPT_OK;
}

static void emit_option(ro_ck_sink *s, const ro_key_desc *d, uint32_t group, double dv,
                        int64_t iv)
{
    ro_ck_u32(s, (uint32_t)d->key);
    ro_ck_u32(s, group);
    ro_ck_u32(s, (uint32_t)d->type);
    ro_ck_u32(s, 0);
    if (d->type == REGOPT_TYPE_INT)
        ro_ck_u64(s, (uint64_t)iv);
    else
        ro_ck_f64(s, dv);
}

/* Entries of the "options" section: emit them, or only count them. */
static uint32_t walk_options(const regopt_trainer *t, ro_ck_sink *s)
{
    const ro_key_desc *d;
    uint32_t n = 0;
    size_t i;
    for (i = 0; (d = ro_key_at(i)) != NULL; i++) {
        int32_t g, groups = is_group(d) ? REGOPT_MAX_GROUPS : 1;
        if (!saved_option(d))
            continue;
        for (g = 0; g < groups; g++) {
            double dv;
            int64_t iv;
            if (!read_option(t, d, g, &dv, &iv))
                continue;
            if (s)
                emit_option(s, d, is_group(d) ? (uint32_t)g : NO_GROUP, dv, iv);
            n++;
        }
    }
    return n;
}

static void emit_options(const regopt_trainer *t, ro_ck_sink *s)
{
    ro_ck_u32(s, walk_options(t, NULL));
    ro_ck_u32(s, 0);
    (void)walk_options(t, s);
}

size_t ro_ck_sections(const regopt_trainer *t, uint32_t flags, ro_ck_section *out)
{
    size_t n = 0;
    out[n].name = "trainer", out[n++].emit = emit_trainer;
    out[n].name = "model", out[n++].emit = emit_model;
    out[n].name = "moments", out[n++].emit = emit_moments;
    if (t->bregman.enabled && t->bregman.ready)
        out[n].name = "teacher", out[n++].emit = emit_teacher;
    if (flags & REGOPT_CHECKPOINT_PARAMS)
        out[n].name = "params", out[n++].emit = emit_params;
    if (flags & REGOPT_CHECKPOINT_OPTIONS)
        out[n].name = "options", out[n++].emit = emit_options;
    return n;
}

/* ---- validating -------------------------------------------------------- */

/* What the "trainer" section says. */
typedef struct ck_trainer {
    uint64_t step, seed, n_trainable;
    uint32_t kind, per_element, momentum_ready, mask, teacher_ready, n_stats;
    double last_beta;
    const unsigned char *stats;
} ck_trainer;

static const ro_ck_found *find(const ro_ck_found *f, size_t n, const char *name)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (strcmp(f[i].name, name) == 0)
            return &f[i];
    return NULL;
}

static regopt_status need(regopt_trainer *t, const ro_ck_found *f, size_t n, const char *name,
                          const ro_ck_found **out)
{
    *out = find(f, n, name);
    if (!*out)
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT, "the checkpoint has no \"%s\" section", name);
    return REGOPT_OK;
}

static const char *kind_name(uint32_t kind)
{
    switch (kind) {
    case REGOPT_SGD: return "sgd";
    case REGOPT_ADAM: return "adam";
    case REGOPT_ADAMW: return "adamw";
    case REGOPT_RADAM: return "radam";
    default: return "unknown";
    }
}

static void mask_names(uint32_t mask, char *buf, size_t cap)
{
    static const char *const names[] = {"", "sam", "rdrop", "smart", "bregman"};
    size_t i, used = 0;
    buf[0] = 0;
    for (i = 1; i < 5; i++)
        if (mask & 1u << i)
            used += (size_t)snprintf(buf + used, cap - used, "%s%s", used ? "+" : "", names[i]);
    if (mask & ~0x1eu) /* a newer writer's kinds, or damage: show them */
        used += (size_t)snprintf(buf + used, cap - used, "%sunknown 0x%" PRIx32,
                                 used ? "+" : "", mask & ~0x1eu);
    if (!used)
        snprintf(buf, cap, "none");
}

static regopt_status parse_trainer(regopt_trainer *t, const ro_ck_found *f, ck_trainer *c)
{
    const unsigned char *p = f->data;
    if (f->size < TRAINER_FIXED)
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT, "the checkpoint's \"trainer\" section is "
                       "%" PRIu64 " bytes, fewer than %u", f->size, TRAINER_FIXED);
    c->step = ro_ck_rd64(p);
    c->seed = ro_ck_rd64(p + 8);
    c->kind = ro_ck_rd32(p + 16);
    c->per_element = ro_ck_rd32(p + 20);
    c->momentum_ready = ro_ck_rd32(p + 24);
    c->mask = ro_ck_rd32(p + 28);
    c->n_trainable = ro_ck_rd64(p + 32);
    c->teacher_ready = ro_ck_rd32(p + 40);
    c->last_beta = ro_ck_rdf64(p + 48);
    c->n_stats = ro_ck_rd32(p + 56);
    c->stats = p + TRAINER_FIXED;
    if ((uint64_t)c->n_stats * 8u > f->size - TRAINER_FIXED)
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT,
                       "the checkpoint's \"trainer\" section is too short for its statistics");
    if (c->momentum_ready > 1 || c->teacher_ready > 1 || ro_ck_rd32(p + 44) != 0 ||
        ro_ck_rd32(p + 60) != 0)
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT,
                       "the checkpoint's \"trainer\" section holds a bad flag");
    /* the step bound of stat.step; beyond it the schedule and Adam's bias
       correction (1 - beta^(step+1)) would silently break */
    if (c->step > RO_CK_MAX_STEP)
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT,
                       "the checkpoint's step count %" PRIu64 " is beyond 2^53", c->step);
    return REGOPT_OK;
}

/* Moments and teacher must be finite, and second moments (blocks 1 and 2
 * of the Adam family: v and AMSGrad's maximum) non-negative: a CRC only
 * proves the bytes are what was written, not that a forger wrote sense,
 * and a NaN here would pass a step's checks and spread into the weights. */
static regopt_status sane_floats(regopt_trainer *t, const ro_ck_found *f, size_t n,
                                 size_t nonneg_from)
{
    size_t i;
    for (i = 0; i < n; i++) {
        uint32_t bits = ro_ck_rd32(f->data + 4 * i);
        float v;
        memcpy(&v, &bits, sizeof v);
        if (!isfinite(v) || (i >= nonneg_from && v < 0.0f))
            return ro_fail(t->msg, REGOPT_ERR_CORRUPT,
                           "the checkpoint's \"%s\" section holds %s at element %zu", f->name,
                           isfinite(v) ? "a negative second moment" : "a non-finite value", i);
    }
    return REGOPT_OK;
}

static regopt_status match_trainer(regopt_trainer *t, const ck_trainer *c)
{
    char a[64], b[64];
    if (c->kind != (uint32_t)t->opt->kind)
        return ro_fail(t->msg, REGOPT_ERR_MISMATCH,
                       "the checkpoint was saved with optimizer %s, this trainer uses %s",
                       kind_name(c->kind), kind_name((uint32_t)t->opt->kind));
    if (c->per_element != t->per_element)
        return ro_fail(t->msg, REGOPT_ERR_MISMATCH,
                       "the checkpoint keeps %" PRIu32 " optimizer values per element, this "
                       "trainer %zu (optimizer.amsgrad differs? it is fixed when the trainer "
                       "is created)", c->per_element, t->per_element);
    if (c->n_trainable != t->model->n_trainable)
        return ro_fail(t->msg, REGOPT_ERR_MISMATCH,
                       "the checkpoint has %" PRIu64 " trainable elements, the model %zu",
                       c->n_trainable, t->model->n_trainable);
    if (c->mask != regularizer_mask(t)) {
        mask_names(c->mask, a, sizeof a);
        mask_names(regularizer_mask(t), b, sizeof b);
        return ro_fail(t->msg, REGOPT_ERR_MISMATCH,
                       "the checkpoint's regularizers are %s, this trainer's %s", a, b);
    }
    if (c->teacher_ready && !t->bregman.enabled)
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT, "the checkpoint has a teacher but no "
                       "Bregman regularizer");
    return REGOPT_OK;
}

/* The "model" section must describe exactly the registered tensors. */
static regopt_status match_model(regopt_trainer *t, const ro_ck_found *f)
{
    const regopt_model *m = t->model;
    const unsigned char *p = f->data, *end = f->data + f->size;
    uint32_t n, i;
    if (f->size < 8 || ro_ck_rd32(p + 4) != 0)
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT, "the checkpoint's \"model\" section is "
                       "malformed");
    n = ro_ck_rd32(p);
    if (n != m->n_params)
        return ro_fail(t->msg, REGOPT_ERR_MISMATCH,
                       "the checkpoint has %" PRIu32 " tensors, the model %zu", n, m->n_params);
    p += 8;
    for (i = 0; i < n; i++) {
        const ro_param *q = &m->params[i];
        uint32_t len;
        uint64_t count;
        if (end - p < 24 || (uint64_t)(end - p - 24) < ro_ck_rd32(p))
            return ro_fail(t->msg, REGOPT_ERR_CORRUPT,
                           "the checkpoint's \"model\" section ends inside tensor %" PRIu32, i);
        len = ro_ck_rd32(p);
        count = ro_ck_rd64(p + 8);
        if (len != strlen(q->name) || memcmp(p + 24, q->name, len) != 0)
            return ro_fail(t->msg, REGOPT_ERR_MISMATCH,
                           "tensor %" PRIu32 " is \"%.*s\" in the checkpoint, \"%s\" in the model",
                           i, (int)(len > 64 ? 64 : len), (const char *)(p + 24), q->name);
        if (ro_ck_rd32(p + 20) != 0 || ro_ck_rd32(p + 16) > 1)
            return ro_fail(t->msg, REGOPT_ERR_CORRUPT,
                           "the checkpoint's \"model\" section holds a bad flag");
        if (count != q->count || (int32_t)ro_ck_rd32(p + 4) != q->group ||
            ro_ck_rd32(p + 16) != (uint32_t)(q->grad != NULL))
            return ro_fail(t->msg, REGOPT_ERR_MISMATCH,
                           "tensor \"%s\": the checkpoint has %" PRIu64 " elements in group %d%s, "
                           "the model %zu in group %d%s", q->name, count,
                           (int)(int32_t)ro_ck_rd32(p + 4),
                           ro_ck_rd32(p + 16) ? "" : " (frozen)", q->count, (int)q->group,
                           q->grad ? "" : " (frozen)");
        p += 24 + len;
    }
    if (p != end)
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT,
                       "the checkpoint's \"model\" section has bytes after its tensors");
    return REGOPT_OK;
}

static regopt_status sized(regopt_trainer *t, const ro_ck_found *f, uint64_t floats)
{
    if (f->size != floats * 4u)
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT,
                       "the checkpoint's \"%s\" section is %" PRIu64 " bytes, expected %" PRIu64,
                       f->name, f->size, floats * 4u);
    return REGOPT_OK;
}

/* ---- options: validate all, then apply with rollback ------------------- */

typedef struct ck_option {
    const ro_key_desc *d;
    int32_t group;
    double value;   /* double keys */
    int64_t ivalue; /* int keys */
} ck_option;

static regopt_status set_option(regopt_trainer *t, const ck_option *o)
{
    const ro_key_desc *d = o->d;
    double v = d->type == REGOPT_TYPE_INT ? (double)o->ivalue : o->value;
    regopt_status st;
    if (d->owner == RO_OWNER_TRAINER_GROUP)
        return regopt_trainer_set_group(t, o->group, d->key, v);
    if (d->owner != RO_OWNER_GROUP && d->owner != RO_OWNER_OPTIMIZER)
        return d->type == REGOPT_TYPE_INT ? regopt_trainer_set_int(t, d->key, o->ivalue)
                                          : regopt_trainer_set_double(t, d->key, v);
    if (d->owner == RO_OWNER_GROUP)
        st = regopt_optimizer_set_group(t->opt, o->group, d->key, v);
    else
        st = d->type == REGOPT_TYPE_INT ? regopt_optimizer_set_int(t->opt, d->key, o->ivalue)
                                        : regopt_optimizer_set_double(t->opt, d->key, v);
    if (st != REGOPT_OK) /* the optimizer's setters report into its own message */
        ro_fail(t->msg, st, "loading option %s: %s", d->name, t->opt->msg);
    return st;
}

/* Decode entry i of the options section; 0 = skip it (unknown key). */
static regopt_status decode_option(regopt_trainer *t, const unsigned char *e, ck_option *o,
                                   int *use)
{
    uint32_t key = ro_ck_rd32(e), group = ro_ck_rd32(e + 4), type = ro_ck_rd32(e + 8);
    const ro_key_desc *d = ro_key_find((regopt_key)key);
    *use = 0;
    if (!d)
        return REGOPT_OK; /* a newer writer's key: skipped, as documented */
    if (!saved_option(d) || type != (uint32_t)d->type || ro_ck_rd32(e + 12) != 0 ||
        (is_group(d) ? group >= REGOPT_MAX_GROUPS : group != NO_GROUP))
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT,
                       "the checkpoint's option %s is malformed", d->name);
    o->d = d;
    o->group = is_group(d) ? (int32_t)group : -1;
    o->ivalue = (int64_t)ro_ck_rd64(e + 16);
    o->value = d->type == REGOPT_TYPE_INT ? (double)o->ivalue : ro_ck_rdf64(e + 16);
    *use = 1;
    if (d->key == REGOPT_GROUP_WEIGHT_DECAY && o->value < 0.0 && o->value != -1.0)
        return ro_fail(t->msg, REGOPT_ERR_OUT_OF_RANGE, "the checkpoint's group.weight_decay "
                       "of group %d is %g: -1 (inherit) or >= 0", (int)o->group, o->value);
    if (d->owner == RO_OWNER_OPTIMIZER && !ro_optimizer_key_applies(t->opt->kind, d->key))
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT, "the checkpoint's option %s does not "
                       "apply to its optimizer", d->name);
    return ro_key_check(d, o->value, t->msg);
}

static regopt_status apply_options(regopt_trainer *t, const ro_ck_found *f)
{
    ck_option *next = NULL, *old = NULL;
    uint32_t n, i, used = 0, done = 0;
    regopt_status st = REGOPT_OK;
    n = f->size >= 8 ? ro_ck_rd32(f->data) : 0;
    if (f->size < 8 || (f->size - 8) / OPTION_ENTRY != n || (f->size - 8) % OPTION_ENTRY)
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT, "the checkpoint's \"options\" section is "
                       "malformed");
    if (n == 0)
        return REGOPT_OK;
    next = ro_malloc(&t->alloc, 2 * (size_t)n * sizeof *next);
    if (!next)
        return ro_fail(t->msg, REGOPT_ERR_NO_MEMORY, "out of memory for %" PRIu32 " options", n);
    old = next + n;
    for (i = 0; i < n && st == REGOPT_OK; i++) {
        int use;
        st = decode_option(t, f->data + 8 + (size_t)i * OPTION_ENTRY, &next[used], &use);
        if (st == REGOPT_OK && use) {
            old[used] = next[used];
            if (!read_option(t, next[used].d, next[used].group, &old[used].value,
                             &old[used].ivalue))
                continue; /* not readable here: leave it alone */
            used++;
        }
    }
    /* apply in order; on a refusal put back what was already set */
    for (i = 0; i < used && st == REGOPT_OK; i++, done++)
        st = set_option(t, &next[i]);
    if (st != REGOPT_OK) {
        char msg[RO_MSG_SIZE];
        memcpy(msg, t->msg, sizeof msg);
        while (done-- > 0)
            (void)set_option(t, &old[done]);
        memcpy(t->msg, msg, sizeof msg);
    }
    ro_free(&t->alloc, next);
    return st;
}

/* ---- restore ----------------------------------------------------------- */

static void apply_state(regopt_trainer *t, const ck_trainer *c, const ro_ck_found *moments,
                        const ro_ck_found *teacher, const ro_ck_found *params)
{
    regopt_model *m = t->model;
    size_t i, n = c->n_stats < RO_N_STATS ? c->n_stats : RO_N_STATS;
    t->step = c->step;
    t->seed = c->seed;
    t->momentum_ready = (int)c->momentum_ready;
    ro_ck_rdfloats(t->state, moments->data, m->n_trainable * t->per_element);
    memset(t->stats, 0, sizeof t->stats);
    for (i = 0; i < n; i++)
        t->stats[i] = ro_ck_rdf64(c->stats + 8 * i);
    if (t->bregman.enabled) {
        t->bregman.ready = (int)c->teacher_ready;
        t->bregman.last_beta = c->last_beta;
        if (teacher)
            ro_ck_rdfloats(t->bregman.teacher, teacher->data, m->n_trainable);
    }
    if (params) {
        const unsigned char *p = params->data;
        for (i = 0; i < m->n_params; i++) {
            ro_ck_rdfloats(m->params[i].data, p, m->params[i].count);
            p += 4 * m->params[i].count;
        }
    }
}

regopt_status ro_ck_restore(regopt_trainer *t, uint32_t flags, const ro_ck_found *f,
                            size_t count)
{
    const ro_ck_found *tr = NULL, *model = NULL, *moments = NULL, *teacher = NULL,
                      *params = NULL, *options = NULL;
    ck_trainer c;
    regopt_status st;
    memset(&c, 0, sizeof c);
    st = need(t, f, count, "trainer", &tr);
    if (st == REGOPT_OK)
        st = need(t, f, count, "model", &model);
    if (st == REGOPT_OK)
        st = need(t, f, count, "moments", &moments);
    if (st == REGOPT_OK)
        st = parse_trainer(t, tr, &c);
    if (st == REGOPT_OK)
        st = match_trainer(t, &c);
    if (st == REGOPT_OK)
        st = match_model(t, model);
    if (st == REGOPT_OK)
        st = sized(t, moments, (uint64_t)t->model->n_trainable * t->per_element);
    if (st == REGOPT_OK)
        st = sane_floats(t, moments, t->model->n_trainable * t->per_element,
                         t->opt->kind == REGOPT_SGD ? (size_t)-1 : t->model->n_trainable);
    if (st == REGOPT_OK && c.teacher_ready) {
        st = need(t, f, count, "teacher", &teacher);
        if (st == REGOPT_OK)
            st = sized(t, teacher, t->model->n_trainable);
        if (st == REGOPT_OK)
            st = sane_floats(t, teacher, t->model->n_trainable, (size_t)-1);
    }
    if (st == REGOPT_OK && (flags & REGOPT_CHECKPOINT_PARAMS)) {
        params = find(f, count, "params");
        st = params ? sized(t, params, t->model->n_elements)
                    : ro_fail(t->msg, REGOPT_ERR_MISMATCH, "the checkpoint holds no parameters "
                              "(saved without REGOPT_CHECKPOINT_PARAMS)");
    }
    if (st == REGOPT_OK && (flags & REGOPT_CHECKPOINT_OPTIONS)) {
        options = find(f, count, "options");
        if (!options)
            st = ro_fail(t->msg, REGOPT_ERR_MISMATCH, "the checkpoint holds no options "
                         "(saved without REGOPT_CHECKPOINT_OPTIONS)");
    }
    if (st == REGOPT_OK && options)
        st = apply_options(t, options); /* the last step that can fail */
    if (st != REGOPT_OK)
        return st;
    apply_state(t, &c, moments, teacher, params);
    return REGOPT_OK;
}
