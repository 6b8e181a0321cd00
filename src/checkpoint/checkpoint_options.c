/* checkpoint_options.c — the "options" section of a checkpoint: every
 * settable key of the optimizer, the trainer and each attached regularizer
 * (entries name their owner), written on save and, on load, validated in
 * full and applied with rollback together with the regularizers' state.
 * Layout: docs/checkpoint-format.md. */
#include "checkpoint/checkpoint.h"

#include <inttypes.h>
#include <string.h>

#define OPTION_ENTRY 24u
#define NO_GROUP 0xffffffffu
#define NO_OWNER 0xffffffffu

/* Options worth saving: settable keys of the optimizer, the trainer and
 * every attached regularizer. trainer.seed is state, saved with the step
 * in "trainer"; trainer.threads and trainer.check_host are the machine's
 * and the debugging host's business, not the run's (results do not depend
 * on them). */
static int saved_option(const ro_key_desc *d)
{
    if (d->flags & REGOPT_KEY_READ_ONLY)
        return 0;
    return d->owner != RO_OWNER_STAT && d->key != REGOPT_TRAINER_SEED &&
           d->key != REGOPT_TRAINER_THREADS && d->key != REGOPT_TRAINER_CHECK_HOST;
}

static int is_group(const ro_key_desc *d) { return (d->flags & REGOPT_KEY_GROUP) != 0; }

/* Read one option's current value; 0 when it does not apply (an SGD key
 * of an Adam optimizer). Inapplicable keys are skipped before any getter
 * runs, so that saving never writes a failure into a handle's message. */
static int read_option(const regopt_trainer *t, const ro_reg *r, const ro_key_desc *d,
                       int32_t g, double *dv, int64_t *iv)
{
    regopt_status st = REGOPT_OK;
    *iv = 0;
    *dv = 0.0;
    if (r) {
        *dv = r->ops->get(r, d, g);
        *iv = (int64_t)*dv;
        return 1;
    }
    if ((d->owner == RO_OWNER_OPTIMIZER || d->owner == RO_OWNER_GROUP) &&
        !ro_optimizer_key_applies(t->opt->kind, d->key))
        return 0;
    if (d->owner == RO_OWNER_GROUP)
        st = regopt_optimizer_get_group(t->opt, g, d->key, dv);
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

static void emit_option(ro_ck_sink *s, const ro_key_desc *d, uint32_t group, uint32_t owner,
                        double dv, int64_t iv)
{
    ro_ck_u32(s, (uint32_t)d->key);
    ro_ck_u32(s, group);
    ro_ck_u32(s, (uint32_t)d->type);
    ro_ck_u32(s, owner);
    if (d->type == REGOPT_TYPE_INT)
        ro_ck_u64(s, (uint64_t)iv);
    else
        ro_ck_f64(s, dv);
}

/* Entries of one owner's keys (r NULL: the core table): emit or count. */
static uint32_t walk_keys(const regopt_trainer *t, const ro_reg *r, uint32_t owner,
                          ro_ck_sink *s)
{
    const ro_key_desc *d;
    uint32_t n = 0;
    size_t i;
    for (i = 0; (d = r ? (i < r->ops->n_keys ? &r->ops->keys[i] : NULL) : ro_key_at(i)); i++) {
        int32_t g, groups = is_group(d) ? REGOPT_MAX_GROUPS : 1;
        if (!saved_option(d))
            continue;
        for (g = 0; g < groups; g++) {
            double dv;
            int64_t iv;
            if (!read_option(t, r, d, g, &dv, &iv))
                continue;
            if (s)
                emit_option(s, d, is_group(d) ? (uint32_t)g : NO_GROUP, owner, dv, iv);
            n++;
        }
    }
    return n;
}

static uint32_t walk_options(const regopt_trainer *t, ro_ck_sink *s)
{
    uint32_t n = walk_keys(t, NULL, NO_OWNER, s);
    size_t i;
    for (i = 0; i < t->n_regs; i++)
        n += walk_keys(t, t->regs[i], (uint32_t)i, s);
    return n;
}

void ro_ck_emit_options(const regopt_trainer *t, size_t arg, ro_ck_sink *s)
{
    (void)arg;
    ro_ck_u32(s, walk_options(t, NULL));
    ro_ck_u32(s, 0);
    (void)walk_options(t, s);
}

/* ---- options: validate all, then apply with rollback ------------------- */

typedef struct ck_option {
    const ro_key_desc *d;
    ro_reg *reg;    /* NULL: the trainer or the optimizer */
    int32_t group;
    double value;   /* double keys */
    int64_t ivalue; /* int keys */
} ck_option;

static regopt_status set_option(regopt_trainer *t, const ck_option *o)
{
    const ro_key_desc *d = o->d;
    double v = d->type == REGOPT_TYPE_INT ? (double)o->ivalue : o->value;
    regopt_status st;
    if (o->reg) {
        st = is_group(d) ? regopt_regularizer_set_group(o->reg, o->group, d->key, v)
                         : regopt_regularizer_set_double(o->reg, d->key, v);
        if (st != REGOPT_OK)
            ro_fail(t->msg, st, "loading option %s: %s", d->name, o->reg->msg);
        return st;
    }
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

/* Decode one entry of the options section; *use = 0: skip it (a newer
 * writer's key of the trainer or optimizer). */
static regopt_status decode_option(regopt_trainer *t, const unsigned char *e, ck_option *o,
                                   int *use)
{
    uint32_t key = ro_ck_rd32(e), group = ro_ck_rd32(e + 4), type = ro_ck_rd32(e + 8);
    uint32_t owner = ro_ck_rd32(e + 12);
    const ro_reg_ops *ops = NULL;
    const ro_key_desc *d = ro_any_key((regopt_key)key, &ops);
    *use = 0;
    if (owner != NO_OWNER && owner >= t->n_regs)
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT, "the checkpoint's option %" PRIu32 " names "
                       "regularizer %" PRIu32 " of %zu", key, owner, t->n_regs);
    if (!d)
        return REGOPT_OK; /* a newer writer's key (of any owner): skipped, as documented */
    if (!d || (owner == NO_OWNER) != (ops == NULL) ||
        (ops && ops != t->regs[owner]->ops) || !saved_option(d) ||
        type != (uint32_t)d->type ||
        (is_group(d) ? group >= REGOPT_MAX_GROUPS : group != NO_GROUP))
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT,
                       "the checkpoint's option %" PRIu32 " (%s) is malformed", key,
                       d ? d->name : "unknown");
    o->d = d;
    o->reg = owner == NO_OWNER ? NULL : t->regs[owner];
    o->group = is_group(d) ? (int32_t)group : -1;
    o->ivalue = (int64_t)ro_ck_rd64(e + 16);
    o->value = d->type == REGOPT_TYPE_INT ? (double)o->ivalue : ro_ck_rdf64(e + 16);
    *use = 1;
    if (d->key == REGOPT_GROUP_WEIGHT_DECAY && o->value < 0.0 && o->value != -1.0)
        return ro_fail(t->msg, REGOPT_ERR_OUT_OF_RANGE, "the checkpoint's group.weight_decay "
                       "of group %d is %g: -1 (inherit) or >= 0", (int)o->group, o->value);
    if ((d->owner == RO_OWNER_OPTIMIZER || d->owner == RO_OWNER_GROUP) &&
        !ro_optimizer_key_applies(t->opt->kind, d->key))
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT, "the checkpoint's option %s does not "
                       "apply to its optimizer", d->name);
    return ro_key_check(d, o->value, t->msg);
}

/* The regularizers' own state (a user term's load_state may refuse). */

static regopt_status load_regs(regopt_trainer *t, const ro_ck_states *rs)
{
    regopt_status st = REGOPT_OK;
    size_t i;
    int pass;
    /* loads that may refuse (the host's) first: the built-in ones cannot */
    for (pass = 0; pass < 2; pass++)
        for (i = 0; i < t->n_regs && st == REGOPT_OK; i++) {
            const ro_reg_ops *o = t->regs[i]->ops;
            if (o->load && (int)((o->flags & RO_REG_LOAD_MAY_FAIL) == 0) == pass)
                st = o->load(t->regs[i], rs->at[i], rs->size[i]);
        }
    return st;
}

/* The options of one load: the new values, the values they replace, and
 * how many are set (one block, so regopt_trainer_recover can put them back
 * when a term's load_state never returns). */
typedef struct ck_applied {
    uint32_t done;
    ck_option *old;
} ck_applied;

static void put_back(regopt_trainer *t, ck_applied *a)
{
    char msg[RO_MSG_SIZE];
    memcpy(msg, t->msg, sizeof msg);
    while (a->done > 0) {
        a->done--;
        (void)set_option(t, &a->old[a->done]);
    }
    memcpy(t->msg, msg, sizeof msg);
}

static void undo_options(regopt_trainer *t, void *ctx)
{
    put_back(t, ctx);
    ro_free(&t->alloc, ctx);
}

/* Apply the options (f may be NULL: none), then the regularizers' state;
 * when either is refused, the options already set are put back. */
regopt_status ro_ck_apply_options(regopt_trainer *t, const ro_ck_found *f,
                                  const ro_ck_states *rs)
{
    ck_option *next = NULL, *old = NULL;
    ck_applied *applied;
    uint32_t n, i, used = 0;
    regopt_status st = REGOPT_OK;
    if (!f)
        return load_regs(t, rs);
    n = f->size >= 8 ? ro_ck_rd32(f->data) : 0;
    if (f->size < 8 || ro_ck_rd32(f->data + 4) != 0 || (f->size - 8) / OPTION_ENTRY != n ||
        (f->size - 8) % OPTION_ENTRY)
        return ro_fail(t->msg, REGOPT_ERR_CORRUPT, "the checkpoint's \"options\" section is "
                       "malformed");
    if (n == 0)
        return load_regs(t, rs);
    applied = ro_malloc(&t->alloc, sizeof *applied + 2 * (size_t)n * sizeof *next);
    if (!applied)
        return ro_fail(t->msg, REGOPT_ERR_NO_MEMORY, "out of memory for %" PRIu32 " options", n);
    next = (ck_option *)(void *)(applied + 1);
    old = next + n;
    applied->done = 0;
    applied->old = old;
    for (i = 0; i < n && st == REGOPT_OK; i++) {
        int use;
        st = decode_option(t, f->data + 8 + (size_t)i * OPTION_ENTRY, &next[used], &use);
        if (st == REGOPT_OK && use) {
            old[used] = next[used];
            if (!read_option(t, next[used].reg, next[used].d, next[used].group,
                             &old[used].value, &old[used].ivalue))
                continue; /* not readable here: leave it alone */
            used++;
        }
    }
    /* apply in order; on a refusal put back what was already set */
    for (i = 0; i < used && st == REGOPT_OK; i++, applied->done++)
        st = set_option(t, &next[i]);
    ro_trainer_push_undo(t, undo_options, applied); /* load_state may throw */
    if (st == REGOPT_OK)
        st = load_regs(t, rs);
    ro_trainer_pop_undo(t);
    if (st != REGOPT_OK)
        put_back(t, applied);
    ro_free(&t->alloc, applied);
    return st;
}

