/* pipeline.h — gradient evaluations of a step (pipeline.c), used by the
 * step driver and handed to weight-side regularizers through ro_step. */
#ifndef REGOPT_PIPELINE_H
#define REGOPT_PIPELINE_H

#include "reg/reg.h"

regopt_status ro_zero_gradients(ro_step *s);
/* Forward, objective and backward over rows [r0, r0 + rows) of micro-batch
 * bi, adding to the gradients and adding the objective (already weighted by
 * the step's inv_weight) to *loss. chunk distinguishes the dropout seeds of
 * several chunks of one micro-batch. */
regopt_status ro_eval_rows(ro_step *s, size_t bi, size_t r0, size_t rows, uint32_t chunk,
                           uint32_t flags, uint32_t role, double *loss);
/* Zero the gradients, then ro_eval_rows over every micro-batch. */
regopt_status ro_eval_all(ro_step *s, uint32_t flags, uint32_t role, double *loss);

#endif
