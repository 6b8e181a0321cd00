/* checkpoint.c — what a checkpoint holds: the sections of the trainer's
 * state (step, seed, moments, statistics, the model's layout, the required
 * features, one section per attached regularizer with its own state,
 * optionally the host's tensors and every option), how each is written,
 * and how a loaded set is validated in full before any of it is applied.
 * The container (header, table, CRCs) is checkpoint_format.c; the byte
 * layout is docs/checkpoint-format.md. Names no method. */
#include "checkpoint/checkpoint.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define TRAINER_FIXED 48u /* bytes of the "trainer" section before the stats */
#define REG_FIXED 48u     /* bytes of a "reg.N" section before its stats */
#define FEATURE_ENTRY 24u
#define RO_CK_MAX_STEP 9007199254740992ull /* 2^53, as stat.step */

/* Bit 32 of the mask: mixed precision (fp32 masters of half tensors, the
 * loss scale and its counter in the "precision" section). */
#define FEATURE_PRECISION 32u
#define PRECISION_FIXED 40u /* bytes of "precision" before the masters */

static int has_precision(const regopt_trainer *t)
{
    return t->model->n_half > 0 || ro_scaler_active(t);
}

/* Elements of the half-precision tensors (their masters are saved). */
static uint64_t half_elements(const regopt_model *m)
{
    uint64_t n = 0;
    size_t i;
    for (i = 0; i < m->n_params; i++)
        if (m->params[i].dtype != REGOPT_DTYPE_FLOAT32)
            n += m->params[i].count;
    return n;
}

/* Bit i of the required-features mask: the kind with registry index i;
 * and FEATURE_PRECISION. */
static uint64_t feature_mask(const regopt_trainer *t)
{
    uint64_t m = has_precision(t) ? (uint64_t)1 << FEATURE_PRECISION : 0;
    size_t i, j;
    const ro_reg_ops *o;
    for (i = 0; i < t->n_regs; i++)
        for (j = 0; (o = ro_reg_ops_at(j)) != NULL; j++)
            if (o == t->regs[i]->ops)
                m |= (uint64_t)1 << j;
    return m;
}

/* The index of r among the attached regularizers of its kind. */
static uint32_t instance_of(const regopt_trainer *t, size_t at)
{
    uint32_t n = 0;
    size_t i;
    for (i = 0; i < at; i++)
        n += t->regs[i]->ops == t->regs[at]->ops;
    return n;
}

/* ---- writing ----------------------------------------------------------- */

static void emit_trainer(const regopt_trainer *t, size_t arg, ro_ck_sink *s)
{
    size_t i;
    (void)arg;
    ro_ck_u64(s, t->step);
    ro_ck_u64(s, t->seed);
    ro_ck_u32(s, (uint32_t)t->opt->kind);
    ro_ck_u32(s, (uint32_t)t->per_element);
    ro_ck_u32(s, (uint32_t)t->momentum_ready);
    ro_ck_u32(s, (uint32_t)t->n_regs);
    ro_ck_u64(s, t->model->n_trainable);
    ro_ck_u32(s, RO_N_STATS);
    ro_ck_u32(s, 0);
    for (i = 0; i < RO_N_STATS; i++)
        ro_ck_f64(s, t->stats[i]);
}

static void put_name(ro_ck_sink *s, const char *name, size_t width)
{
    char buf[24];
    memset(buf, 0, sizeof buf);
    memcpy(buf, name, strlen(name) < width - 1 ? strlen(name) : width - 1);
    ro_ck_put(s, buf, width);
}

static void emit_features(const regopt_trainer *t, size_t arg, ro_ck_sink *s)
{
    uint64_t m = feature_mask(t);
    uint32_t n = 0, j;
    (void)arg;
    for (j = 0; j < 64; j++)
        n += (uint32_t)(m >> j & 1u);
    ro_ck_u64(s, m);
    ro_ck_u32(s, n);
    ro_ck_u32(s, 0);
    for (j = 0; j < 64; j++)
        if (m >> j & 1u) {
            ro_ck_u32(s, j);
            put_name(s, j == FEATURE_PRECISION ? "mixed_precision" : ro_reg_ops_at(j)->name, 20);
        }
}

static void emit_reg(const regopt_trainer *t, size_t arg, ro_ck_sink *s)
{
    const ro_reg *r = t->regs[arg];
    size_t i;
    ro_ck_u32(s, (uint32_t)r->ops->kind);
    ro_ck_u32(s, instance_of(t, arg));
    put_name(s, ro_term_name(r), 24);
    ro_ck_u32(s, (uint32_t)r->ops->n_stats);
    ro_ck_u32(s, 0);
    ro_ck_u64(s, r->ops->state_size ? r->ops->state_size(r) : 0u);
    for (i = 0; i < r->ops->n_stats; i++)
        ro_ck_f64(s, r->stats[i]);
    if (r->ops->save)
        r->ops->save(r, s);
}

static void emit_model(const regopt_trainer *t, size_t arg, ro_ck_sink *s)
{
    const regopt_model *m = t->model;
    size_t i;
    (void)arg;
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

/* scale (f64), init (f64), counter, skipped (u64), mode (i32), 0, the
 * element count of the masters (u64), then the masters of the half
 * tensors in registration order. */
static void emit_precision(const regopt_trainer *t, size_t arg, ro_ck_sink *s)
{
    const regopt_model *m = t->model;
    size_t i;
    (void)arg;
    ro_ck_f64(s, t->scaler.scale);
    ro_ck_u64(s, t->scaler.counter);
    ro_ck_u64(s, t->scaler.skipped);
    ro_ck_u32(s, (uint32_t)(int32_t)t->scaler.mode);
    ro_ck_u32(s, 0);
    ro_ck_u64(s, half_elements(m));
    for (i = 0; i < m->n_params; i++)
        if (m->params[i].dtype != REGOPT_DTYPE_FLOAT32)
            ro_ck_floats(s, m->params[i].data, m->params[i].count);
}

static size_t add_section(ro_ck_section *out, size_t n, const char *name,
                          void (*emit)(const regopt_trainer *, size_t, ro_ck_sink *), size_t arg)
{
    memset(out[n].name, 0, sizeof out[n].name);
    memcpy(out[n].name, name, strlen(name));
    out[n].emit = emit;
    out[n].arg = arg;
    return n + 1;
}

size_t ro_ck_sections(const regopt_trainer *t, uint32_t flags, ro_ck_section *out)
{
    size_t n = 0, i;
    n = add_section(out, n, "trainer", emit_trainer, 0);
    n = add_section(out, n, "features", emit_features, 0);
    n = add_section(out, n, "model", emit_model, 0);
    n = add_section(out, n, "moments", ro_ck_emit_moments, 0);
    for (i = 0; i < t->n_regs; i++) {
        char name[24];
        snprintf(name, sizeof name, "reg.%u", (unsigned)i);
        n = add_section(out, n, name, emit_reg, i);
    }
    if (has_precision(t))
        n = add_section(out, n, "precision", emit_precision, 0);
    if (flags & REGOPT_CHECKPOINT_PARAMS)
        n = add_section(out, n, "params", ro_ck_emit_params, 0);
    if (flags & REGOPT_CHECKPOINT_OPTIONS)
        n = add_section(out, n, "options", ro_ck_emit_options, 0);
    return n;
}

/* ---- validating -------------------------------------------------------- */

/* What the "trainer" section says. */
typedef struct ck_trainer {
    uint64_t step, seed, n_trainable;
    uint32_t kind, per_element, momentum_ready, n_regs, n_stats;
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
    case REGOPT_HOST: return "host (the host's own optimizer)";
    default: return "unknown";
    }
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
    c->n_regs = ro_ck_rd32(p + 28);
    c->n_trainable = ro_ck_rd64(p + 32);
    c->n_stats = ro_ck_rd32(p + 40);
    c->stats = p + TRAINER_FIXED;
    if ((uint64_t)c->n_stats * 8u != f->size - TRAINER_FIXED)
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT,
                       "the checkpoint's \"trainer\" section does not match its statistics");
    if (c->momentum_ready > 1 || ro_ck_rd32(p + 44) != 0)
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
 * and a NaN here would pass a step's checks and spread into the weights.
 * Nothing a save writes is refused here: a step never leaves a non-finite
 * or negative value in the moments (update.c fails it before it writes)
 * nor in a regularizer's state (each method keeps its own finite: see its
 * file). */
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
    return REGOPT_OK;
}

/* Every required feature must be one this library knows: refuse by name. */
static regopt_status check_features(regopt_trainer *t, const ro_ck_found *f)
{
    uint64_t mask;
    uint32_t n, i, j;
    if (f->size < 16 || ro_ck_rd32(f->data + 12) != 0 ||
        (f->size - 16) != (uint64_t)ro_ck_rd32(f->data + 8) * FEATURE_ENTRY)
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT, "the checkpoint's \"features\" section is "
                       "malformed");
    mask = ro_ck_rd64(f->data);
    n = ro_ck_rd32(f->data + 8);
    for (j = 0; j < 64; j++) {
        const char *name = "unnamed";
        char buf[21];
        if (!(mask >> j & 1u) || ro_reg_ops_at(j) || j == FEATURE_PRECISION)
            continue;
        for (i = 0; i < n; i++) {
            const unsigned char *e = f->data + 16 + (size_t)i * FEATURE_ENTRY;
            if (ro_ck_rd32(e) == j) {
                memcpy(buf, e + 4, 20);
                buf[20] = 0;
                name = buf;
            }
        }
        return ro_fail(t->msg, REGOPT_ERR_UNSUPPORTED,
                       "the checkpoint needs feature %u (\"%s\"), which libregopt %s does not "
                       "know: it was written by a newer version", j, name, REGOPT_VERSION_STRING);
    }
    mask &= ~((uint64_t)1 << FEATURE_PRECISION);
    return mask != (feature_mask(t) & ~((uint64_t)1 << FEATURE_PRECISION)) ? REGOPT_ERR_MISMATCH
                                                                         : REGOPT_OK;
}

/* Mixed precision on both sides or on neither (checked before the
 * regularizers, whose mismatch message would not name it). */
static regopt_status check_precision_bit(regopt_trainer *t, const ro_ck_found *f)
{
    uint64_t mask = ro_ck_rd64(f->data);
    if ((mask ^ feature_mask(t)) >> FEATURE_PRECISION & 1u)
        return ro_fail(t->msg, REGOPT_ERR_MISMATCH, "the checkpoint was saved %s mixed "
                       "precision (half-precision tensors or loss scaling), this trainer "
                       "runs %s it", (mask >> FEATURE_PRECISION & 1u) ? "with" : "without",
                       (mask >> FEATURE_PRECISION & 1u) ? "without" : "with");
    return REGOPT_OK;
}

/* The "precision" section: sized for this model's half tensors, a
 * positive finite scale, finite masters. */
static regopt_status check_precision(regopt_trainer *t, const ro_ck_found *f)
{
    uint64_t n = half_elements(t->model), i;
    double scale;
    if (!f)
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT, "the checkpoint has no \"precision\" "
                       "section");
    if (f->size < PRECISION_FIXED || ro_ck_rd64(f->data + 32) != n ||
        f->size != PRECISION_FIXED + 4 * n || ro_ck_rd32(f->data + 28) != 0)
        return ro_fail(t->msg, f->size >= PRECISION_FIXED && f->size == PRECISION_FIXED +
                       4 * ro_ck_rd64(f->data + 32) ? REGOPT_ERR_MISMATCH : REGOPT_ERR_CORRUPT,
                       "the checkpoint's \"precision\" section holds %" PRIu64 " master "
                       "elements, the model's half tensors %" PRIu64,
                       f->size >= PRECISION_FIXED ? ro_ck_rd64(f->data + 32) : 0, n);
    scale = ro_ck_rdf64(f->data);
    if (!(scale > 0.0 && scale <= 3.4028234663852886e38))
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT, "the checkpoint's loss scale %g is not in "
                       "(0, FLT_MAX]", scale);
    for (i = 0; i < n; i++) {
        uint32_t b = ro_ck_rd32(f->data + PRECISION_FIXED + 4 * i);
        if ((b & 0x7f800000u) == 0x7f800000u)
            return ro_fail(t->msg, REGOPT_ERR_CORRUPT, "the checkpoint's master element %"
                           PRIu64 " is not finite", i);
    }
    return REGOPT_OK;
}

/* After the options (which may set trainer.loss_scale and so restart the
 * schedule): the scale, its counter and the masters. */
static void apply_precision(regopt_trainer *t, const ro_ck_found *f)
{
    regopt_model *m = t->model;
    const unsigned char *p = f->data + PRECISION_FIXED;
    size_t i;
    t->scaler.scale = ro_ck_rdf64(f->data);
    t->scaler.counter = ro_ck_rd64(f->data + 8);
    t->scaler.skipped = ro_ck_rd64(f->data + 16);
    t->scaler.last_skipped = 0;
    for (i = 0; i < m->n_params; i++)
        if (m->params[i].dtype != REGOPT_DTYPE_FLOAT32) {
            ro_ck_rdfloats(m->params[i].data, p, m->params[i].count);
            p += 4 * m->params[i].count;
        }
    ro_scaler_sync_env(t);
    ro_model_publish(&t->env);
}

/* "+"-joined names of the checkpoint's or the trainer's regularizers. */
static void reg_list(const regopt_trainer *t, const ro_ck_found *f, size_t n, uint32_t count,
                     char *buf, size_t cap)
{
    size_t used = 0;
    uint32_t i;
    buf[0] = 0;
    for (i = 0; i < count && used < cap; i++) {
        char name[25] = "?";
        if (f) {
            char want[24];
            const ro_ck_found *g;
            snprintf(want, sizeof want, "reg.%u", i);
            g = find(f, n, want);
            if (g && g->size >= REG_FIXED) {
                memcpy(name, g->data + 8, 24);
                name[24] = 0;
            }
        } else {
            snprintf(name, sizeof name, "%s", ro_term_name(t->regs[i]));
        }
        used += (size_t)snprintf(buf + used, cap - used, "%s%s", i ? "+" : "", name);
    }
    if (!count)
        snprintf(buf, cap, "none");
}

static regopt_status reg_mismatch(regopt_trainer *t, const ro_ck_found *f, size_t n,
                                  uint32_t count)
{
    char a[96], b[96];
    reg_list(t, f, n, count, a, sizeof a);
    reg_list(t, NULL, 0, (uint32_t)t->n_regs, b, sizeof b);
    return ro_fail(t->msg, REGOPT_ERR_MISMATCH,
                   "the checkpoint's regularizers are %s, this trainer's %s", a, b);
}

/* Section "reg.i" against the i-th attached regularizer; its state checked
 * by the method. Out: where the state starts and its size. */
static regopt_status check_reg(regopt_trainer *t, const ro_ck_found *f, size_t n, uint32_t count,
                               size_t i, const unsigned char **state, uint64_t *size)
{
    ro_reg *r = t->regs[i];
    const ro_ck_found *g;
    char want[24];
    uint32_t n_stats;
    uint64_t m;
    regopt_status st;
    snprintf(want, sizeof want, "reg.%u", (unsigned)i);
    st = need(t, f, n, want, &g);
    if (st != REGOPT_OK)
        return st;
    if (g->size < REG_FIXED || ro_ck_rd32(g->data + 36) != 0 || g->data[8 + 23] != 0)
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT, "the checkpoint's \"%s\" section is "
                       "malformed", want);
    if (ro_ck_rd32(g->data) != (uint32_t)r->ops->kind || ro_ck_rd32(g->data + 4) !=
        instance_of(t, i) || strcmp((const char *)g->data + 8, ro_term_name(r)) != 0)
        return reg_mismatch(t, f, n, count);
    /* another version may keep more or fewer statistics: the known ones are
       read, missing ones start at 0 (statistics describe the last step) */
    n_stats = ro_ck_rd32(g->data + 32);
    m = ro_ck_rd64(g->data + 40);
    if (g->size < REG_FIXED + 8u * (uint64_t)n_stats || m != g->size - REG_FIXED - 8u * n_stats)
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT, "the checkpoint's \"%s\" section does not "
                       "match its sizes", want);
    *state = g->data + REG_FIXED + 8u * n_stats;
    *size = m;
    if (r->ops->check_state)
        return r->ops->check_state(r, *state, m);
    if (m != 0)
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT, "the checkpoint's \"%s\" section holds "
                       "state for a regularizer that keeps none", want);
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

/* ---- restore ----------------------------------------------------------- */

static regopt_status apply_state(regopt_trainer *t, const ck_trainer *c, const ro_ck_found *f,
                                 size_t n, const ro_ck_found *moments,
                                 const ro_ck_found *params)
{
    size_t i, k = c->n_stats < RO_N_STATS ? c->n_stats : RO_N_STATS;
    /* first: with a backend its WRITE may fail, and the counters below stay */
    regopt_status st = ro_ck_apply_tensors(t, moments, params);
    if (st != REGOPT_OK)
        return st;
    t->step = c->step;
    t->seed = c->seed;
    t->momentum_ready = (int)c->momentum_ready;
    memset(t->stats, 0, sizeof t->stats);
    for (i = 0; i < k; i++)
        t->stats[i] = ro_ck_rdf64(c->stats + 8 * i);
    for (i = 0; i < t->n_regs; i++) {
        ro_reg *r = t->regs[i];
        char want[24];
        const ro_ck_found *g;
        size_t j;
        snprintf(want, sizeof want, "reg.%u", (unsigned)i);
        g = find(f, n, want);
        k = ro_ck_rd32(g->data + 32);
        for (j = 0; j < r->ops->n_stats; j++)
            r->stats[j] = j < k ? ro_ck_rdf64(g->data + REG_FIXED + 8 * j) : 0.0;
    }
    return REGOPT_OK;
}

/* The sections every checkpoint has, validated against the trainer. */
static regopt_status check_core(regopt_trainer *t, const ro_ck_found *f, size_t n,
                                ck_trainer *c, const ro_ck_found **moments)
{
    const ro_ck_found *tr = NULL, *model = NULL, *features = NULL;
    regopt_status fs = REGOPT_OK, st = need(t, f, n, "trainer", &tr);
    if (st == REGOPT_OK)
        st = need(t, f, n, "features", &features);
    if (st == REGOPT_OK)
        st = need(t, f, n, "model", &model);
    if (st == REGOPT_OK)
        st = need(t, f, n, "moments", moments);
    if (st == REGOPT_OK)
        st = parse_trainer(t, tr, c);
    /* unknown features before any comparison: a newer writer's checkpoint
       is refused by the name of what it needs, not as a mismatch */
    if (st == REGOPT_OK)
        fs = check_features(t, features);
    if (st == REGOPT_OK && fs != REGOPT_OK && fs != REGOPT_ERR_MISMATCH)
        st = fs; /* unsupported or malformed */
    if (st == REGOPT_OK)
        st = match_trainer(t, c);
    if (st == REGOPT_OK)
        st = check_precision_bit(t, features);
    if (st == REGOPT_OK && (fs == REGOPT_ERR_MISMATCH || c->n_regs != t->n_regs))
        st = reg_mismatch(t, f, n, c->n_regs);
    if (st == REGOPT_OK)
        st = match_model(t, model);
    if (st == REGOPT_OK)
        st = sized(t, *moments, (uint64_t)t->model->n_trainable * t->per_element);
    if (st == REGOPT_OK)
        st = sane_floats(t, *moments, t->model->n_trainable * t->per_element,
                         t->opt->kind == REGOPT_SGD ? (size_t)-1 : t->model->n_trainable);
    return st;
}

regopt_status ro_ck_restore(regopt_trainer *t, uint32_t flags, const ro_ck_found *f,
                            size_t count)
{
    const ro_ck_found *moments = NULL, *params = NULL, *options = NULL, *prec = NULL;
    ro_ck_states rs;
    ck_trainer c;
    size_t i;
    regopt_status st;
    memset(&c, 0, sizeof c);
    st = check_core(t, f, count, &c, &moments);
    for (i = 0; i < t->n_regs && st == REGOPT_OK; i++)
        st = check_reg(t, f, count, c.n_regs, i, &rs.at[i], &rs.size[i]);
    if (st == REGOPT_OK && has_precision(t)) {
        prec = find(f, count, "precision");
        st = check_precision(t, prec);
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
    if (st == REGOPT_OK) /* the last step that can fail */
        st = ro_ck_apply_options(t, options, &rs);
    if (st != REGOPT_OK)
        return st;
    /* with a backend REGOPT_VOP_WRITE may fail here: the header says what
       then holds what */
    st = apply_state(t, &c, f, count, moments, params);
    if (st != REGOPT_OK)
        return st;
    if (prec) /* after params: the masters of half tensors are these */
        apply_precision(t, prec);
    if (params) /* trainer.check_host: the tensors are the checkpoint's now */
        ro_probe_record(t);
    else        /* the host restores them its own way: nothing to compare */
        t->probe_ok = 0;
    return REGOPT_OK;
}
