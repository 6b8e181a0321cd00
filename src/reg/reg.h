/* reg.h — the one interface between a step and a regularizer.
 *
 * Every method (SAM, R-Drop, SMART, Bregman, user-defined terms, weight
 * averaging) is one file
 * that fills one ro_reg_ops table; the trainer, the pass pipeline and the
 * checkpoint code loop over the attached regularizers through it and never
 * name a method. Methods see their trainer only through ro_env (set at
 * attach) and, during a step, through ro_step and ro_view: this header
 * never includes the trainer's. Included by the regularizer files, the
 * pipeline, the trainer and the checkpoint code. */
#ifndef REGOPT_REG_H
#define REGOPT_REG_H

#include "model/model.h"
#include "optim/optim.h"

/* The pass layout of one step, built from every attached regularizer's
 * plan() in order: slots, n-row output blocks and fresh dropout copies are
 * handed out in that order, so results never depend on the order of attach. */
typedef struct ro_plan {
    int copies;          /* task forwards per view: 1, or 2 (R-Drop) */
    int doubled;         /* the copies run as one pass over 2n rows */
    double task_scale;   /* weight of each copy's task loss */
    int32_t copy_slot;   /* slot of copy 1 when the copies are two calls */
    int32_t slots;       /* activation slots handed out (slot 0: the task) */
    size_t blocks;       /* n-row output blocks handed out (block 0: the task) */
    uint32_t fresh;      /* fresh dropout copies handed out */
} ro_plan;

typedef struct regopt_regularizer ro_reg;
typedef struct ro_step ro_step;

/* One evaluation unit: rows [r0, r0 + n) of micro-batch bi. */
typedef struct ro_view {
    ro_step *s;
    regopt_batch rows;   /* the view (per-row arrays shifted) */
    size_t bi, r0, n, k; /* micro-batch, first row, rows, output width */
    size_t step_row;     /* first row of the view within the whole step */
    uint32_t flags, role, chunk;
    uint64_t seed;       /* dropout seed of copy 0 */
    float *z, *dz;       /* outputs of copy 0 (copy c at z + c n k) and gradients */
    const float *task_perturbation; /* input perturbation of copy 0's forward, set by
                                       a begin hook (FreeLB's first pass); NULL: none */
    double extra;        /* objective added by backward hooks (passes they run after
                            the task backwards); checked finite, summed into the loss */
    double task[2];      /* task loss of each copy */
    regopt_pass pass[2]; /* the copies' passes (pass[1] unused when doubled) */
} ro_view;

/* One regopt_trainer_step. */
struct ro_step {
    ro_env *env;
    ro_reg *const *regs;  /* attached, in step order */
    size_t n_regs;
    const regopt_batch *batches;
    size_t count;
    double weight, inv_weight;
    double lr;            /* scheduled lr of this step's update */
    double lr_max, lr_min; /* optimizer.lr and its floor (GSAM's rho schedule) */
    const regopt_optimizer *opt; /* the base optimizer, read-only (groups' lr_scale) */
    const float *opt_m;   /* its first block of state, read-only: SGD's momentum
                             buffer, Adam's / RAdam's m (n_trainable; Momentum-SAM) */
    int32_t opt_m_vec;    /* the same with a backend: its vector, or REGOPT_VEC_NONE */
    int64_t total_steps;  /* optimizer.total_steps */
    uint64_t step, seed;
    ro_plan plan;
    float *outputs, *d_outputs; /* scratch: blocks * rows * width */
    double acc[RO_MAX_REGS * 4 + 1]; /* [0] task loss, then each reg's, at w */
    size_t n_acc;
    size_t row_bi, row_at;  /* rows before micro-batch row_bi (a cursor) */
    /* what the weight-side regularizer leaves for the driver */
    double loss, loss2;   /* objective at w and (if has_loss2) at w + eps */
    int has_loss2;
    int synced;           /* 1: the step's all-reduce already ran and failed */
    /* the weights, flat in ro_param.offset order, while the host's buffers
       still hold moved ones (SAM's w + eps after its passes), else NULL:
       the driver reads the weights from here, puts them back block by
       block in the update's pass and, when the step fails or its update is
       the host's, at once (ro_reg_ops.settle) */
    const float *held;
    /* the gradient buffers were zeroed by the last pass over them (SAM's
       perturbation): the next ro_eval_all need not zero them again */
    int grads_zero;
    /* the teacher's outputs of every row of the step, in step-row order,
       left by a regularizer that keeps a teacher (RO_REG_KEEPS_TEACHER) in
       its prepare hook; NULL when none is attached */
    const float *teacher;
    /* what a weight-side regularizer may call */
    void *driver;
    regopt_status (*zero_grads)(ro_step *s);
    regopt_status (*eval_rows)(ro_step *s, size_t bi, size_t r0, size_t rows, uint32_t chunk,
                               uint32_t flags, uint32_t role, double *loss);
    regopt_status (*eval_all)(ro_step *s, uint32_t flags, uint32_t role, double *loss);
    regopt_status (*sync)(ro_step *s, regopt_status local, double *loss, double *loss2);
};

/* ro_reg_ops.flags beyond the public REGOPT_REG_* bits. */
#define RO_REG_LOAD_MAY_FAIL 0x100u /* load() calls the host */
#define RO_REG_KEEPS_TEACHER 0x200u /* prepare() fills ro_step.teacher */
/* its work after the update takes the weights into state it must keep
   finite (the teacher's EMA): the step is refused while a weight is not
   finite, also where the update would let it pass (SGD without momentum,
   REGOPT_HOST) */
#define RO_REG_TAKES_WEIGHTS 0x400u
/* runs on a model with a backend (regopt_model_set_backend): its parameter-
   sized work goes through the backend, or it has none */
#define RO_REG_BACKEND 0x800u

typedef struct ro_reg_ops {
    const char *name;            /* "sam": key prefix, messages, checkpoints */
    const char *title;           /* "SAM": in messages */
    regopt_regularizer_kind kind;
    uint32_t flags;              /* REGOPT_REG_WEIGHT_SIDE | REGOPT_REG_SINGLE */
    int order;                   /* fixed place in the step (loss terms, slots) */
    size_t size;                 /* bytes of the method's own state (self) */
    const ro_key_desc *keys;     /* options, then statistics (read-only) */
    size_t n_keys;
    regopt_key stat0;            /* statistics are stat0 .. stat0 + n_stats - 1 */
    size_t n_stats, n_acc;       /* n_acc: accumulators all-reduced with the gradient */

    /* life cycle, never during a step */
    void (*init)(ro_reg *r);                          /* defaults */
    void (*destroy)(ro_reg *r);                       /* NULL: nothing to release */
    regopt_status (*attach)(ro_reg *r);               /* model checks, fixed buffers */
    void (*detach)(ro_reg *r);                        /* release what attach took */
    regopt_status (*reserve)(ro_reg *r, size_t rows, size_t in_rows);
    regopt_status (*set)(ro_reg *r, const ro_key_desc *k, int32_t group, double v);
    double (*get)(const ro_reg *r, const ro_key_desc *k, int32_t group);

    /* a step, in this order; NULL hooks are skipped */
    regopt_status (*check)(ro_reg *r, const ro_step *s); /* nothing changed on failure */
    int (*due)(const ro_reg *r, uint64_t step);          /* NULL: always */
    void (*plan)(ro_reg *r, ro_plan *p, int due);        /* slots, blocks, copies */
    regopt_status (*prepare)(ro_reg *r, ro_step *s);     /* before any gradient pass */
    regopt_status (*begin)(ro_reg *r, ro_view *v);       /* before the task forwards */
    regopt_status (*forward)(ro_reg *r, ro_view *v);     /* after the task forwards */
    regopt_status (*term)(ro_reg *r, ro_view *v, double *weighted); /* adds to v->dz */
    regopt_status (*backward)(ro_reg *r, ro_view *v);    /* after the task backwards */
    regopt_status (*gradient)(ro_reg *r, ro_step *s);    /* weight side */
    /* the elementwise work that follows the update (an average's or a
       teacher's EMA, WSAM's raw step): its piece function over every
       trainable element and the context it reads (kept in self, read-only
       while it runs), NULL when there is none this step. The trainer runs
       it on each block of elements right after the update wrote the block,
       while the block is in cache (with a host's update: after it, one
       pass each), in step order; nothing is changed when the update fails */
    ro_piece_fn (*after_pieces)(ro_reg *r, const ro_step *s, void **ctx);
    /* on a model with a backend, in place of after_pieces (which then
       returns NULL): the same work as backend operations, run once the
       update (the built-in one or the host's) has succeeded, in step
       order; a failure fails the step, which is then not counted, with
       the update made, as a failed update does */
    regopt_status (*after_backend)(ro_reg *r, const ro_step *s);
    void (*after_update)(ro_reg *r, const ro_step *s);   /* cannot fail; the
                                                            rest of the work */
    void (*commit)(ro_reg *r, const ro_step *s);         /* statistics */
    /* last of a made step, when the library's own work is all done (the
       update's pass wrote the methods' state, after_update and commit did
       their bookkeeping, trainer.check_host recorded, half buffers
       published): tell the host (`step`: the new step count). Its
       callback may never return: nothing is then left half done */
    void (*made)(ro_reg *r, uint64_t step);
    /* a step abandoned by a callback that never returned (threw, longjmp'd):
       undo what the method had in flight (regopt_trainer_recover) */
    void (*abandon)(ro_reg *r);
    /* put the weights it left in ro_step.held back now (a step that fails
       after its gradient, a host's update); after_update learns that the
       update did it */
    void (*settle)(ro_reg *r);

    /* checkpoint: the method's state bytes in its "reg.N" section */
    uint64_t (*state_size)(const ro_reg *r);
    void (*save)(const ro_reg *r, ro_ck_sink *out);
    regopt_status (*check_state)(ro_reg *r, const unsigned char *p, uint64_t size);
    regopt_status (*load)(ro_reg *r, const unsigned char *p, uint64_t size); /* after check */

    /* averaged weights for evaluation (regopt_regularizer_swap_average):
       n_trainable floats in ro_param.offset order, or NULL while there are
       none yet; NULL hook: the method keeps none */
    float *(*averaged)(ro_reg *r);
    /* the same on a model with a backend: its buffer id, REGOPT_VEC_NONE
       while there are none yet (the hook exactly where `averaged` is) */
    int32_t (*averaged_vec)(ro_reg *r);
    /* the EMA buffer this regularizer itself updates after every step with
       exactly this decay, w~ <- d w~ + (1 - d) w by ro_ema_piece; NULL: none.
       Another regularizer keeping the same EMA may hold it (ro_ema_buf)
       instead of a buffer of its own, and leave the update to its owner */
    struct ro_ema_buf *(*ema)(ro_reg *r, double decay);
} ro_reg_ops;

/* The public handle: the common header of every regularizer. */
struct regopt_regularizer {
    uint32_t magic;
    ro_alloc alloc;
    const ro_reg_ops *ops;
    void *self;                  /* ops->size bytes: the method's own state */
    regopt_trainer *trainer;     /* attached to, or NULL */
    ro_env *env;                 /* the trainer's, while attached */
    int due;                     /* in the step under way */
    int32_t slot;                /* first slot handed out by plan() */
    size_t block;                /* first output block handed out by plan() */
    uint32_t fresh;              /* first fresh dropout copy handed out */
    size_t acc0;                 /* its first accumulator in ro_step.acc */
    double stats[8];             /* ops->n_stats of the last step */
    int swapped;                 /* its averaged weights are in the host's buffers
                                    (trainer/swap.c); steps are refused meanwhile */
    char msg[RO_MSG_SIZE];
};

/* The attached regularizer's model keeps its parameters behind a backend
 * (regopt_model_set_backend): its parameter-sized work goes through it. */
static inline int ro_reg_on_backend(const ro_reg *r) { return r->env->model->has_backend; }

/* ema.c: v <- b v + (1 - b) w over the trainable weights (v: n_trainable
 * floats), in double, rounded once -- the teacher's and the average's. */
typedef struct ro_ema_job {
    float *avg;
    double keep, take; /* b and 1 - b */
} ro_ema_job;
void ro_ema_set(ro_ema_job *e, float *avg, double decay);
void ro_ema_piece(void *ctx, const ro_param *p, size_t j0, size_t j1);
/* The recurrence over [0, n): v = (float)(keep v + take w) (the CPU backend's
 * REGOPT_VOP_EMA). */
void ro_ema_range(float *v, const float *w, size_t n, double keep, double take);
/* vop_cpu.c: the CPU backend's operations that belong to a method
 * (REGOPT_VOP_SAM_PERTURB, _SAM_SQUARES, _EMA, _SWA) on part k of its
 * vectors (x, y, z: the parts, NULL where the vector is none; n elements).
 * A reduction adds its part's chunk sums to *sum in order. Returns 0 (n 0:
 * nothing done), 1 when an operand is missing, -1 when the code is not one
 * of them. */
int ro_reg_vop_part(const regopt_vop *op, size_t k, float *x, float *y, float *z, size_t n,
                    double *sum);
/* average.c: SWA's step over [0, n), v = (float)(v + (w - v) / c) in double
 * (the CPU backend's REGOPT_VOP_SWA). */
void ro_swa_range(float *restrict v, const float *restrict w, size_t n, double c);
/* An EMA's weights, counted: a teacher and an average of the same decay
 * and history hold one (ro_reg_ops.ema); the last drop frees it. */
typedef struct ro_ema_buf {
    float *v;      /* n_trainable floats, zeroed when made */
    unsigned refs;
} ro_ema_buf;
ro_ema_buf *ro_ema_buf_new(const ro_alloc *a, size_t n);
void ro_ema_buf_drop(const ro_alloc *a, ro_ema_buf *b); /* NULL: nothing */

/* registry.c: every built-in method (the only place that names them). */
const ro_reg_ops *ro_reg_ops_at(size_t i);
const ro_reg_ops *ro_reg_ops_of(regopt_regularizer_kind kind);
/* The key descriptor of any key: core table, then every method's. */
const ro_key_desc *ro_any_key(regopt_key key, const ro_reg_ops **owner);

extern const ro_reg_ops ro_sam_ops, ro_rdrop_ops, ro_smart_ops, ro_bregman_ops, ro_term_ops,
    ro_average_ops, ro_adv_ops;

/* regularizer.c */
regopt_status ro_reg_check(const regopt_regularizer *r, const char *func);
/* A new handle of ops's kind with its defaults, or NULL (message set). */
regopt_regularizer *ro_reg_new(const ro_reg_ops *ops, const regopt_allocator *allocator,
                               regopt_status *status);
/* term.c: a user term's name; a built-in kind's name otherwise. */
const char *ro_term_name(const regopt_regularizer *r);

/* The seed of a pass: ro_pass_seed of the step's seed and step count. */
static inline uint64_t ro_step_seed(const ro_step *s, size_t bi, uint32_t role)
{
    return ro_pass_seed(s->seed, s->step, (uint32_t)bi, role);
}

/* A pass over the view's rows in a slot and output block of the method's
 * own, with the view's flags: the passes methods add (SMART, user terms). */
static inline void ro_view_pass(const ro_view *v, regopt_pass *p, int32_t slot, size_t block,
                                uint64_t seed)
{
    ro_pass_init(v->s->env, p, &v->rows, v->bi, v->flags, seed,
                 v->s->outputs + block * v->n * v->k);
    p->slot = slot;
    p->row_offset = v->r0;
}

#endif
