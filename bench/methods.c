/* methods.c — how bench.c configures each benchmarked method: the
 * regularizers it attaches and their keys, as the PyTorch peer sets them. */
#include "bench.h"

#include <regopt.h>

#include <stddef.h>

/* The SAM family's second wave: the keys each variant sets on top of SAM's
 * rho 0.05, at its paper's defaults (LookSAM with k = 5, the target). */
typedef struct sam_setting {
    int method;
    regopt_key key;
    double value;
} sam_setting;

static const sam_setting sam_settings[] = {
    {M_ASAM, REGOPT_SAM_ADAPTIVE, 1},
    {M_ASAM, REGOPT_SAM_ETA, 0},
    {M_MSAM, REGOPT_SAM_MOMENTUM, 1},
    {M_LOOKSAM, REGOPT_SAM_LOOKSAM, 1},
    {M_LOOKSAM, REGOPT_SAM_EVERY, 5},
    {M_FSAM, REGOPT_SAM_DIRECTION, REGOPT_SAM_DIRECTION_FRIENDLY},
    {M_VASSO, REGOPT_SAM_DIRECTION, REGOPT_SAM_DIRECTION_VASSO},
    {M_WSAM, REGOPT_SAM_WSAM, REGOPT_SAM_WSAM_DECOUPLED},
};

/* The options of each method, as the PyTorch peer (torch_bench.py) sets
 * them: SAM rho 0.05; ASAM scaling every tensor by |w| (eta 0); R-Drop alpha
 * 1; SMART one ascent step, paper defaults, Bregman teacher with beta 0.999
 * throughout; MESA's preset (the Bregman term with KL(teacher || student),
 * mu 0.3, tau 5, beta 0.9998; issue 20's target: <= 1.35x plain; the host
 * reads the teacher through pass->weights, mesa_swap has it swapped in); an EMA of
 * the weights (decay 0.9998); FreeLB K 3 from a uniform start of 0.1; VAT
 * one power iteration (no PyTorch peer for these two). The timing does not
 * depend on these values. Each regularizer
 * is a handle made from the setup's counting allocator into regs[] (freed
 * after the trainer), configured through its own keys and attached. */

/* A new regularizer of `kind` from the allocator, kept in regs[]; NULL with
 * *why set when it cannot be made. */
static regopt_regularizer *new_reg(regopt_regularizer_kind kind, const regopt_allocator *a,
                                   regopt_regularizer **regs, int *n, regopt_status *st,
                                   const char **why)
{
    regopt_regularizer *r = regopt_regularizer_create(kind, a, st);
    if (r)
        regs[(*n)++] = r;
    else
        *why = regopt_last_error_message();
    return r;
}

/* Attach r once its options are set (st: how setting them went). */
static regopt_status attach(regopt_trainer *t, regopt_regularizer *r, regopt_status st,
                            const char **why)
{
    if (st != REGOPT_OK) { /* an option was refused: the regularizer says why */
        if (r)
            *why = regopt_regularizer_message(r);
        return st;
    }
    st = regopt_trainer_attach(t, r);
    if (st != REGOPT_OK)
        *why = regopt_trainer_message(t);
    return st;
}

regopt_status configure(regopt_trainer *t, int method, const regopt_allocator *a,
                        regopt_regularizer **regs, int *n_regs, const char **why)
{
    regopt_status st = REGOPT_OK;
    regopt_regularizer *r;
    int sam = method == M_SAM || method == M_ASAM || method == M_SMART_SAM ||
              (method >= M_MSAM && method <= M_WSAM);
    size_t i;
    int smart = method == M_SMART || method == M_SMART_SAM;
    if (sam) {
        if ((r = new_reg(REGOPT_REG_SAM, a, regs, n_regs, &st, why)) == NULL)
            return st;
        st = regopt_regularizer_set_double(r, REGOPT_SAM_RHO, 0.05);
        for (i = 0; st == REGOPT_OK && i < sizeof sam_settings / sizeof *sam_settings; i++)
            if (sam_settings[i].method == method) /* doubles set int keys exactly */
                st = regopt_regularizer_set_double(r, sam_settings[i].key,
                                                   sam_settings[i].value);
        if ((st = attach(t, r, st, why)) != REGOPT_OK)
            return st;
    }
    if (method == M_RDROP || method == M_RDROP2) {
        if ((r = new_reg(REGOPT_REG_RDROP, a, regs, n_regs, &st, why)) == NULL)
            return st;
        st = regopt_regularizer_set_int(r, REGOPT_RDROP_DOUBLED, method == M_RDROP);
        if ((st = attach(t, r, st, why)) != REGOPT_OK)
            return st;
    }
    if (method == M_FREELB || method == M_VAT) {
        if ((r = new_reg(REGOPT_REG_ADVERSARIAL, a, regs, n_regs, &st, why)) == NULL)
            return st;
        st = regopt_regularizer_set_int(r, REGOPT_ADV_METHOD,
                                        method == M_VAT ? REGOPT_ADV_VAT : REGOPT_ADV_FREELB);
        if (st == REGOPT_OK)
            st = regopt_regularizer_set_int(r, REGOPT_ADV_STEPS, method == M_VAT ? 1 : 3);
        if (st == REGOPT_OK)
            st = regopt_regularizer_set_double(r, REGOPT_ADV_INIT_MAG, 0.1);
        if ((st = attach(t, r, st, why)) != REGOPT_OK)
            return st;
    }
    if (smart) {
        if ((r = new_reg(REGOPT_REG_SMART, a, regs, n_regs, &st, why)) == NULL ||
            (st = attach(t, r, REGOPT_OK, why)) != REGOPT_OK)
            return st;
        if ((r = new_reg(REGOPT_REG_BREGMAN, a, regs, n_regs, &st, why)) == NULL)
            return st;
        st = regopt_regularizer_set_double(r, REGOPT_BREGMAN_BETA, 0.999);
        if ((st = attach(t, r, st, why)) != REGOPT_OK)
            return st;
    }
    if (method == M_MESA || method == M_MESA_SWAP) {
        if ((r = new_reg(REGOPT_REG_BREGMAN, a, regs, n_regs, &st, why)) == NULL)
            return st;
        st = regopt_regularizer_set_double(r, REGOPT_BREGMAN_MU, 0.3);
        if (st == REGOPT_OK)
            st = regopt_regularizer_set_int(r, REGOPT_BREGMAN_DIVERGENCE,
                                            REGOPT_BREGMAN_KL_TEACHER);
        if (st == REGOPT_OK)
            st = regopt_regularizer_set_double(r, REGOPT_BREGMAN_TAU, 5.0);
        if (st == REGOPT_OK)
            st = regopt_regularizer_set_double(r, REGOPT_BREGMAN_BETA, 0.9998);
        if (st == REGOPT_OK)
            st = regopt_regularizer_set_double(r, REGOPT_BREGMAN_BETA_LATE, 0.9998);
        if ((st = attach(t, r, st, why)) != REGOPT_OK)
            return st;
    }
    if (method == M_EMA) { /* decay 0.9998 is the default */
        if ((r = new_reg(REGOPT_REG_AVERAGE, a, regs, n_regs, &st, why)) == NULL ||
            (st = attach(t, r, REGOPT_OK, why)) != REGOPT_OK)
            return st;
    }
    return st;
}

