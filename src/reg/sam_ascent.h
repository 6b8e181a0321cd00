/* sam_ascent.h — the SAM family beyond sam.c: the ascent directions that
 * keep state across steps, FriendlySAM (Li et al., CVPR 2024) and VaSSO (Li
 * & Giannakis, NeurIPS 2023), in sam_ascent.c; WSAM's combinations (Yue et
 * al., KDD 2023) in sam_wsam.c; docs/methods.md §3.9-3.10; the family's own
 * state and its post-step hooks (sam_state.c). Used by sam.c. */
#ifndef REGOPT_SAM_ASCENT_H
#define REGOPT_SAM_ASCENT_H

#include "reg/reg.h"

/* sam.direction */
#define RO_SAM_DIR_GRADIENT 0 /* SAM: the ascent follows g */
#define RO_SAM_DIR_FRIENDLY 1 /* FriendlySAM: g - sigma m, m an EMA of g */
#define RO_SAM_DIR_VASSO 2    /* VaSSO: d, an EMA of g */

typedef struct ro_sam_dir {
    int mode;                     /* sam.direction */
    double sigma, lambda, theta;  /* sam.friendly_sigma, sam.friendly_lambda, sam.vasso_theta */
    float *state; /* committed: FriendlySAM's m or VaSSO's d (n_trainable) */
    float *next;  /* the step's new state, committed by ro_sam_dir_commit */
    float *buf;   /* the ascent direction of the chunk under way */
    int32_t state_vec, next_vec, buf_vec; /* the same with a backend */
    int held;      /* state holds a value */
    int held_mode; /* ... of this mode (in use only while it is sam.direction) */
    int pending;   /* next is complete: the step may commit it */
} ro_sam_dir;

void ro_sam_dir_init(ro_sam_dir *d);
/* The buffers mode needs (idempotent); the message in msg on failure. */
regopt_status ro_sam_dir_reserve(ro_sam_dir *d, const ro_env *env, char *msg);
void ro_sam_dir_release(ro_sam_dir *d, const ro_env *env);

/* A step's ascent directions. With m-sharpness, begin() once before the
 * first chunk, then make() per chunk with fresh 0; a whole step calls
 * make() alone with fresh 1 (it does begin()'s work in the same pass).
 * make() takes the chunk's clean gradient in the gradient buffers and its
 * share of the step's weight (1 for the whole step) and returns the flat
 * direction (trainable order), or NULL for the gradient itself; with
 * `squares` it also returns in *sum the sum over the pieces of squares(ctx,
 * piece) called on each piece right after it is made (the ascent norm,
 * without a pass of its own). end() after the last chunk. Only next and
 * buf change: the state stays as it was until commit(), called after the
 * update. */
void ro_sam_dir_begin(ro_sam_dir *d, const ro_par *par);
const float *ro_sam_dir_make(ro_sam_dir *d, const ro_par *par, double share, int fresh,
                             ro_sum_fn squares, void *squares_ctx, double *sum);
void ro_sam_dir_end(ro_sam_dir *d);
void ro_sam_dir_commit(ro_sam_dir *d);
/* The same through the model's backend (the vectors of state_vec ...):
 * begin(), and make(), whose direction is then buf_vec (its ascent norm a
 * separate REGOPT_VOP_SAM_SQUARES: the same bits). */
regopt_status ro_sam_dir_begin_vops(ro_sam_dir *d, const ro_env *env);
regopt_status ro_sam_dir_make_vops(ro_sam_dir *d, const ro_env *env, double share, int fresh);
/* A buffer of n_trainable floats (idempotent: nothing when *buf is set). */
regopt_status ro_sam_buffer(const ro_env *env, float **buf, char *msg);

/* ---- sam_look.c: LookSAM (sam.looksam) ---------------------------------- */

typedef struct ro_sam_look {
    int on;         /* sam.looksam */
    double alpha;   /* sam.looksam_alpha */
    float *gv;      /* committed: g_v of the last SAM step (n_trainable) */
    float *next;    /* this SAM step's g_v, committed by ro_sam_look_commit */
    int32_t gv_vec, next_vec; /* the same with a backend */
    double *coef;   /* with a backend: per trainable tensor, REGOPT_VOP_AXPBY's a, b */
    int held, pending;
} ro_sam_look;

regopt_status ro_sam_look_reserve(ro_sam_look *l, const ro_env *env, char *msg);
void ro_sam_look_release(ro_sam_look *l, const ro_env *env);
/* A SAM step's end (g_s in the gradient buffers, clean the flat g): next =
 * g_s - (<g, g_s> / ||g||^2) g per tensor. */
regopt_status ro_sam_look_store(ro_sam_look *l, const ro_env *env, const float *clean,
                                int32_t clean_vec);
/* A reuse step's end (g in the gradient buffers): per tensor
 * g += alpha ||g|| / (||g_v|| + 1e-8) g_v. */
regopt_status ro_sam_look_reuse(const ro_sam_look *l, const ro_env *env);
void ro_sam_look_commit(ro_sam_look *l);

/* ---- sam_momentum.c: Momentum-SAM (sam.momentum) ------------------------- */

/* The step's one pass at w - rho v / (||v|| + delta), v = st->opt_m; save
 * holds w meanwhile (*perturbed 1), restored by copy. *applied 0 (a pass
 * at w) when ||v|| = 0 or rho = 0. */
regopt_status ro_sam_msam(const ro_env *env, ro_step *st, float *save, double rho,
                          double delta, int *perturbed, double *loss, double *norm,
                          int *applied);
/* The same through the model's backend: save_vec holds w meanwhile. */
regopt_status ro_sam_msam_vops(const ro_env *env, ro_step *st, int32_t save_vec, double rho,
                               double delta, int *perturbed, double *loss, double *norm,
                               int *applied);

/* ---- the SAM section's checkpoint state (sam_ascent.c) -------------------
 * Records of 16 + 4E bytes (docs/checkpoint-format.md §3.5): the
 * direction's state, then LookSAM's g_v, each when held; with a backend
 * the same bytes, through its buffers. */
uint64_t ro_sam_state_size(const ro_sam_dir *d, const ro_sam_look *l, size_t n);
void ro_sam_state_save(const ro_sam_dir *d, const ro_sam_look *l, const ro_env *env,
                       ro_ck_sink *out);
regopt_status ro_sam_state_check(ro_sam_dir *d, ro_sam_look *l, const ro_env *env,
                                 const unsigned char *p, uint64_t size, char *msg);
/* With a backend through REGOPT_VOP_WRITE, which may fail (what was not
 * written is then not held). */
regopt_status ro_sam_state_load(ro_sam_dir *d, ro_sam_look *l, const ro_env *env,
                                const unsigned char *p, uint64_t size);

/* ---- sam_wsam.c: GSAM's and WSAM's update directions ------------------- */

/* GSAM (sam.gsam): grad = (1 + alpha c) g_p - alpha g, c = <g, g_p> /
 * (||g_p|| + delta)^2, sums in double in sequential order. */
regopt_status ro_sam_gsam_combine(const ro_env *env, const float *clean, int32_t clean_vec,
                                  double alpha, double delta);

#define RO_SAM_WSAM_OFF 0
#define RO_SAM_WSAM_DECOUPLED 1
#define RO_SAM_WSAM_COUPLED 2

typedef struct ro_sam_wsam {
    int mode;      /* sam.wsam */
    double gamma;  /* sam.wsam_gamma */
    float *sharp;  /* decoupled: g_p - g, for the raw step after the update */
    int32_t sharp_vec; /* the same with a backend */
    double *coef;      /* with a backend: per trainable tensor, the raw step's a, b */
    int32_t *flags;    /* ... and whether it moves the tensor */
    int pending;   /* the raw step is owed after this step's update */
    const regopt_optimizer *opt; /* the raw step's scalars while it runs */
    double c;      /* lr alpha */
} ro_sam_wsam;

/* The end of a SAM step's gradient (rc: how it went so far; applied: the
 * ascent was made; clean: the flat clean gradient g): coupled, the
 * gradient becomes alpha g_p + (1 - alpha) g; decoupled, it becomes g and
 * sharp g_p - g, averaged over replicas by a sync of its own. */
regopt_status ro_sam_wsam_finish(ro_sam_wsam *w, const ro_env *env, ro_step *st,
                                 const float *clean, int32_t clean_vec, int applied,
                                 regopt_status rc);
/* The raw step owed after this step's update, run by the trainer with
 * the update's blocks: its piece function (ctx: w), or NULL. */
ro_piece_fn ro_sam_wsam_pieces(ro_sam_wsam *w, const ro_step *st, void **ctx);
/* ... and with a backend, the raw step as one REGOPT_VOP_AXPBY. */
regopt_status ro_sam_wsam_vops(ro_sam_wsam *w, const ro_env *env, const ro_step *st);
/* The step is made: nothing is owed any more. */
void ro_sam_wsam_after(ro_sam_wsam *w);

/* The SAM regularizer's own state (ro_reg.self), shared by sam.c and
 * sam_state.c. */
typedef struct ro_sam_state {
    double rho, delta, eta, gsam_alpha, rho_min, ascent_wd;
    int adaptive, gsam, rho_follows_lr, same_seed, sync_ascent, msam;
    int64_t every, m_rows;
    uint8_t group_adaptive[REGOPT_MAX_GROUPS];
    uint8_t group_perturb[REGOPT_MAX_GROUPS]; /* SAM-ON: 0 = out of the ascent */
    float *save;  /* w before the ascent, restored by copy (n_trainable) */
    float *accum; /* m-sharpness: sum of the chunks' perturbed gradients */
    float *clean; /* GSAM, WSAM: the clean gradient */
    ro_sam_wsam wsam; /* sam.wsam */
    ro_sam_look look; /* sam.looksam */
    ro_sam_dir dir; /* sam.direction and its state */
    /* what the step under way measured, committed to the statistics */
    double clean_loss, perturbed_loss, ascent_norm, rho_used;
    int applied;
    int perturbed; /* w is at w + eps (save holds w) */
    /* with a backend (regopt_model_set_backend): save is this buffer, and
       flags the per-tensor bits of REGOPT_VOP_SAM_* (trainable tensors) */
    int32_t save_vec;
    int32_t *flags;
    int32_t accum_vec, clean_vec; /* accum and clean with a backend */
    double *coef; /* per trainable tensor, two: REGOPT_VOP_AXPBY's a, b */
} ro_sam_state;

/* sam_move.c: SAM's move of the weights -- the ascent norm ||T a||, the
 * perturbation w -> w + eps saving w, and the restore by copy -- on the
 * host's buffers, or through the model's backend. */
typedef struct ro_sam_ascent {
    const ro_sam_state *s;
    const float *dir; /* flat direction, NULL: the gradient buffers */
    int32_t dir_vec;  /* with a backend: the direction's vector (sam.direction's
                         buf_vec, else the gradients) */
    float wd, eta, c;
    int zero;         /* perturb: zero the gradient buffers once read */
} ro_sam_ascent;

void ro_sam_ascent_init(ro_sam_ascent *a, const ro_sam_state *s, const float *dir,
                        double wd_scale, double c, int zero);
/* One chunk of ||T a||^2 (an ro_sum_fn; ctx: ro_sam_ascent). */
double ro_sam_ascent_squares(void *ctx, const ro_param *p, size_t j0, size_t j1);
/* ||T a|| over the trainable tensors. */
regopt_status ro_sam_ascent_norm(ro_reg *r, const float *dir, double wd_scale, double *norm);
/* save = w, w = w + c T^2 a; with zero (dir NULL), the gradient zeroed. */
regopt_status ro_sam_perturb(ro_reg *r, const float *dir, double c, double wd_scale, int zero);
/* w = save. */
regopt_status ro_sam_restore(ro_reg *r);
/* Backend: the vectors the options need (idempotent), flags and coef,
 * while attached. */
regopt_status ro_sam_backend_reserve(ro_reg *r);
void ro_sam_backend_release(ro_reg *r);

/* The kernels of one range, shared with the CPU backend (trainer/
 * backend_cpu.c): the sum of (T a)^2 over [0, n) (0 unless perturbed),
 * and the move of [0, n) (zero_g: the gradient, zeroed once read, or
 * NULL). */
double ro_sam_squares_range(const float *w, const float *g, size_t n, float wd, float eta,
                            int perturbed, int adaptive);
void ro_sam_perturb_range(float *w, const float *g, float *save, size_t n, float c, float wd,
                          float eta, int perturbed, int adaptive, float *zero_g);

/* sam_state.c: the hooks after a step and the checkpoint state. */
void ro_sam_commit(ro_reg *r, const ro_step *st);
void ro_sam_after_update(ro_reg *r, const ro_step *st);
ro_piece_fn ro_sam_after_pieces(ro_reg *r, const ro_step *st, void **ctx);
regopt_status ro_sam_after_backend(ro_reg *r, const ro_step *st);
uint64_t ro_sam_ck_size(const ro_reg *r);
void ro_sam_ck_save(const ro_reg *r, ro_ck_sink *out);
regopt_status ro_sam_ck_check(ro_reg *r, const unsigned char *p, uint64_t size);
regopt_status ro_sam_ck_load(ro_reg *r, const unsigned char *p, uint64_t size);

#endif
