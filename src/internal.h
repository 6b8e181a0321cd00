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
    RO_OWNER_TRAINER_GROUP = 5, /* regopt_trainer_set_group */
    RO_OWNER_SAM = 6,           /* trainer keys of the SAM family */
    RO_OWNER_RDROP = 7,         /* trainer keys of R-Drop */
    RO_OWNER_SMART = 8,
    RO_OWNER_BREGMAN = 9
};

typedef struct ro_key_desc {
    regopt_key key;
    const char *name;
    int type;       /* REGOPT_TYPE_* */
    int owner;      /* ro_key_owner */
    double min, max, def;
    uint32_t flags; /* REGOPT_KEY_* */
} ro_key_desc;

const ro_key_desc *ro_key_find(regopt_key key);
/* The i-th entry of the key table, NULL past the end (for iteration). */
const ro_key_desc *ro_key_at(size_t i);
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

/* ---- trainer.c --------------------------------------------------------- */

#define RO_N_STATS (REGOPT_STAT_BREGMAN_BETA - REGOPT_STAT_LOSS + 1)
#define RO_STAT(t, k) ((t)->stats[(k) - REGOPT_STAT_LOSS])

/* SAM family configuration (sam.* keys) and buffers. */
typedef struct ro_sam {
    int enabled;
    double rho, delta, eta, gsam_alpha, rho_min, ascent_wd;
    int adaptive, gsam, rho_follows_lr, same_seed, sync_ascent;
    int64_t every, m_rows;
    uint8_t group_adaptive[REGOPT_MAX_GROUPS];
    float *save;  /* w before the ascent, restored by copy (n_trainable) */
    float *accum; /* m-sharpness: sum of the chunks' perturbed gradients */
    float *clean; /* GSAM: the clean gradient */
} ro_sam;

/* R-Drop configuration (rdrop.* keys). */
typedef struct ro_rdrop {
    int enabled;
    double alpha, ce_weight;
    int kl_sum, doubled;
    int64_t every;
} ro_rdrop;

/* Terms of the step's objective at w, accumulated over micro-batches by the
 * passes that are not SAM-perturbed, all-reduced with the gradients. */
enum {
    RO_ACC_TASK, RO_ACC_LOSS1, RO_ACC_LOSS2, RO_ACC_CONSISTENCY,
    RO_ACC_SMART_RS, RO_ACC_NOISE_SUM, RO_ACC_NOISE_ROWS, RO_ACC_BREGMAN,
    RO_ACC_N
};

/* SMART's adversarial term (smart.* keys) and its buffers. */
typedef struct ro_smart {
    int enabled;
    double lambda, epsilon, sigma, eta;
    int steps, norm, mtdnn, stable_kl, same_seed;
    float *nu, *g;  /* perturbation and its gradient, cap_in embedding rows */
    float *sort;    /* L1 projection scratch, input width */
    size_t cap_in;
} ro_smart;

/* The Bregman proximal term (bregman.* keys): EMA teacher and its outputs. */
typedef struct ro_bregman {
    int enabled, ready;   /* ready: the teacher holds weights */
    double mu, beta, beta_late, sw;
    float *teacher;       /* n_trainable */
    float *out;           /* the teacher's outputs for the step's rows */
    size_t cap_out;       /* rows */
    double last_beta;
} ro_bregman;

/* What a SAM step measured; committed to the statistics on success. */
typedef struct ro_sam_result {
    double clean_loss, perturbed_loss, ascent_norm, rho;
    int applied;
} ro_sam_result;


struct regopt_trainer {
    uint32_t magic;
    ro_alloc alloc;
    regopt_model *model;
    regopt_optimizer *opt;

    /* options */
    int loss_kind;
    double label_smoothing;
    uint64_t seed;
    regopt_loss_fn loss_fn;
    void *loss_user;
    regopt_free_fn loss_free;
    regopt_allreduce_fn allreduce;
    void *allreduce_user;
    regopt_free_fn allreduce_free;
    float *sync;        /* all-reduce buffer: n_trainable + RO_SYNC_EXTRA floats */

    /* training state */
    uint64_t step;      /* completed updates */
    int momentum_ready; /* SGD: the momentum buffer holds a value */
    float *state;       /* optimizer moments, n_trainable * per_element */
    size_t per_element;

    /* scratch, grown to the largest batch and then reused */
    size_t reserved;    /* batch rows every buffer has room for */
    size_t cap_rows;
    float *outputs, *d_outputs, *row_loss;

    size_t forward_calls, backward_calls; /* of the step under way */
    ro_sam sam;
    ro_rdrop rdrop;
    ro_smart smart;
    ro_bregman bregman;
    int rdrop_now;      /* R-Drop runs in the step under way */
    const regopt_batch *batches; /* of the step under way (teacher outputs) */
    double acc[RO_ACC_N];
    double stats[RO_N_STATS];
    char msg[RO_MSG_SIZE];

    /* threads (parallel.c) */
    unsigned threads;   /* REGOPT_TRAINER_THREADS */
    struct ro_pool *pool; /* NULL on one thread */
    size_t *chunk0;     /* per parameter: its first chunk */
    size_t n_chunks;
    double *chunk_sum;  /* per chunk, for ro_sum_pieces */
};


regopt_status ro_trainer_check(const regopt_trainer *t, const char *func);

/* ---- passes.c ---------------------------------------------------------- */

void ro_zero_gradients(const regopt_trainer *t);
/* Task loss of a batch's outputs z: returns inv_weight * sum_i m_i w_i l_i
 * and writes m_i w_i * inv_weight * grad_scale * dl_i/dz_i into dz (NULL:
 * loss only). Masked rows get zero gradient whatever they hold. */
regopt_status ro_batch_loss(regopt_trainer *t, const regopt_batch *b, const float *z,
                            double inv_weight, double grad_scale, float *dz, double *loss);
void ro_pass_init(const regopt_trainer *t, regopt_pass *p, const regopt_batch *b, size_t bi,
                  uint32_t flags, uint64_t seed);
regopt_status ro_call_forward(regopt_trainer *t, regopt_pass *p);
regopt_status ro_call_backward(regopt_trainer *t, regopt_pass *p);
/* A view of rows [r0, r0 + rows) of b (shifted per-row arrays). */
void ro_batch_rows(regopt_batch *v, const regopt_batch *b, size_t r0, size_t rows, size_t k);
/* Forward, loss and backward over rows [r0, r0 + rows) of micro-batch bi
 * (all rows: r0 = 0, rows = b->rows), adding to the gradients and adding
 * the loss scaled by inv_weight to *loss. chunk distinguishes the dropout
 * seeds of several chunks of one micro-batch. */
regopt_status ro_gradient_rows(regopt_trainer *t, const regopt_batch *b, size_t bi,
                               size_t r0, size_t rows, double inv_weight,
                               uint32_t flags, uint32_t role, uint32_t chunk,
                               double *loss);
/* Embedding rows of a batch view (input_rows, or rows when 0). */
size_t ro_input_rows(const regopt_batch *v);
/* Zero the gradients, then ro_gradient_rows over every micro-batch. */
regopt_status ro_gradient(regopt_trainer *t, const regopt_batch *batches, size_t count,
                          double inv_weight, uint32_t flags, uint32_t role, double *loss);
/* ---- allreduce.c ------------------------------------------------------- */

/* The data-parallel all-reduce of the gradients (a no-op without one). */
regopt_status ro_sync_gradients(regopt_trainer *t, regopt_status local, double *weight,
                                double *loss, double *loss2);
/* Floats after the gradients in the all-reduce buffer. */
#define RO_SYNC_EXTRA (4 + RO_ACC_N)
/* The scheduled learning rate of the next update. */
double ro_trainer_lr(const regopt_trainer *t);

/* ---- update.c ---------------------------------------------------------- */

/* Global L2 norm of the gradients; NONFINITE_GRADIENT names the tensor. */
regopt_status ro_gradient_norm(regopt_trainer *t, double *norm);
/* torch's clip_grad_norm_ factor (1 = no clipping). */
double ro_clip_scale(const regopt_optimizer *o, double norm);
/* The fused base-optimizer update of every trainable tensor. */
void ro_apply_update(regopt_trainer *t, double lr, double scale);

/* ---- sam.c ------------------------------------------------------------- */

void ro_sam_defaults(ro_sam *s);
/* Allocate what the current SAM options need (idempotent). */
regopt_status ro_sam_reserve(regopt_trainer *t);
void ro_sam_release(regopt_trainer *t);
/* Whether the step under way makes the SAM ascent (sam.every). */
int ro_sam_due(const regopt_trainer *t);
regopt_status ro_sam_set(regopt_trainer *t, regopt_key key, double value);
double ro_sam_get(const regopt_trainer *t, regopt_key key);
/* Validate SAM options against each other and the trainer. */
regopt_status ro_sam_validate(regopt_trainer *t, const regopt_batch *b, size_t count);
/* The final gradient of a SAM step into the gradient buffers, including
 * every data-parallel synchronisation; weights are restored on return. */
regopt_status ro_sam_gradient(regopt_trainer *t, const regopt_batch *batches, size_t count,
                              double *weight, double *loss, ro_sam_result *res);

/* ---- rdrop.c ----------------------------------------------------------- */

void ro_rdrop_defaults(ro_rdrop *r);
regopt_status ro_rdrop_set(regopt_trainer *t, regopt_key key, double value);
double ro_rdrop_get(const regopt_trainer *t, regopt_key key);
/* The model can run R-Drop (two slots, or doubled batches). */
regopt_status ro_rdrop_check_model(regopt_trainer *t);
/* Whether the step under way runs R-Drop (rdrop.every). */
int ro_rdrop_due(const regopt_trainer *t);
/* Output rows the scratch buffers need per batch row. */
size_t ro_rows_factor(const regopt_trainer *t);
/* Both R-Drop forwards (doubled or two calls) from the first pass p1;
 * outputs land as [z1 | z2]. */
regopt_status ro_rdrop_forwards(regopt_trainer *t, regopt_pass *p1, regopt_pass *p2,
                                uint64_t s2);
regopt_status ro_rdrop_backwards(regopt_trainer *t, regopt_pass *p1, regopt_pass *p2,
                                 size_t n);
/* The consistency term of a view's rows, alpha * its gradient added. */
double ro_rdrop_consistency(const regopt_trainer *t, const regopt_batch *v, const float *z1,
                            const float *z2, double inv_weight, float *d1, float *d2);

/* ---- smart.c ----------------------------------------------------------- */

void ro_smart_defaults(ro_smart *s);
regopt_status ro_smart_set(regopt_trainer *t, regopt_key key, double value);
double ro_smart_get(const regopt_trainer *t, regopt_key key);
regopt_status ro_smart_add(regopt_trainer *t);
void ro_smart_release(regopt_trainer *t);
/* Grow the noise buffers to `rows` embedding rows (no-op when large enough). */
regopt_status ro_smart_grow(regopt_trainer *t, size_t rows);
/* Grow the noise buffers to the step's largest embedding row count. */
regopt_status ro_smart_reserve(regopt_trainer *t, const regopt_batch *b, size_t count);
/* The slot SMART's adversarial passes use. */
int32_t ro_smart_slot(const regopt_trainer *t);
/* R_s for a view whose clean outputs z (and their gradient dz) are given:
 * the ascent and the final adversarial pass with its backward; adds
 * lambda * dR_s/dz to dz; *rs = R_s. */
regopt_status ro_smart_term(regopt_trainer *t, const regopt_batch *v, size_t bi, size_t r0,
                            uint32_t flags, uint64_t seed, uint32_t role, uint32_t chunk,
                            double inv_weight, const float *z, float *dz, double *rs);

/* ---- bregman.c --------------------------------------------------------- */

void ro_bregman_defaults(ro_bregman *b);
regopt_status ro_bregman_set(regopt_trainer *t, regopt_key key, double value);
double ro_bregman_get(const regopt_trainer *t, regopt_key key);
regopt_status ro_bregman_add(regopt_trainer *t);
void ro_bregman_release(regopt_trainer *t);
/* Room for the teacher's outputs of `rows` rows per step. */
regopt_status ro_bregman_grow(regopt_trainer *t, size_t rows);
/* The teacher's outputs for every row of the step (one weight swap). */
regopt_status ro_bregman_teacher(regopt_trainer *t, const regopt_batch *b, size_t count);
/* D_Breg of a view, mu * its gradient added to dz. */
double ro_bregman_term(const regopt_trainer *t, const regopt_batch *v, size_t bi, size_t r0,
                       const float *z, double inv_weight, float *dz);
/* After the update: w~ <- beta w~ + (1 - beta) w. */
void ro_bregman_update(regopt_trainer *t);

/* ---- crc32.c ----------------------------------------------------------- */

/* CRC-32 (IEEE 802.3, zlib's crc32): continue `crc` (0 to start) over n bytes. */
uint32_t ro_crc32(uint32_t crc, const void *data, size_t n);

/* ---- checkpoint_format.c / checkpoint.c -------------------------------- */

#define RO_CK_MAX_SECTIONS 8 /* written by this version */
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

/* A section of the trainer's checkpoint: its name and what writes it. */
typedef struct ro_ck_section {
    const char *name;
    void (*emit)(const regopt_trainer *t, ro_ck_sink *s);
} ro_ck_section;

/* A section found in a checkpoint being loaded (CRC already checked). */
typedef struct ro_ck_found {
    char name[25];
    const unsigned char *data;
    uint64_t size;
} ro_ck_found;

/* The sections a save with these flags writes, in order; returns how many. */
size_t ro_ck_sections(const regopt_trainer *t, uint32_t flags, ro_ck_section *out);
/* Validate the found sections against the trainer, then apply them; on
 * failure nothing has changed. */
regopt_status ro_ck_restore(regopt_trainer *t, uint32_t flags, const ro_ck_found *found,
                            size_t count);
/* Save / load through callbacks (checkpoint_format.c), shared by the
 * buffer, callback and file entry points. */
regopt_status ro_ck_save(const regopt_trainer *t, uint32_t flags, regopt_write_fn write,
                         void *user, uint64_t *total);
regopt_status ro_ck_load_memory(regopt_trainer *t, uint32_t flags, const unsigned char *buf,
                                size_t size);
/* Total size announced by a 32-byte header after checking magic, version
 * and header CRC; and the largest checkpoint this trainer accepts. */
regopt_status ro_ck_header(regopt_trainer *t, const unsigned char *h, uint64_t *total);
uint64_t ro_ck_limit(const regopt_trainer *t);
#define RO_CK_HEADER 32u

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

/* Elements [j0, j1) of trainable tensor p. */
typedef void (*ro_piece_fn)(void *ctx, const ro_param *p, size_t j0, size_t j1);
typedef double (*ro_sum_fn)(void *ctx, const ro_param *p, size_t j0, size_t j1);
/* fn over every trainable element, each once, on the trainer's threads. */
void ro_each_piece(const regopt_trainer *t, ro_piece_fn fn, void *ctx);
/* The sum of fn over every trainable element, chunk by chunk: the same
 * bits on any number of threads. */
double ro_sum_pieces(const regopt_trainer *t, ro_sum_fn fn, void *ctx);
regopt_status ro_parallel_init(regopt_trainer *t);
void ro_parallel_release(regopt_trainer *t);
regopt_status ro_parallel_set_threads(regopt_trainer *t, unsigned threads);

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
