/* sam_state.c — what the SAM family keeps past a step: the statistics a
 * step commits, the state its ascent directions, LookSAM and WSAM hand on
 * after the update (only then, so a failed step leaves them), and the
 * checkpoint bytes of that state (docs/checkpoint-format.md §3.5). The
 * step itself is sam.c's. */
#include "reg/sam_ascent.h"

void ro_sam_commit(ro_reg *r, const ro_step *st)
{
    const ro_sam_state *s = r->self;
    double clean = st->loss, pert = r->due ? st->loss2 : st->loss;
    r->stats[0] = clean;
    r->stats[1] = pert;
    r->stats[2] = pert - clean;
    r->stats[3] = r->due ? s->ascent_norm : 0.0;
    r->stats[4] = r->due ? s->rho_used : 0.0;
    r->stats[5] = r->due ? s->applied : 0;
}

/* The step is made: the direction's new state becomes the state (only
 * here, so a failed step leaves it as it was). */
void ro_sam_after_update(ro_reg *r, const ro_step *st)
{
    ro_sam_state *s = r->self;
    if (st->held) /* the update's pass put w back */
        s->perturbed = 0;
    if (!r->due)
        return;
    ro_sam_dir_commit(&s->dir);
    ro_sam_look_commit(&s->look);
    ro_sam_wsam_after(&s->wsam);
}

ro_piece_fn ro_sam_after_pieces(ro_reg *r, const ro_step *st, void **ctx)
{
    ro_sam_state *s = r->self;
    if (r->env->model->has_backend) /* ro_sam_after_backend's */
        return NULL;
    return r->due ? ro_sam_wsam_pieces(&s->wsam, st, ctx) : NULL;
}

/* With a backend: WSAM's raw step, once the update has been made. */
regopt_status ro_sam_after_backend(ro_reg *r, const ro_step *st)
{
    ro_sam_state *s = r->self;
    return r->due ? ro_sam_wsam_vops(&s->wsam, r->env, st) : REGOPT_OK;
}

uint64_t ro_sam_ck_size(const ro_reg *r)
{
    const ro_sam_state *s = r->self;
    return ro_sam_state_size(&s->dir, &s->look, r->env->model->n_trainable);
}

void ro_sam_ck_save(const ro_reg *r, ro_ck_sink *out)
{
    const ro_sam_state *s = r->self;
    ro_sam_state_save(&s->dir, &s->look, r->env, out);
}

regopt_status ro_sam_ck_check(ro_reg *r, const unsigned char *p, uint64_t size)
{
    ro_sam_state *s = r->self;
    return ro_sam_state_check(&s->dir, &s->look, r->env, p, size, r->env->msg);
}

regopt_status ro_sam_ck_load(ro_reg *r, const unsigned char *p, uint64_t size)
{
    ro_sam_state *s = r->self;
    return ro_sam_state_load(&s->dir, &s->look, r->env, p, size);
}
