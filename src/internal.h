/* internal.h — shared declarations of libregopt's translation units.
 * Nothing here is exported: the public API is include/regopt.h only, and
 * internal names use the ro_ prefix so the linker script can never export
 * them by accident. */
#ifndef REGOPT_INTERNAL_H
#define REGOPT_INTERNAL_H

#include "regopt.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#define RO_MSG_SIZE 256
#define RO_MAX_REGS 32 /* regularizers attached to one trainer */

/* Runtime CPU dispatch (x86-64 with GCC or Clang): a hot loop is compiled once
 * more for a wider instruction set and picked by __builtin_cpu_supports, so
 * the library still runs on any x86-64. Every wider path gives the same
 * bits as the baseline one: its operations are exact (integer arithmetic)
 * or the same IEEE-rounded float operations in the same order, or (Adam's
 * FMA path, see optim_adam.c) a sequence proved to round identically.
 * Build with -DRO_NO_DISPATCH to leave the baseline only. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(RO_NO_DISPATCH)
#define RO_X86_DISPATCH 1
#define RO_TARGET(isa) __attribute__((target(isa)))
#define RO_ALWAYS_INLINE static inline __attribute__((always_inline))
#else
#define RO_X86_DISPATCH 0
#define RO_ALWAYS_INLINE static inline
#endif

/* Handle tags: catch a handle of the wrong kind (easy to pass from ctypes,
 * where every handle is a void pointer) and use after free. */
#define RO_MAGIC_MODEL 0x4d4f444cu     /* "MODL" */
#define RO_MAGIC_OPTIMIZER 0x4f505449u /* "OPTI" */
#define RO_MAGIC_TRAINER 0x54524e52u   /* "TRNR" */
#define RO_MAGIC_REG 0x52454755u       /* "REGU" */
#define RO_MAGIC_DEAD 0xdeadbeefu

/* ---- status.c: messages ------------------------------------------------ */

/* Format a one-line message into buf (RO_MSG_SIZE bytes) and return st. */
regopt_status ro_fail(char *buf, regopt_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
/* The same, into the calling thread's message slot. */
regopt_status ro_fail_tls(regopt_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* ---- alloc.c ----------------------------------------------------------- */

typedef struct ro_alloc {
    void *(*alloc)(size_t size, void *user);
    void (*free)(void *ptr, void *user);
    void *user;
} ro_alloc;

/* Copy the hooks (NULL: libc). Both functions or neither. */
regopt_status ro_alloc_init(ro_alloc *a, const regopt_allocator *user_hooks);
void *ro_malloc(const ro_alloc *a, size_t size);
void *ro_calloc(const ro_alloc *a, size_t count, size_t size);
void ro_free(const ro_alloc *a, void *ptr);

/* ---- keys.c: the key table --------------------------------------------- */

enum ro_key_owner {
    RO_OWNER_OPTIMIZER = 1,
    RO_OWNER_GROUP = 2,         /* regopt_optimizer_set_group */
    RO_OWNER_TRAINER = 3,
    RO_OWNER_STAT = 4,
    RO_OWNER_REG = 5            /* a regularizer's key (its ops table holds it) */
};

typedef struct ro_key_desc {
    regopt_key key;
    const char *name;
    int type;       /* REGOPT_TYPE_* */
    int owner;      /* ro_key_owner */
    double min, max, def;
    uint32_t flags; /* REGOPT_KEY_* */
} ro_key_desc;

/* The core table (optimizer, groups, trainer, trainer statistics); the
 * regularizers' keys live in their ops tables (reg.h: ro_any_key). */
const ro_key_desc *ro_key_find(regopt_key key);
/* The i-th entry of the core table, NULL past the end (for iteration). */
const ro_key_desc *ro_key_at(size_t i);
/* "%.15g" or "%.17g", whichever reads back as v. */
const char *ro_fmt_double(char buf[32], double v);
/* Check that value is allowed for d (finite, in bounds, integral for
 * integer keys); on failure write a message naming the key, the value and
 * the range. */
regopt_status ro_key_check(const ro_key_desc *d, double value, char *msg);

/* A double read through a *_get_int call: integral and within int64, or a
 * clear error (never an undefined conversion). */
regopt_status ro_to_int64(double v, const char *name, int64_t *out, char *msg);

/* ---- rng.c ------------------------------------------------------------- */

void ro_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2],
                      uint32_t out[4]);

/* Roles of the passes whose seeds the trainer draws (counter word 3). */
enum ro_seed_role {
    RO_SEED_TASK = 1,
    RO_SEED_SAM_PERTURBED = 2,
    RO_SEED_SMART_NOISE = 3,
    RO_SEED_SMART_ADV = 4,
    RO_SEED_SECOND = 0x80 /* or-ed in: R-Drop's second pass */
};

/* The 64-bit dropout seed of one pass: Philox keyed by the trainer seed with
 * counter {step low, step high, micro-batch, role}. */
uint64_t ro_pass_seed(uint64_t trainer_seed, uint64_t step,
                      uint32_t micro_batch, uint32_t role);

/* ---- model.c ----------------------------------------------------------- */

typedef struct ro_param {
    char *name;
    float *data;
    float *grad;   /* NULL: frozen */
    size_t count;
    size_t offset; /* into flat optimizer state, counting trainable only */
    int32_t group;
} ro_param;

struct regopt_model {
    uint32_t magic;
    ro_alloc alloc;
    ro_param *params;
    size_t n_params, cap_params;
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
    char msg[RO_MSG_SIZE];
};

/* Validate a handle; on failure fill the thread-local message. */
regopt_status ro_model_check(const regopt_model *m, const char *func);

/* ---- optimizer.c ------------------------------------------------------- */

typedef struct ro_group_cfg {
    double lr_scale;
    double weight_decay; /* -1: inherit */
} ro_group_cfg;

struct regopt_optimizer {
    uint32_t magic;
    ro_alloc alloc;
    regopt_optimizer_kind kind;
    double lr, weight_decay, momentum, dampening, beta1, beta2, eps;
    int nesterov, amsgrad;
    int schedule;
    int64_t warmup_steps, total_steps;
    double min_lr_ratio;
    double clip_norm;
    ro_group_cfg groups[REGOPT_MAX_GROUPS];
    int bound;
    char msg[RO_MSG_SIZE];
};

regopt_status ro_optimizer_check(const regopt_optimizer *o, const char *func);
/* Cross-key consistency that single setters cannot check (order-free):
 * nesterov needs momentum, decaying schedules need total_steps. */
regopt_status ro_optimizer_validate(const regopt_optimizer *o, char *msg);
/* Whether an optimizer key means something for this kind (momentum: SGD;
 * betas: the Adam family; ...). */
int ro_optimizer_key_applies(regopt_optimizer_kind kind, regopt_key key);
/* Elements of optimizer state per trainable element for this config. */
size_t ro_optimizer_state_per_element(const regopt_optimizer *o);

/* ---- crc32.c ----------------------------------------------------------- */

/* CRC-32 (IEEE 802.3, zlib's crc32): continue `crc` (0 to start) over n bytes. */
uint32_t ro_crc32(uint32_t crc, const void *data, size_t n);

/* ---- checkpoint_format.c / checkpoint.c -------------------------------- */

#define RO_CK_MAX_SECTIONS (8 + RO_MAX_REGS) /* written by this version */
#define RO_CK_MAX_FOUND 64    /* remembered when reading */

/* A byte sink for checkpoint sections: encodes little-endian, keeps the
 * size and (when crc_on) the CRC-32 of everything put, and passes the bytes
 * to `write` through `buf` (write NULL: measure only). */
typedef struct ro_ck_sink {
    regopt_write_fn write;
    void *user;
    unsigned char *buf;
    size_t cap, used;
    uint64_t size;
    uint32_t crc;
    int crc_on, failed;
} ro_ck_sink;

void ro_ck_put(ro_ck_sink *s, const void *data, size_t n);
void ro_ck_u32(ro_ck_sink *s, uint32_t v);
void ro_ck_u64(ro_ck_sink *s, uint64_t v);
void ro_ck_f64(ro_ck_sink *s, double v);
void ro_ck_floats(ro_ck_sink *s, const float *f, size_t n);
uint32_t ro_ck_rd32(const unsigned char *p);
uint64_t ro_ck_rd64(const unsigned char *p);
double ro_ck_rdf64(const unsigned char *p);
void ro_ck_rdfloats(float *dst, const unsigned char *src, size_t n);

/* A section found in a checkpoint being loaded (CRC already checked). */
typedef struct ro_ck_found {
    char name[25];
    const unsigned char *data;
    uint64_t size;
} ro_ck_found;

#define RO_CK_HEADER 32u
#define RO_CK_VERSION 2u

/* ---- schedule.c -------------------------------------------------------- */

/* lr multiplier f(t) for t completed steps (header: regopt_schedule). */
double ro_schedule_factor(const regopt_optimizer *o, uint64_t t);

/* ---- optim_sgd.c / optim_adam.c: fused per-tensor updates -------------- */

/* Per-step scalars of one update, computed once per tensor group. */
typedef struct ro_update {
    float lr;          /* lr of the group (scheduled, scaled) */
    float wd;          /* weight decay of the group */
    float grad_scale;  /* clipping factor applied to the gradient */
    /* SGD */
    float momentum, one_minus_dampening; /* the latter rounded from double */
    int nesterov;
    int first;         /* momentum buffer not initialised yet */
    /* Adam family */
    float beta1, beta2, eps;
    float one_minus_beta1, one_minus_beta2; /* rounded from double, as torch */
    float step_size;   /* Adam: lr / (1 - b1^t); RAdam: see optim_adam.c */
    float bc2_sqrt;    /* sqrt(1 - b2^t) */
    int amsgrad;
    int rectified;     /* RAdam: rho_t > 5 */
} ro_update;

void ro_sgd_update(const ro_update *u, float *w, const float *g, float *buf,
                   size_t n);
void ro_adam_update(const ro_update *u, float *w, const float *g, float *m,
                    float *v, float *vmax, size_t n, int decoupled);
void ro_radam_update(const ro_update *u, float *w, const float *g, float *m,
                     float *v, size_t n);
/* Fill the Adam-family scalars of u for step t (1-based). */
void ro_adam_scalars(ro_update *u, const regopt_optimizer *o, uint64_t t,
                     double lr);

/* ---- pool.c: worker threads -------------------------------------------- */

/* One piece of a job: part in [0, parts). */
typedef void (*ro_task_fn)(void *ctx, unsigned part, unsigned parts);
typedef struct ro_pool ro_pool;
ro_pool *ro_pool_create(const ro_alloc *a, unsigned parts);
void ro_pool_free(ro_pool *p);
/* Run fn on every part, part 0 on the calling thread; returns when all are
 * done. No allocation, no system call when the workers are spinning. */
void ro_pool_run(ro_pool *p, ro_task_fn fn, void *ctx);

/* ---- parallel.c: loops over every trainable element -------------------- */

#define RO_CHUNK 4096               /* elements; pieces start at multiples */
/* Fewer trainable elements run on one thread: waking a worker costs
   10-100 us, a pass over 2^18 elements about as much. */
#define RO_PAR_MIN (64 * RO_CHUNK)
#define RO_MAX_THREADS 256

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

/* GCC at -O2 vectorizes only loops whose trip count is a known multiple
 * of the vector width: elementwise loops run over blocks of RO_BLOCK
 * elements through block pointers, then a scalar tail. */
#define RO_BLOCK 16

/* ---- normal.c: Box-Muller ---------------------------------------------- */

/* out[2i], out[2i+1] = the normal pair of words w[2i], w[2i+1]. */
void ro_normal_pairs(const uint32_t *w, size_t pairs, float *out);
/* One of the pair: the cosine branch (sine 0) or the sine branch. */
float ro_normal_one(uint32_t w1, uint32_t w2, int sine);

/* ---- kernels.c --------------------------------------------------------- */

double ro_sum_squares(const float *x, size_t n);
/* The sum of (T a)^2, a = g + wd w, T = |w| + eta if ad else 1, in the
 * lanes of ro_sum_squares (ASAM's ascent norm). */
double ro_sum_scaled_squares(const float *w, const float *g, size_t n, float wd, float eta,
                             int ad);
void ro_zero(float *x, size_t n);

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

/* m_i * w_i for row i. */
static inline float ro_row_weight(const regopt_batch *b, size_t i)
{
    float w = b->weights ? b->weights[i] : 1.0f;
    return (b->mask && !b->mask[i]) ? 0.0f : w;
}

#endif
