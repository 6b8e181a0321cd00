/* vop_cpu.c — the CPU backend's operations that belong to a method
 * (REGOPT_VOP_SAM_PERTURB, _SAM_SQUARES, _EMA, _SWA), one part of its
 * vectors at a time, with the kernels the methods run on registered
 * buffers: so the CPU backend (trainer/backend_cpu.c) names no method, and
 * a method's operation is where its kernel is. */
#include "reg/reg.h"
#include "reg/sam_ascent.h"

int ro_reg_vop_part(const regopt_vop *op, size_t k, float *x, float *y, float *z, size_t n,
                    double *sum)
{
    size_t j;
    int per = 0, ad = 0;
    if (op->code != REGOPT_VOP_SAM_PERTURB && op->code != REGOPT_VOP_SAM_SQUARES &&
        op->code != REGOPT_VOP_EMA && op->code != REGOPT_VOP_SWA)
        return -1;
    if (n == 0) /* an empty part (or no tensors at all): nothing to do */
        return 0;
    if (op->code == REGOPT_VOP_SAM_PERTURB || op->code == REGOPT_VOP_SAM_SQUARES) {
        if (!op->flags)
            return 1;
        per = op->flags[k] & 1;
        ad = (op->flags[k] & 2) != 0;
    }
    switch (op->code) {
    case REGOPT_VOP_SAM_PERTURB:
        if (!x || !y || !z)
            return 1;
        ro_sam_perturb_range(x, y, z, n, (float)op->s[0], (float)op->s[1], (float)op->s[2], per,
                             ad, op->variant == 1 ? y : NULL);
        return 0;
    case REGOPT_VOP_SAM_SQUARES: /* chunk by chunk, as ro_sum_pieces adds them */
        if (!x || !y)
            return 1;
        for (j = 0; j < n; j += RO_CHUNK)
            *sum += ro_sam_squares_range(x + j, y + j, n - j < RO_CHUNK ? n - j : RO_CHUNK,
                                         (float)op->s[1], (float)op->s[2], per, ad);
        return 0;
    case REGOPT_VOP_EMA:
        if (!x || !y)
            return 1;
        ro_ema_range(x, y, n, op->s[0], op->s[1]);
        return 0;
    case REGOPT_VOP_SWA:
        if (!x || !y)
            return 1;
        ro_swa_range(x, y, n, op->s[0]);
        return 0;
    default:
        return -1;
    }
}
