/* trainer.h — the trainer handle and its step (trainer.c, step.c, sync.c,
 * update.c), seen by the checkpoint code above it. Includes reg.h: the
 * trainer drives regularizers; regularizers never see this header. */
#ifndef REGOPT_TRAINER_H
#define REGOPT_TRAINER_H

#include "reg/reg.h"

#define RO_N_STATS (REGOPT_STAT_BACKWARD_CALLS - REGOPT_STAT_LOSS + 1)
#define RO_STAT(t, k) ((t)->stats[(k) - REGOPT_STAT_LOSS])
/* All-reduce buffer after the gradients: weight, loss, loss2, failure
 * mark, then the step's accumulators. */
#define RO_SYNC_HEAD 5u /* ... failure mark, overflow mark, accumulators */
#define RO_SYNC_EXTRA (RO_SYNC_HEAD + 1 + 4 * RO_MAX_REGS)

/* scaler.c: the loss scale and its schedule. */
typedef struct ro_scaler {
    int mode;          /* trainer.loss_scaling (REGOPT_SCALING_*) */
    double init;       /* trainer.loss_scale */
    double scale;      /* S of the next step */
    double growth, backoff;
    uint64_t interval;
    uint64_t counter;  /* committed steps since the scale last changed */
    uint64_t skipped;  /* skipped steps in all */
    int last_skipped;  /* stat.skipped */
} ro_scaler;

/* Undone by regopt_trainer_recover when a call is abandoned with it pushed. */
typedef void (*ro_undo_fn)(regopt_trainer *t, void *ctx);
#define RO_MAX_UNDO 2

struct regopt_trainer {
    uint32_t magic;
    ro_alloc alloc;
    regopt_model *model;
    regopt_optimizer *opt;
    ro_env env;         /* what regularizers see: model, loss, message */
    ro_par par;         /* threads and chunks for loops over the parameters */

    /* options */
    uint64_t seed;
    regopt_free_fn loss_free;
    regopt_allreduce_fn allreduce;
    void *allreduce_user;
    regopt_free_fn allreduce_free;
    float *sync;        /* all-reduce buffer: n_trainable + RO_SYNC_EXTRA floats */

    /* training state */
    uint64_t step;      /* completed updates */
    ro_scaler scaler;   /* mixed precision: the loss scale (scaler.c) */
    int momentum_ready; /* SGD: the momentum buffer holds a value */
    float *state;       /* optimizer moments, n_trainable * per_element */
    size_t per_element;
    /* with a backend (backend.c): the moments are these buffers (t->state
       NULL), and vop_tensor holds REGOPT_VOP_UPDATE's per-tensor scalars */
    int32_t state_vec[3];
    double *vop_tensor;
    /* the update's finiteness guard (update.c): state_bound >= max |first
       moment| (SGD: |momentum buffer|), kept by every update and load;
       weight_max and grad_max bound |w| and |g|, measured by the step's
       gradient-norm pass for the update that follows it */
    double state_bound, weight_max, grad_max;

    /* scratch, grown to the largest batch and then reused */
    size_t reserved, reserved_in; /* rows, embedding rows every buffer has room for */
    size_t cap_rows;
    float *outputs, *d_outputs, *row_loss;

    ro_reg *regs[RO_MAX_REGS]; /* attached, in step order (ops->order, then attach) */
    size_t n_regs;
    double stats[RO_N_STATS];
    char msg[RO_MSG_SIZE];

    /* guard.c: what an abandoned call (env.busy still set) left to undo */
    struct {
        ro_undo_fn fn;
        void *ctx;
    } undo[RO_MAX_UNDO];
    int n_undo;
    int busy_applied;   /* the abandoned step had already made its update */
    int busy_host;      /* it was inside the host's update (REGOPT_HOST) */

    /* probe.c (trainer.check_host): the ends of each trainable tensor */
    uint32_t *probe;    /* 2 per tensor, NULL when the option is off */
    int probe_ok;       /* they describe the tensors as the last step left them */

    /* flatness.c: regopt_trainer_flatness's scratch, allocated on first use */
    float *flat;        /* flat_vectors x n_trainable floats, or NULL */
    size_t flat_vectors;
};

regopt_status ro_trainer_check(const regopt_trainer *t, const char *func);
/* guard.c: check t and refuse while a call that runs host callbacks has not
 * returned (re-entrant or abandoned); clears the message. A call that runs
 * host callbacks uses begin (enter, then mark busy) and end instead, and
 * pushes what regopt_trainer_recover must undo while it has calls out. */
regopt_status ro_trainer_enter(regopt_trainer *t, const char *func);
regopt_status ro_trainer_begin(regopt_trainer *t, const char *func);
void ro_trainer_end(regopt_trainer *t);
void ro_trainer_push_undo(regopt_trainer *t, ro_undo_fn fn, void *ctx);
/* The body of a public call that runs host callbacks: `call` (an
 * expression giving the status) between begin and end. */
#define RO_GUARDED(t, func, call)                                                          \
    do {                                                                                   \
        regopt_status guarded_ = ro_trainer_begin((t), (func));                           \
        if (guarded_ == REGOPT_OK) {                                                       \
            guarded_ = (call);                                                             \
            ro_trainer_end(t);                                                             \
        }                                                                                  \
        return guarded_;                                                                   \
    } while (0)
void ro_trainer_pop_undo(regopt_trainer *t);
/* The pass layout of the attached regularizers (all due: the most room). */
void ro_trainer_plan(const regopt_trainer *t, ro_plan *p, int all_due);
/* Every buffer sized for micro-batches of `rows` rows and `in_rows`
 * embedding rows (at least). */
regopt_status ro_trainer_reserve_all(regopt_trainer *t, size_t rows, size_t in_rows);
/* The scheduled learning rate of the next update. */
double ro_trainer_lr(const regopt_trainer *t);

/* swap.c: REGOPT_ERR_STATE (message naming func) while a regularizer's
 * averaged weights are swapped in; a swapped regularizer put back (detach). */
regopt_status ro_trainer_swapped_check(regopt_trainer *t, const char *func);
void ro_trainer_unswap(ro_reg *r);

/* probe.c: trainer.check_host's check that no trainable tensor changed
 * between steps. */
regopt_status ro_probe_enable(regopt_trainer *t, int on);
void ro_probe_record(regopt_trainer *t);
regopt_status ro_probe_check(regopt_trainer *t);

/* flatness.c, sharpness.c, hessian.c: regopt_trainer_flatness. One call's
 * state; every vector is n_trainable floats in the trainable tensors' flat
 * order (ro_param.offset). */
typedef struct ro_flat {
    regopt_trainer *t;
    const regopt_batch *batches;
    size_t count;
    double inv_weight;
    const regopt_flatness_request *rq;
    regopt_flatness *res;
    float *w0;          /* w, saved: every move is w = w0 + delta, and the end w = w0 */
    float *vec[3];      /* work vectors (those the measures asked for need) */
    int moved;          /* w is not w0: passes are flagged PERTURBED_WEIGHTS */
} ro_flat;

/* flatness.c: the probe's passes and its loops over the trainable elements. */
regopt_status ro_flat_loss(ro_flat *f, double *loss);     /* F over every batch */
regopt_status ro_flat_gradient(ro_flat *f, double *loss); /* F+B, into the grad buffers */
void ro_flat_restore(ro_flat *f);                         /* w = w0, bit-exact */
void ro_flat_move(ro_flat *f, const float *delta, float scale); /* w = w0 + scale delta */
void ro_flat_copy(ro_flat *f, float *dst, const float *src); /* src NULL: the gradient */
double ro_flat_dot(ro_flat *f, const float *x, const float *y); /* NULL: the gradient */
/* The seed of stream `index` of measure `measure` (Philox of request.seed). */
uint64_t ro_flat_seed(const ro_flat *f, uint32_t measure, uint64_t index);
/* sharpness.c */
regopt_status ro_flat_worst(ro_flat *f);
regopt_status ro_flat_average(ro_flat *f);
/* hessian.c */
regopt_status ro_flat_eigen(ro_flat *f);
regopt_status ro_flat_trace(ro_flat *f);
void ro_flat_release(regopt_trainer *t);

/* backend.c: a trainer on a model with a backend (regopt_model_set_backend):
 * bind the tensors and allocate the moments at creation (REGOPT_ERR_BACKEND
 * or NO_MEMORY, message in msg), release them at free; the options and
 * calls it cannot serve yet (REGOPT_ERR_UNSUPPORTED naming them). */
regopt_status ro_backend_trainer_init(regopt_trainer *t, char *msg);
void ro_backend_trainer_release(regopt_trainer *t);
regopt_status ro_backend_config_check(regopt_trainer *t);
/* update.c: the gradient norm and the update through the backend. */
regopt_status ro_backend_gradient_norm(regopt_trainer *t, double *norm);
regopt_status ro_backend_update(regopt_trainer *t, double lr, double scale);

/* sync.c: the one all-reduce of a step (a no-op without one). */
regopt_status ro_sync(regopt_trainer *t, ro_step *s, regopt_status local, double *weight,
                      double *loss, double *loss2);

/* update.c: global L2 norm of the gradients; NONFINITE_GRADIENT names the
 * tensor. torch's clip_grad_norm_ factor (1 = no clipping). The fused
 * base-optimizer update of every trainable tensor, after ro_gradient_norm:
 * NONFINITE_GRADIENT, with nothing written, when it would write a
 * non-finite weight or moment. */
/* held: the weights when the host's buffers hold moved ones (ro_step.held),
 * else NULL. */
regopt_status ro_gradient_norm(regopt_trainer *t, const float *held, double *norm);
double ro_clip_scale(const regopt_optimizer *o, double norm);
/* The regularizers' after_pieces of a step, in step order. */
typedef struct ro_fused {
    ro_piece_fn fn[RO_MAX_REGS];
    void *ctx[RO_MAX_REGS];
    size_t n;
} ro_fused;
/* The update, with f's pieces run on each block right after it is
 * updated and, when s->held, the weights put back from there into each
 * block first. */
regopt_status ro_apply_update(regopt_trainer *t, double lr, double scale, const ro_fused *f,
                              ro_step *s);
/* step.c: the weights in s->held back into the host's buffers now. */
void ro_step_settle(regopt_trainer *t, ro_step *s);
/* host_update.c: REGOPT_HOST's update in place of ro_apply_update: the
 * clipping factor written into the gradient buffers, then the host's
 * callback. REGOPT_ERR_HOST_UPDATE when it fails (the library's state
 * unchanged; the parameters are what the host left), or when taker (the
 * title of a regularizer about to average the weights; NULL: none) would
 * take a non-finite weight the callback wrote. */
regopt_status ro_host_update(regopt_trainer *t, double lr, double scale, const char *taker);

/* scaler.c: loss scaling. active: the step runs at scale S and skips on
 * an overflow. sync_env: the env's scale and skip flag from the state.
 * prepare: stage float32 tensors when a scale is in effect. set/get: the
 * trainer.* scaling keys and the stat.* of 930..933 (get: 0 for another
 * key). skip: after an overflowed (uncommitted) step, returns REGOPT_OK.
 * commit: after a committed step. */
int ro_scaler_active(const regopt_trainer *t);
void ro_scaler_sync_env(regopt_trainer *t);
void ro_scaler_init(regopt_trainer *t);
regopt_status ro_scaler_prepare(regopt_trainer *t);
regopt_status ro_scaler_set(regopt_trainer *t, regopt_key key, double v);
int ro_scaler_get(const regopt_trainer *t, regopt_key key, double *v);
regopt_status ro_scaler_skip(regopt_trainer *t);
void ro_scaler_commit(regopt_trainer *t);

#endif
