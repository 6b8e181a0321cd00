/* model.h — the host network as the library sees it: the model handle and
 * its tensors, batch descriptors, the per-row losses, the loops over the
 * trainable elements, and one pass of the host (the callbacks as the library
 * calls them). Includes only core.h. */
#ifndef REGOPT_MODEL_H
#define REGOPT_MODEL_H

#include "core/core.h"

#include <stdatomic.h>

/* ---- model.c ----------------------------------------------------------- */

typedef struct ro_param {
    char *name;
    float *data;   /* float32 tensors: the host's buffer; half: the fp32 master */
    float *grad;   /* NULL: frozen. Staged: the library's fp32 accumulator */
    void *host_data; /* the host's buffer as registered */
    void *host_grad; /* the host's gradient buffer as registered (NULL: frozen) */
    int dtype;       /* REGOPT_DTYPE_* of both host buffers */
    int staged;      /* grad is the library's: backward writes host_grad,
                        flushed into grad after every backward (precision.c) */
    size_t count;
    size_t offset; /* into flat optimizer state, counting trainable only */
    int32_t group;
} ro_param;

/* One registered byte range [lo, hi) -- a tensor's data or its gradient --
 * as a node of a treap keyed by lo (priorities from a hash of the node's
 * index, so the depth is O(log n) whatever the registration order) and
 * augmented with the largest hi of its subtree, so that "does anything
 * overlap [lo, hi)?" costs one descent (an interval tree). */
typedef struct ro_span {
    uintptr_t lo, hi, max_hi;
    size_t left, right; /* RO_SPAN_NIL: none */
    size_t param;       /* index into params */
} ro_span;

#define RO_SPAN_NIL SIZE_MAX

/* The three trees of registered ranges (see check_overlaps in model.c). */
enum ro_span_tree {
    RO_SPANS_DATA,   /* data of trainable tensors: pairwise disjoint */
    RO_SPANS_GRAD,   /* gradients: pairwise disjoint, and apart from every data */
    RO_SPANS_FROZEN, /* data of frozen tensors: may share bytes with data */
    RO_SPAN_TREES
};

struct regopt_model {
    uint32_t magic;
    ro_alloc alloc;
    ro_param *params;
    size_t n_params, cap_params;
    ro_span *spans;                 /* at most two per tensor */
    size_t n_spans, cap_spans;
    size_t span_root[RO_SPAN_TREES];
    size_t *names;                  /* open-addressing set of param indices + 1 (0: free) */
    size_t cap_names;               /* a power of two, at least twice n_params */
    size_t n_elements;  /* all registered elements */
    size_t n_trainable; /* elements of tensors with a gradient */
    size_t output_width;
    size_t input_width;
    int32_t slots;
    uint32_t caps; /* REGOPT_CAP_* */
    regopt_pass_fn forward, backward;
    void *user;
    regopt_free_fn free_user;
    int bound; /* number of live trainers using this model */
    size_t n_half;  /* tensors registered as FLOAT16 or BFLOAT16 */
    int staged;     /* every trainable tensor is staged (precision.c) */
    /* backend.c: the host's backend (regopt_model_set_backend); then data
       and grad of every tensor are handles the library never dereferences */
    int has_backend;
    regopt_backend backend;
    int32_t next_vec; /* the next buffer id (REGOPT_VEC_BUFFER0 up) */
    char msg[RO_MSG_SIZE];
};

/* Validate a handle; on failure fill the thread-local message. */
regopt_status ro_model_check(const regopt_model *m, const char *func);

/* Size bounds (include/regopt.h documents them). The elements of all
 * tensors together: the trainer keeps up to 3 floats of optimizer state per
 * trainable element, so n * 4 * sizeof(float) must fit a size_t. */
#define RO_MAX_ELEMENTS (SIZE_MAX / (4 * sizeof(float)))
/* Floats of one batch's outputs (rows x output width), and of its input
 * embeddings (input rows x input width: SMART keeps two buffers that
 * size, 256 GiB each at the bound). */
#define RO_MAX_OUTPUT_FLOATS ((size_t)1 << 40)
#define RO_MAX_INPUT_FLOATS ((size_t)1 << 36)

/* ---- backend.c: the model's backend (regopt_model_set_backend) --------- */

/* An operation with every vector unused and size, code and tensors set. */
void ro_vop_init(const regopt_model *m, regopt_vop *op, int32_t code);
/* Run op on the model's backend; REGOPT_ERR_BACKEND (message naming the
 * operation, into msg) when it fails. */
regopt_status ro_vop_run(const regopt_model *m, regopt_vop *op, char *msg);
/* An elementwise operation of vectors x and y with scalars s0, s1 (COPY,
 * SWAP, EMA, SWA ...); *out0 (may be NULL) receives out[0]. */
regopt_status ro_vop_xy(const regopt_model *m, int32_t code, int32_t x, int32_t y, double s0,
                        double s1, double *out0, char *msg);
/* A new buffer (REGOPT_VOP_ALLOC), its id in *vec; REGOPT_VEC_NONE
 * stays in *vec on failure. */
regopt_status ro_vec_alloc(regopt_model *m, int32_t *vec, char *msg);
/* Release buffer *vec (none: nothing) and set it to REGOPT_VEC_NONE. */
void ro_vec_free(const regopt_model *m, int32_t *vec);
/* A weight is not finite: name its tensor (REGOPT_VOP_ABS_MAX per tensor)
 * for the regularizer titled `taker` that would take it:
 * REGOPT_ERR_NONFINITE_GRADIENT, or the backend's failure. */
regopt_status ro_backend_nonfinite_weight(const regopt_model *m, const char *taker, char *msg);
/* The REGOPT_ERR_UNSUPPORTED of a feature a backend cannot serve yet. */
/* One operation each: x = y (y REGOPT_VEC_NONE: x = 0); REGOPT_VOP_AXPBY
 * (per_tensor, flags: NULL or as the header says); a reduction (code
 * REGOPT_VOP_SUM_SQUARES or REGOPT_VOP_DOT) whose out[0] goes to *out. */
regopt_status ro_vop_copy(const regopt_model *m, int32_t x, int32_t y, char *msg);
regopt_status ro_vop_axpby(const regopt_model *m, int32_t x, int32_t y, int32_t z, double a,
                           double b, const double *per_tensor, const int32_t *flags, char *msg);
regopt_status ro_vop_reduce(const regopt_model *m, int32_t code, int32_t variant, int32_t x,
                            int32_t y, size_t tensor, double *out, char *msg);
regopt_status ro_backend_refuse(char *msg, const char *what);

/* ---- backend_io.c: checkpoints' transfers (REGOPT_VOP_READ / WRITE) ----- */

/* Floats of a save's scratch (ro_ck_sink.scratch) and of a load's pieces:
 * one backend call moves at most this many. */
#define RO_XFER_FLOATS 2048
/* Put `count` elements of part `tensor` of vector vec (REGOPT_VEC_FROZEN:
 * frozen tensor `tensor`) into the sink, read in pieces through the
 * scratch. A size query only counts them; a backend failure marks the
 * sink lost with REGOPT_ERR_BACKEND (message in msg) and every later call
 * on it does nothing. */
void ro_ck_part(ro_ck_sink *s, const regopt_model *m, int32_t vec, size_t tensor, size_t count,
                char *msg);
/* Every trainable tensor of vec, in order: n_trainable floats. */
void ro_ck_vec(ro_ck_sink *s, const regopt_model *m, int32_t vec, char *msg);
/* The reverse from a checkpoint's little-endian bytes (validated), in
 * pieces through a buffer of its own: REGOPT_ERR_BACKEND naming
 * REGOPT_VOP_WRITE when the backend fails (the pieces before it written). */
regopt_status ro_vec_load_part(const regopt_model *m, int32_t vec, size_t tensor, size_t count,
                               const unsigned char *src, char *msg);
regopt_status ro_vec_load(const regopt_model *m, int32_t vec, const unsigned char *src,
                          char *msg);

/* ---- parallel.c: loops over every trainable element -------------------- */

#define RO_CHUNK 4096               /* elements; pieces start at multiples */
/* Fewer trainable elements run on one thread: waking a worker costs
   10-100 us, a pass over 2^18 elements about as much. */
#define RO_PAR_MIN (64 * RO_CHUNK)

/* The trainer's loops over its model's trainable elements: the chunk table
 * and the worker pool. */
typedef struct ro_par {
    const regopt_model *model;
    const ro_alloc *alloc;
    unsigned threads;     /* REGOPT_TRAINER_THREADS */
    struct ro_pool *pool; /* NULL on one thread */
    size_t *chunk0;       /* per parameter: its first chunk */
    size_t n_chunks;
    double *chunk_sum;    /* per chunk, for ro_sum_pieces */
} ro_par;

/* Elements [j0, j1) of trainable tensor p. */
typedef void (*ro_piece_fn)(void *ctx, const ro_param *p, size_t j0, size_t j1);
typedef double (*ro_sum_fn)(void *ctx, const ro_param *p, size_t j0, size_t j1);
/* fn over every trainable element, each once, on the trainer's threads. */
void ro_each_piece(const ro_par *par, ro_piece_fn fn, void *ctx);
/* The sum of fn over every trainable element, chunk by chunk: the same
 * bits on any number of threads. */
double ro_sum_pieces(const ro_par *par, ro_sum_fn fn, void *ctx);
regopt_status ro_parallel_init(ro_par *par, const ro_alloc *a, const regopt_model *m);
void ro_parallel_release(ro_par *par);
regopt_status ro_parallel_set_threads(ro_par *par, unsigned threads, char *msg);


/* ---- loss.c ------------------------------------------------------------ */

/* Per-row softmax cross-entropy with label smoothing s: returns l and writes
 * dl/dz = softmax(z) - q (scaled by coef) into dz (may be NULL). */
double ro_softmax_ce_row(const float *z, size_t k, int32_t label, double s,
                         float coef, float *dz);
/* Per-row mean squared error over k outputs, gradient scaled by coef. */
double ro_mse_row(const float *z, const float *t, size_t k, float coef,
                  float *dz);

/* R-Drop's consistency terms; gradients scaled by coef are ADDED to d1, d2. */
double ro_sym_kl_row(const float *z1, const float *z2, size_t k, float coef, float *d1,
                     float *d2);
double ro_sq_diff_row(const float *z1, const float *z2, size_t k, float coef, float *d1,
                      float *d2);
double ro_stable_kl_row(const float *a, const float *b, size_t k, float coef, float *da);

/* ---- batch.c ----------------------------------------------------------- */

/* Validate the batches of one call against the model and loss kind and
 * return the total weight sum_i m_i w_i and the largest row count. A zero
 * total is an error unless allowed (a data-parallel replica may hold only
 * padding; the check then happens after the all-reduce). */
regopt_status ro_batches_check(const regopt_batch *b, size_t count,
                               const regopt_model *m, int loss_kind,
                               int need_targets, int allow_zero_weight,
                               double *total_weight, size_t *max_rows, char *msg);
/* The first version's descriptor ends at input_rows: hosts built against it
 * pass at least this many bytes. */
#define RO_BATCH_V1_SIZE (offsetof(regopt_batch, input_rows) + sizeof(size_t))

/* Descriptor i of an array whose stride is the size the host's header gave
 * it (batches[0].size), so an older host's smaller structs index right. */
static inline const regopt_batch *ro_batch_at(const regopt_batch *b, size_t i)
{
    return (const regopt_batch *)(const void *)((const char *)b + i * b->size);
}

/* The per-row task mask of a batch, or NULL when the host's descriptor is
 * too old to have one (its size ends before the field) or leaves it unset. */
static inline const uint8_t *ro_task_mask(const regopt_batch *b)
{
    return b->size >= offsetof(regopt_batch, task_mask) + sizeof b->task_mask ? b->task_mask
                                                                             : NULL;
}

/* 1 if row i takes the task loss (labelled), 0 if it is unlabelled. */
static inline int ro_row_labelled(const regopt_batch *b, size_t i)
{
    const uint8_t *t = ro_task_mask(b);
    return !t || t[i] != 0;
}

/* m_i * w_i for row i. */
static inline float ro_row_weight(const regopt_batch *b, size_t i)
{
    float w = b->weights ? b->weights[i] : 1.0f;
    return (b->mask && !b->mask[i]) ? 0.0f : w;
}

/* ---- pass.c: one pass of the host ---------------------------------------- */

/* What a pass (and a regularizer) may use of the trainer: the trainer owns
 * it and keeps it current (loss_kind, has_allreduce). */
typedef struct ro_env {
    const ro_alloc *alloc;
    const regopt_model *model;
    const ro_par *par;           /* loops over the trainable elements */
    char *msg;                   /* the trainer's message */
    int loss_kind;               /* REGOPT_TRAINER_LOSS */
    double label_smoothing;
    regopt_loss_fn loss_fn;
    void *loss_user;
    int has_allreduce;
    float *row_loss;             /* scratch of the task loss (rows) */
    float *d_scratch;            /* scratch of a loss callback's gradient (rows x width) */
    size_t forward_calls, backward_calls; /* of the step under way */
    /* The trainer call under way (NULL: none) and how many host callbacks
       it has running. A call made while one runs comes from inside it (a
       callback calling back in) or follows one that never returned (threw,
       longjmp'd): the trainer, its regularizers and its optimizer refuse
       it until regopt_trainer_recover (trainer/guard.c). */
    const char *busy;
    int in_host;
    atomic_int *opt_in_host;     /* the optimizer's count of the same */
    int check_host;              /* trainer.check_host: contract.c's checks */
    /* Mixed precision (precision.c): the loss scale S every backward's
       d_outputs is multiplied by (1: none), and whether a non-finite
       gradient is an overflow that skips the step (REGOPT_ERR_OVERFLOW)
       rather than an error. d_scaled: scratch of d_outputs x S, d_cap
       floats. */
    double loss_scale;
    int skip_overflow;
    float *d_scaled;
    size_t d_cap;
} ro_env;

/* Floats of room after every output buffer a pass writes into: the guard
 * of trainer.check_host (contract.c). */
#define RO_OUT_GUARD 16

/* Around every call into the host made on behalf of a trainer. */
static inline void ro_host_enter(ro_env *e)
{
    e->in_host++;
    if (e->opt_in_host)
        atomic_fetch_add_explicit(e->opt_in_host, 1, memory_order_relaxed);
}

static inline void ro_host_leave(ro_env *e)
{
    e->in_host--;
    if (e->opt_in_host)
        atomic_fetch_sub_explicit(e->opt_in_host, 1, memory_order_relaxed);
}

/* contract.c: the checks of trainer.check_host around one callback. */
void ro_contract_before_forward(const regopt_pass *p, float *saved);
regopt_status ro_contract_after_forward(ro_env *e, const regopt_pass *p, const float *saved);
uint64_t ro_contract_grad_signature(const ro_env *e);
regopt_status ro_contract_after_backward(ro_env *e, const regopt_pass *p, uint64_t before);

/* pass.c: the host as the library calls it. */
/* regopt_pass.task_scale of a pass over rows b whose task loss has
 * coefficient coef in a step of total row weight 1/inv_weight (0 unless
 * set: passes not of the task loss). */
double ro_task_scale(const regopt_batch *b, double inv_weight, double coef);
void ro_pass_init(const ro_env *e, regopt_pass *p, const regopt_batch *b, size_t bi,
                  uint32_t flags, uint64_t seed, float *outputs);
regopt_status ro_call_forward(ro_env *e, regopt_pass *p);
regopt_status ro_call_backward(ro_env *e, regopt_pass *p);
/* A view of rows [r0, r0 + rows) of b (shifted per-row arrays). */
void ro_batch_rows(regopt_batch *v, const regopt_batch *b, size_t r0, size_t rows, size_t k);
/* Embedding rows of a batch view (input_rows, or rows when 0). */
size_t ro_input_rows(const regopt_batch *v);
/* Task loss of a batch's outputs z: returns inv_weight * sum_i m_i w_i l_i
 * and writes m_i w_i * inv_weight * grad_scale * dl_i/dz_i into dz (NULL:
 * loss only). Masked rows get zero gradient whatever they hold. */
regopt_status ro_batch_loss(ro_env *e, const regopt_batch *b, const float *z,
                            double inv_weight, double grad_scale, float *dz, double *loss);

/* ---- precision.c: half-precision host buffers, loss scaling -------------- */

/* Write round(master) into the host buffer of every half tensor. */
void ro_model_publish(const ro_env *e);
/* Give every trainable float32 tensor an fp32 accumulator of the
 * library's own (loss scaling of float32 buffers); idempotent. */
regopt_status ro_model_stage(regopt_model *m, char *msg);
/* Zero the host gradient buffers of staged tensors, elements [j0, j1). */
void ro_param_zero_host_grad(const ro_param *p, size_t j0, size_t j1);
/* After a backward with parameter gradients: flush every staged host
 * gradient into its accumulator, unscaled; REGOPT_ERR_OVERFLOW when one is
 * non-finite and overflow skips the step. */
regopt_status ro_grads_flush(ro_env *e);
size_t ro_dtype_size(int dtype);

#endif
