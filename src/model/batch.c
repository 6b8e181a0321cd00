/* batch.c — batch descriptors: initialisation, sizes for bindings, and the
 * validation every step runs before it changes anything. */
#include "model/model.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

/* The first version's descriptor ends at input_rows: hosts built against it
 * pass at least this many bytes. */

void regopt_batch_init(regopt_batch *b)
{
    if (!b)
        return;
    memset(b, 0, sizeof *b);
    b->size = sizeof *b;
}

size_t regopt_sizeof_batch(void) { return sizeof(regopt_batch); }
size_t regopt_sizeof_pass(void) { return sizeof(regopt_pass); }
size_t regopt_sizeof_allocator(void) { return sizeof(regopt_allocator); }

static regopt_status check_rows(const regopt_batch *b, size_t bi,
                                const regopt_model *m, int loss_kind,
                                int need_targets, double *weight, char *msg)
{
    size_t i, j, k = m->output_width;
    double sum = 0.0;
    for (i = 0; i < b->rows; i++) {
        float w = b->weights ? b->weights[i] : 1.0f;
        int keep = !b->mask || b->mask[i];
        if (b->weights && !(isfinite(w) && w >= 0.0f))
            return ro_fail(msg, REGOPT_ERR_INVALID_ARGUMENT,
                           "batch %zu row %zu: weight must be finite and >= 0, got %g",
                           bi, i, (double)w);
        if (!keep)
            continue;
        sum += w;
        /* an unlabelled row (task_mask 0) has no label or target to read */
        if (!need_targets || !ro_row_labelled(b, i))
            continue;
        if ((loss_kind == REGOPT_LOSS_SOFTMAX_CE && !b->labels) ||
            (loss_kind == REGOPT_LOSS_MSE && !b->targets))
            return ro_fail(msg, REGOPT_ERR_NULL_POINTER,
                           "batch %zu row %zu is labelled (task_mask) but %s is NULL", bi, i,
                           loss_kind == REGOPT_LOSS_MSE ? "targets" : "labels");
        if (loss_kind == REGOPT_LOSS_SOFTMAX_CE &&
            (b->labels[i] < 0 || (size_t)b->labels[i] >= k))
            return ro_fail(msg, REGOPT_ERR_INVALID_ARGUMENT,
                           "batch %zu row %zu: label %d is outside [0, %zu)", bi, i,
                           (int)b->labels[i], k);
        if (loss_kind == REGOPT_LOSS_MSE)
            for (j = 0; j < k; j++)
                if (!isfinite(b->targets[i * k + j]))
                    return ro_fail(msg, REGOPT_ERR_INVALID_ARGUMENT,
                                   "batch %zu row %zu: target %zu is not finite", bi, i, j);
    }
    *weight = sum;
    return REGOPT_OK;
}

static regopt_status check_one(const regopt_batch *b, size_t bi,
                               const regopt_model *m, int loss_kind,
                               int need_targets, char *msg)
{
    if (b->size > sizeof(regopt_batch)) {
        /* from a newer header: fine as long as the fields we do not know are unset */
        const unsigned char *tail = (const unsigned char *)b + sizeof(regopt_batch);
        size_t i;
        for (i = 0; i < b->size - sizeof(regopt_batch); i++)
            if (tail[i])
                return ro_fail(msg, REGOPT_ERR_UNSUPPORTED,
                               "batch %zu sets fields newer than this library (%s)", bi,
                               REGOPT_VERSION_STRING);
    }
    if (b->rows == 0)
        return ro_fail(msg, REGOPT_ERR_INVALID_ARGUMENT, "batch %zu: rows is 0", bi);
    if (b->rows > RO_MAX_OUTPUT_FLOATS / m->output_width)
        return ro_fail(msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "batch %zu: %zu rows is too many (rows x output width %zu is at most "
                       "2^40 floats)", bi, b->rows, m->output_width);
    /* input_rows sizes what the host reads and writes through
       input_perturbation and d_input, and SMART's buffers */
    if (m->input_width && ro_input_rows(b) > RO_MAX_INPUT_FLOATS / m->input_width)
        return ro_fail(msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "batch %zu: %zu input rows x input width %zu is more than 2^36 floats",
                       bi, ro_input_rows(b), m->input_width);
    /* with a task mask, labels may be NULL when no row is labelled
       (check_rows looks at each labelled row) */
    if (ro_task_mask(b))
        return REGOPT_OK;
    if (need_targets && loss_kind == REGOPT_LOSS_SOFTMAX_CE && !b->labels)
        return ro_fail(msg, REGOPT_ERR_NULL_POINTER,
                       "batch %zu: the loss is softmax cross-entropy but labels is NULL", bi);
    if (need_targets && loss_kind == REGOPT_LOSS_MSE && !b->targets)
        return ro_fail(msg, REGOPT_ERR_NULL_POINTER,
                       "batch %zu: the loss is mean squared error but targets is NULL", bi);
    return REGOPT_OK;
}

regopt_status ro_batches_check(const regopt_batch *b, size_t count,
                               const regopt_model *m, int loss_kind,
                               int need_targets, int allow_zero_weight,
                               double *total_weight, size_t *max_rows, char *msg)
{
    size_t bi, rows = 0;
    double total = 0.0;
    if (!b)
        return ro_fail(msg, REGOPT_ERR_NULL_POINTER, "batches is NULL");
    if (count == 0)
        return ro_fail(msg, REGOPT_ERR_INVALID_ARGUMENT, "batch count is 0");
    /* The stride is batches[0].size: check it before indexing the rest. */
    if (b->size < RO_BATCH_V1_SIZE || b->size > 4096)
        return ro_fail(msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "batch 0: size field is %zu, expected %zu (use regopt_batch_init)",
                       b->size, sizeof(regopt_batch));
    /* ro_batch_at computes i * size: an array that large cannot exist */
    if (count > SIZE_MAX / b->size)
        return ro_fail(msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "batch count %zu is too large for descriptors of %zu bytes", count,
                       b->size);
    for (bi = 0; bi < count; bi++) {
        const regopt_batch *x = ro_batch_at(b, bi);
        double w = 0.0;
        regopt_status st;
        /* One array, one header: a different size would make check_one
         * read that many bytes past a descriptor the stride bounds. */
        if (x->size != b->size)
            return ro_fail(msg, REGOPT_ERR_INVALID_ARGUMENT,
                           "batch %zu: size field is %zu, batch 0 says %zu", bi, x->size,
                           b->size);
        st = check_one(x, bi, m, loss_kind, need_targets, msg);
        if (st == REGOPT_OK)
            st = check_rows(x, bi, m, loss_kind, need_targets, &w, msg);
        if (st != REGOPT_OK)
            return st;
        total += w;
        if (x->rows > rows)
            rows = x->rows;
    }
    if (!isfinite(total))
        return ro_fail(msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "the total row weight overflows (%g)", total);
    if (!(total > 0.0) && !allow_zero_weight)
        return ro_fail(msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "the batches have no weight: every row is masked or weighted 0");
    *total_weight = total;
    *max_rows = rows;
    return REGOPT_OK;
}

