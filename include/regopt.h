/*
 * regopt.h — libregopt, regularized training for any host network.
 *
 * ============================================================================
 * OVERVIEW
 * ============================================================================
 *
 * libregopt wraps published regularized-training methods (SAM and its
 * variants, R-Drop, SMART) and the usual base optimizers (SGD, Adam, AdamW,
 * RAdam, schedules, clipping) around a network that the library never owns.
 * The host keeps its network, activations, parameter and gradient buffers and
 * data; the library owns the loss and regularizer math, the orchestration of
 * the extra passes, and the optimizer state.
 *
 * This header is the manual: this comment explains the model of the library,
 * and each section below documents its functions with their keys beside
 * them. Declarations new in 1.0 end with "Since 1.0."; CHANGELOG.md maps
 * every removed 0.x call to its replacement.
 *
 * Quick start. A host with one float32 tensor w (values and gradient buffer)
 * and a forward and a backward callback (see "The callbacks") trains it with
 * SAM around AdamW (calls return a status or a handle: check them all in
 * real code).
 *
 *   regopt_status st;
 *   regopt_model *model = regopt_model_create(NULL, &st);
 *   regopt_model_add_param(model, "w", w, grad_w, n_w, REGOPT_DTYPE_FLOAT32, 0);
 *   regopt_model_set_output_width(model, n_classes);
 *   regopt_model_set_callbacks(model, forward, backward, host, NULL);
 *
 *   regopt_optimizer *opt = regopt_optimizer_create(REGOPT_ADAMW, NULL, &st);
 *   regopt_optimizer_set_double(opt, REGOPT_OPT_LR, 1e-3);
 *   regopt_trainer *trainer = regopt_trainer_create(model, opt, &st);
 *   if (!trainer) {
 *       fprintf(stderr, "%s\n", regopt_last_error_message());
 *       return 1;
 *   }
 *
 *   regopt_regularizer *sam = regopt_regularizer_create(REGOPT_REG_SAM, NULL, &st);
 *   regopt_regularizer_set_double(sam, REGOPT_SAM_RHO, 0.05);
 *   st = regopt_trainer_attach(trainer, sam);
 *
 *   for (size_t i = 0; i < n_steps && st == REGOPT_OK; i++) {
 *       regopt_batch batch;
 *       regopt_batch_init(&batch);
 *       batch.data = x[i];  batch.rows = rows;  batch.labels = y[i];
 *       st = regopt_trainer_step(trainer, &batch, 1);
 *   }
 *   if (st != REGOPT_OK)            // a failed attach or step changed nothing
 *       fprintf(stderr, "%s: %s\n", regopt_status_string(st),
 *               regopt_trainer_message(trainer));
 *   double sharpness;
 *   regopt_regularizer_get_double(sam, REGOPT_STAT_SAM_SHARPNESS, &sharpness);
 *
 *   regopt_trainer_free(trainer);   // first: detaches sam, unbinds model and opt
 *   regopt_regularizer_free(sam);
 *   regopt_optimizer_free(opt);
 *   regopt_model_free(model);
 *
 * Handles, in the order a host meets them. All four are opaque; a
 * constructor returns NULL on failure, with the status through its out
 * parameter (which may be NULL) and the details in
 * regopt_last_error_message(); freeing NULL is a no-op.
 *
 *   regopt_model        the host network as the library sees it: its
 *                       parameter tensors (host-owned float data and grad
 *                       buffers, a name and a parameter group each; a tensor
 *                       without a grad buffer is frozen, never updated), the
 *                       width of one output row, optionally the width of one
 *                       input-embedding row (SMART), how many activation slots
 *                       the host keeps (1 .. 16), what its forward can do
 *                       (REGOPT_CAP_*), and the forward and backward callbacks.
 *   regopt_optimizer    a base update rule and its hyperparameters: kind,
 *                       learning rate, schedule, weight decay, per-group
 *                       overrides, global gradient-norm clipping. It holds
 *                       configuration only; the moments live in the trainer.
 *   regopt_trainer      binds one model and one optimizer, owns every piece of
 *                       training state (moments, step count, RNG position,
 *                       scratch buffers), runs steps, keeps the last step's
 *                       statistics, and saves and loads checkpoints.
 *   regopt_regularizer  one method, created by kind (REGOPT_REG_SAM, _RDROP,
 *                       _SMART, _BREGMAN) with its defaults, configured and
 *                       read through its own keys, attached to a trainer
 *                       (regopt_trainer_attach). Since 1.0.
 *     user terms        regularizers of kind REGOPT_REG_TERM, made by
 *                       regopt_regularizer_create_term from a regopt_term_ops
 *                       table: a loss-side term of the host's own (C, or
 *                       Python through the binding) that composes with every
 *                       method. Since 1.0.
 *
 * Why regularizers became handles in 1.0 (0.x switched methods on inside
 * the trainer): a method has options, per-group options, statistics and
 * state of its own; a trainer may hold several loss-side terms; and a host's
 * own term goes through the same interface as the built-in methods. The
 * trainer composes whatever is attached and never names a method.
 *
 * Ownership. A trainer borrows its model, its optimizer and the regularizers
 * attached to it: all must outlive it. Free the trainer first (it detaches
 * its regularizers and unbinds model and optimizer), then the others in any
 * order. Freeing a model, optimizer or regularizer that a trainer still uses
 * frees nothing and writes the reason to regopt_last_error_message(). A
 * model bound to a trainer is frozen: its setters return REGOPT_ERR_STATE.
 * A model or an optimizer may be bound to several trainers. Parameter and
 * gradient buffers stay in host memory; the library reads and writes them in
 * place during a step and never keeps pointers to memory it did not get from
 * the host or its own allocator.
 *
 * The callbacks. The host supplies forward and backward functions with the
 * signature regopt_pass_fn. Each receives a regopt_pass descriptor:
 *
 *   forward   fill pass->outputs (pass->rows x pass->output_width floats)
 *             for the host batch pass->batch, in activation slot pass->slot,
 *             with dropout driven by pass->seed when REGOPT_PASS_TRAIN is set,
 *             adding pass->input_perturbation to the input embeddings when it
 *             is not NULL.
 *   backward  given pass->d_outputs = d(loss)/d(outputs) for the forward
 *             that filled the same slot, ADD the parameter gradients into the
 *             registered grad buffers (accumulate, never overwrite: the
 *             library zeroes them at the start of a step), and write
 *             d(loss)/d(input embeddings) to pass->d_input when it is not NULL.
 *
 * Both return 0 on success. Any other value aborts the step: the library puts
 * every parameter, all optimizer and regularizer state, the step count and
 * the RNG position back to what they were before the step, and returns
 * REGOPT_ERR_FORWARD or REGOPT_ERR_BACKWARD with a message naming the
 * callback and its return value. Callbacks must not call back into the same
 * trainer.
 *
 * A step. regopt_trainer_step(trainer, batches, count) runs one optimizer
 * update over `count` micro-batches (gradient accumulation):
 *
 *   1. validate every batch descriptor and the configuration (nothing has
 *      changed yet if this fails);
 *   2. zero the registered gradient buffers;
 *   3. for each micro-batch b = 0 .. count-1, in order:
 *        forward(slot 0, flags TRAIN, seed s_b)  -> outputs
 *        the library computes the loss and d(loss)/d(outputs)
 *        backward(slot 0, d_outputs)             -> host adds gradients
 *   4. with data-parallel training, one all-reduce of the gradients
 *      (regopt_trainer_set_allreduce);
 *   5. global gradient L2 norm; a non-finite loss or gradient aborts here;
 *   6. clipping (optional) and the optimizer update, fused into one pass per
 *      tensor; the step count advances. An update that would write a NaN or
 *      an infinity aborts the step before it writes anything (see
 *      regopt_trainer_step).
 *
 * The task loss of a step is the weighted mean over every unmasked row of
 * every micro-batch: L = sum_i m_i w_i l_i / sum_i m_i w_i, so k micro-batches
 * of n rows give exactly the gradient of one batch of k*n rows.
 * Without regularizers a step makes `count` forward and `count` backward
 * calls, all in slot 0. Attached regularizers add passes to step 3 (the
 * weight-side SAM runs it twice, at w and at w + eps); each method's section
 * lists its calls in order, and "Regularizers: common rules" says how they
 * compose.
 *
 * Randomness. Dropout seeds and SMART's noise come from Philox4x32-10
 * (Salmon et al., SC'11), a counter-based generator: the seed handed to a pass
 * is a pure function of the trainer seed (REGOPT_TRAINER_SEED), the step
 * count, the micro-batch index and the pass role, so the same seed gives the
 * same run on every machine, and a step that is rolled back and retried sees
 * the same seeds. regopt_random_uniform() and regopt_random_normal() expose
 * the same generator so hosts can draw dropout masks from pass->seed.
 *
 * Errors. Every function that can fail returns a regopt_status (REGOPT_OK = 0,
 * errors negative, values fixed forever) or, for constructors, a handle and
 * the status through an out parameter. regopt_status_string() names a code;
 * each handle keeps a one-line message with the details of its last failure
 * (regopt_model_message, regopt_optimizer_message, regopt_trainer_message,
 * regopt_regularizer_message), and regopt_last_error_message() holds the
 * message of the last failure in this thread that had no handle to write to
 * (a failed constructor, a NULL handle, a refused free). A failed attach is
 * told by the trainer's message; a refused option by the message of the
 * handle it was set on.
 *
 * Threads. The library has no global mutable state. Distinct handles may be
 * used from distinct threads at the same time; one handle must not be used
 * from two threads at once. Creating or freeing a trainer counts as a use of
 * its model and optimizer, and a regularizer attached to a trainer counts as
 * part of it (do not set its options while the trainer steps). A model or
 * optimizer shared by several trainers must not be modified while any of
 * them steps.
 *   A trainer may also use threads of its own: REGOPT_TRAINER_THREADS = n > 1
 * starts n - 1 worker threads (when the option is set, never in a step) that
 * share the library's loops over the parameters -- the optimizer update,
 * gradient zeroing and norms, SAM's perturb and restore, the Bregman
 * teacher -- with the calling thread. The parameters are cut in chunks of
 * 4096 elements counted from each tensor's start, and sums are added chunk
 * by chunk in a fixed order, so results are bit-identical for every n;
 * models under 262144 trainable elements run on the calling thread alone.
 * Callbacks (forward, backward, loss, user terms, all-reduce, allocator)
 * always run on the calling thread. Idle workers sleep on a condition
 * variable after a few microseconds of spinning. The workers are joined when
 * n is lowered or the trainer is freed; a trainer with workers must not be
 * used in a child after fork(). Whether threads pay depends on the machine:
 * the loops are memory-bound, and a second core helps only if it adds memory
 * bandwidth and is not busy with the host's own threads (see README,
 * Performance).
 *
 * Memory. Constructors take an optional regopt_allocator (NULL: malloc/free).
 * Training state is allocated when the trainer is created, and a
 * regularizer's buffers when it is attached (or when an option that needs
 * one is set), both from the model's allocator; scratch buffers grow to the
 * largest batch seen (or the size given to regopt_trainer_reserve) and are
 * then reused: a step never allocates once the batch sizes have been seen.
 *
 * Numbers. Parameters and gradients are float32, or float16/bfloat16 with
 * an fp32 master copy kept by the library and loss scaling (see "Mixed
 * precision" at regopt_dtype); outputs are float32. Scalars (losses,
 * norms, options) cross the API as double.
 *
 * Checkpoints. regopt_trainer_save* and regopt_trainer_load* save and
 * restore the whole training state, regularizers included, so that resumed
 * training continues bit for bit (section "Checkpoints"). The byte layout,
 * format 2 since 1.0, is described in docs/checkpoint-format.md.
 *
 * ABI. Functions are exported with the regopt_ prefix only, in the version
 * node LIBREGOPT_1; the shared library's SONAME is libregopt.so.1 (1.0 was
 * the one planned ABI break: programs built against libregopt 0.x must be
 * ported and rebuilt, see CHANGELOG.md). Enum values never change and new
 * ones are appended; descriptor structs begin with their own size and only
 * ever grow at the end; every struct size is also available from a function
 * for bindings. Nothing is passed or returned by value except scalars.
 */
#ifndef REGOPT_H
#define REGOPT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Version (this header is the single source; the build reads it)          */
/* ------------------------------------------------------------------------ */

#define REGOPT_VERSION_MAJOR 1
#define REGOPT_VERSION_MINOR 0
#define REGOPT_VERSION_PATCH 0
#define REGOPT_VERSION_NUMBER                                                 \
    (REGOPT_VERSION_MAJOR * 10000 + REGOPT_VERSION_MINOR * 100 +              \
     REGOPT_VERSION_PATCH)
#define REGOPT_STRINGIFY_(x) #x
#define REGOPT_STRINGIFY(x) REGOPT_STRINGIFY_(x)
#define REGOPT_VERSION_STRING                                                 \
    REGOPT_STRINGIFY(REGOPT_VERSION_MAJOR) "."                                \
    REGOPT_STRINGIFY(REGOPT_VERSION_MINOR) "."                                \
    REGOPT_STRINGIFY(REGOPT_VERSION_PATCH)

#if defined(_WIN32) && defined(REGOPT_BUILDING_DLL)
#define REGOPT_API __declspec(dllexport)
#elif defined(__GNUC__) && __GNUC__ >= 4
#define REGOPT_API __attribute__((visibility("default")))
#else
#define REGOPT_API
#endif

#if defined(__GNUC__) && __GNUC__ >= 4
#define REGOPT_NODISCARD __attribute__((warn_unused_result))
#else
#define REGOPT_NODISCARD
#endif

/* Version of the library actually loaded: MAJOR*10000 + MINOR*100 + PATCH.
 * Compare with REGOPT_VERSION_NUMBER to detect a header/library mismatch. */
REGOPT_API unsigned regopt_version_number(void);
/* "MAJOR.MINOR.PATCH" of the library actually loaded (static text). */
REGOPT_API const char *regopt_version_string(void);

/* ------------------------------------------------------------------------ */
/* Status codes (values are fixed forever; retired codes stay reserved)     */
/* ------------------------------------------------------------------------ */

typedef enum regopt_status {
    REGOPT_OK = 0,
    REGOPT_ERR_NULL_POINTER = -1,     /* a required pointer or handle is NULL */
    REGOPT_ERR_INVALID_ARGUMENT = -2, /* bad size, count, label, combination */
    REGOPT_ERR_OUT_OF_RANGE = -3,     /* option value outside its bounds, NaN/inf */
    REGOPT_ERR_UNKNOWN_KEY = -4,      /* key or name unknown, or not for this handle */
    REGOPT_ERR_UNSUPPORTED = -5,      /* valid request this build cannot serve (dtype,
                                         checkpoint format or feature) */
    REGOPT_ERR_NO_MEMORY = -6,        /* the allocator returned NULL */
    REGOPT_ERR_STATE = -7,            /* not allowed now (model bound, missing callback) */
    REGOPT_ERR_FORWARD = -8,          /* the forward callback returned non-zero */
    REGOPT_ERR_BACKWARD = -9,         /* the backward callback returned non-zero */
    REGOPT_ERR_LOSS_CALLBACK = -10,   /* the user loss callback returned non-zero */
    REGOPT_ERR_NONFINITE_LOSS = -11,  /* the loss of a step is NaN or infinite */
    REGOPT_ERR_NONFINITE_GRADIENT = -12, /* a gradient is NaN or infinite, or the
                                            update would write a non-finite weight
                                            or optimizer value (regopt_trainer_step) */
    REGOPT_ERR_ALLREDUCE = -13,       /* the all-reduce callback failed, or another
                                         replica's step failed */
    REGOPT_ERR_CORRUPT = -14,         /* a checkpoint is damaged: magic, size,
                                         truncation, CRC, malformed section */
    REGOPT_ERR_MISMATCH = -15,        /* a checkpoint belongs to another setup:
                                         model layout, optimizer or regularizers */
    REGOPT_ERR_IO = -16,              /* a file operation or a checkpoint
                                         read/write callback failed */
    REGOPT_ERR_HOST_UPDATE = -17,     /* the host's update callback of a REGOPT_HOST
                                         optimizer returned non-zero (since 1.0) */
    REGOPT_ERR_OVERFLOW = -18,        /* a scaled gradient overflowed (mixed
                                         precision). regopt_trainer_step
                                         never returns it: with loss scaling
                                         such a step is skipped and
                                         succeeds (stat.skipped); other
                                         calls that take gradients
                                         (regopt_trainer_flatness) may.
                                         Since 1.0. */
    REGOPT_ERR_BACKEND = -19          /* the model's backend (regopt_backend)
                                         failed an operation. Since 1.0. */
} regopt_status;

/* Static text naming a status code ("REGOPT_ERR_OUT_OF_RANGE: ..."); an
 * unknown code gives "unknown status". Never NULL. */
REGOPT_API const char *regopt_status_string(regopt_status status);

/* The detail message of the last failure in the calling thread that had no
 * handle to record it (a constructor that returned NULL, a NULL handle, a
 * free refused because a trainer still uses the handle).
 * Empty string when there is none. Valid until the next failing call in this
 * thread. */
REGOPT_API const char *regopt_last_error_message(void);

/* ------------------------------------------------------------------------ */
/* Allocator hooks                                                          */
/* ------------------------------------------------------------------------ */

/* Optional memory hooks, passed by pointer to constructors and copied.
 * Set size = sizeof(regopt_allocator) (fields are only ever appended, and
 * size tells the library which exist). alloc must return memory aligned at
 * least as malloc does, or NULL; both functions are required. The handle
 * frees everything it allocated with the same hooks; a trainer allocates
 * from its model's hooks, and so do the regularizers attached to it for
 * their buffers. */
typedef struct regopt_allocator {
    size_t size;
    void *(*alloc)(size_t size, void *user);
    void (*free)(void *ptr, void *user);
    void *user;
} regopt_allocator;

/* ------------------------------------------------------------------------ */
/* Options and statistics: one key space                                    */
/* ------------------------------------------------------------------------ */

/* Keys have fixed values, grouped by the handle they apply to. New keys are
 * appended inside their range. Each key has a name for bindings
 * (regopt_key_from_name), a type (double or integer), bounds and a default
 * (regopt_key_info). Setting a key on a handle it does not apply to returns
 * REGOPT_ERR_UNKNOWN_KEY (an SGD key on an Adam optimizer, a regularizer's
 * key on the trainer or on a regularizer of another kind); setting one of
 * the handle's own statistics (stat.* on the trainer, a method's statistics
 * on its regularizer) returns REGOPT_ERR_STATE; a value outside the bounds
 * returns REGOPT_ERR_OUT_OF_RANGE with a message naming key, value and
 * range, and so does a non-integral value for an integer key. Reading a
 * double key through a *_get_int function works when the value is
 * integral, and returns REGOPT_ERR_OUT_OF_RANGE otherwise. */
/* A key: one of the REGOPT_* option or statistic constants below or in a
 * regularizer's section. An int32_t since 1.0 (0.x: one enum), so that every
 * section can declare its own keys beside its functions. */
typedef int32_t regopt_key;

/* Keys of the optimizer, its groups, the trainer and the trainer's
 * statistics. Each regularizer declares its keys in its own section
 * (SAM 1000..1099, R-Drop 1100..1199, SMART 1200..1249, Bregman
 * 1250..1299, user-defined terms 1300..1399; a method's statistics take
 * the tail of its range). */
enum regopt_core_key {
    /* Optimizer (regopt_optimizer_set_*), 100..199. */
    REGOPT_OPT_LR = 100,           /* "optimizer.lr": base learning rate, (0, 1e3], default 1e-3 */
    REGOPT_OPT_WEIGHT_DECAY = 101, /* "optimizer.weight_decay": [0, 1e3]; default 0, AdamW 1e-2.
                                      SGD, Adam, RAdam: coupled L2 (g += wd*w);
                                      AdamW: decoupled (w *= 1 - lr*wd) */
    REGOPT_OPT_MOMENTUM = 102,     /* "optimizer.momentum": SGD only, [0, 1), default 0 */
    REGOPT_OPT_DAMPENING = 103,    /* "optimizer.dampening": SGD only, [0, 1], default 0 */
    REGOPT_OPT_NESTEROV = 104,     /* "optimizer.nesterov": SGD only, int 0/1, default 0;
                                      needs momentum > 0 and dampening 0 */
    REGOPT_OPT_BETA1 = 105,        /* "optimizer.beta1": Adam family, [0, 1), default 0.9 */
    REGOPT_OPT_BETA2 = 106,        /* "optimizer.beta2": Adam family, [0, 1), default 0.999 */
    REGOPT_OPT_EPS = 107,          /* "optimizer.eps": Adam family, (0, 1], default 1e-8 */
    REGOPT_OPT_AMSGRAD = 108,      /* "optimizer.amsgrad": Adam/AdamW, int 0/1, default 0;
                                      set it before regopt_trainer_create (the
                                      trainer sizes its state then) */
    REGOPT_OPT_SCHEDULE = 120,     /* "optimizer.schedule": regopt_schedule, default CONSTANT */
    REGOPT_OPT_WARMUP_STEPS = 121, /* "optimizer.warmup_steps": int [0, 2^53], default 0 */
    REGOPT_OPT_TOTAL_STEPS = 122,  /* "optimizer.total_steps": int [0, 2^53], default 0;
                                      required (> 0) by LINEAR and COSINE */
    REGOPT_OPT_MIN_LR_RATIO = 123, /* "optimizer.min_lr_ratio": [0, 1], default 0: the
                                      floor of LINEAR/COSINE decay as a fraction of lr */
    REGOPT_OPT_CLIP_NORM = 130,    /* "optimizer.clip_norm": global gradient L2 norm
                                      limit, [0, 1e30], default 0 = no clipping */

    /* Per parameter group (regopt_optimizer_set_group), 150..199. */
    REGOPT_GROUP_LR_SCALE = 150,     /* "group.lr_scale": [0, 1e6], default 1: the group's
                                        lr is the scheduled lr times this */
    REGOPT_GROUP_WEIGHT_DECAY = 151, /* "group.weight_decay": [-1, 1e3], default -1 =
                                        use optimizer.weight_decay; 0 = no decay
                                        (biases, normalisation weights) */
    /* Trainer (regopt_trainer_set_*), 300..399. */
    REGOPT_TRAINER_LOSS = 300,            /* "trainer.loss": regopt_loss_kind, default
                                             SOFTMAX_CE */
    REGOPT_TRAINER_LABEL_SMOOTHING = 301, /* "trainer.label_smoothing": [0, 1),
                                             default 0 (torch convention) */
    REGOPT_TRAINER_SEED = 302,            /* "trainer.seed": int, any int64 (read it
                                             with regopt_trainer_get_int: a double
                                             holds 53 bits), default 0 */
    REGOPT_TRAINER_THREADS = 303,         /* "trainer.threads": int in [1, 256],
                                             default 1: threads for the library's
                                             loops over the parameters (the
                                             optimizer update, SAM's perturb and
                                             restore, the Bregman teacher, norms).
                                             Results are bit-identical for every
                                             value; callbacks always run on the
                                             calling thread. Not saved in
                                             checkpoints. See "Threads" in the
                                             overview. */
    REGOPT_TRAINER_CHECK_HOST = 304,      /* "trainer.check_host": int 0 or 1,
                                             default 0. 1: check the host
                                             contract where it is cheap to, and
                                             fail the step on a breach (see
                                             "Checking the host" at
                                             regopt_trainer_step). Off, it costs
                                             nothing. Not saved in checkpoints.
                                             Since 1.0. */
    /* Mixed precision: loss scaling (torch.amp.GradScaler's rules and
     * defaults; see "Mixed precision" at regopt_model_add_param). Since 1.0. */
    REGOPT_TRAINER_LOSS_SCALING = 310,    /* "trainer.loss_scaling": int, a
                                             regopt_loss_scaling, default AUTO
                                             (-1): DYNAMIC when the model holds
                                             a FLOAT16 tensor, OFF otherwise */
    REGOPT_TRAINER_LOSS_SCALE = 311,      /* "trainer.loss_scale": the initial
                                             scale S (the scale itself under
                                             FIXED), (0, FLT_MAX], default
                                             65536 = 2^16. Setting it restarts
                                             the schedule: S = this, counter 0.
                                             Powers of two keep scaling exact. */
    REGOPT_TRAINER_SCALE_GROWTH = 312,    /* "trainer.scale_growth": (1, 65536],
                                             default 2: S *= this after
                                             scale_interval committed steps in
                                             a row (never past FLT_MAX) */
    REGOPT_TRAINER_SCALE_BACKOFF = 313,   /* "trainer.scale_backoff": (0, 1),
                                             default 0.5: S *= this on an
                                             overflow (never below FLT_MIN) */
    REGOPT_TRAINER_SCALE_INTERVAL = 314,  /* "trainer.scale_interval": int
                                             [1, 2^53], default 2000 */

    /* Statistics of the last successful step (regopt_trainer_get_double),
     * read-only, 900..999. Before the first step they read 0. */
    REGOPT_STAT_LOSS = 900,       /* "stat.loss": task loss (weighted mean) at w; with
                                     R-Drop the mean of its two passes */
    REGOPT_STAT_OBJECTIVE = 901,  /* "stat.objective": the objective whose gradient
                                     the step used: task loss + loss-side terms
                                     (with SAM: at w + eps) */
    REGOPT_STAT_GRAD_NORM = 902,  /* "stat.grad_norm": global L2 norm before clipping */
    REGOPT_STAT_CLIP_SCALE = 903, /* "stat.clip_scale": factor applied by clipping (1 = none) */
    REGOPT_STAT_LR = 904,         /* "stat.lr": scheduled lr used by the update */
    REGOPT_STAT_STEP = 905,       /* "stat.step": completed steps (also readable as int) */
    REGOPT_STAT_WEIGHT = 906,     /* "stat.weight": sum of m_i*w_i over the step's rows */
    REGOPT_STAT_FORWARD_CALLS = 907,  /* "stat.forward_calls" in the last step */
    REGOPT_STAT_BACKWARD_CALLS = 908, /* "stat.backward_calls" in the last step */
    /* 909..922: the regularizer statistics of 0.x, retired in 1.0 (they
       moved to the regularizer handles: REGOPT_STAT_SAM_* and friends) */
    /* Loss scaling (mixed precision). Since 1.0. */
    REGOPT_STAT_LOSS_SCALE = 930,     /* "stat.loss_scale": the scale S the next
                                         step uses (1 when scaling is off) */
    REGOPT_STAT_SKIPPED = 931,        /* "stat.skipped": int, 1 if the last
                                         regopt_trainer_step skipped its update
                                         on an overflow, 0 if it made it. The
                                         other statistics stay those of the
                                         last committed step */
    REGOPT_STAT_SKIPPED_STEPS = 932,  /* "stat.skipped_steps": int, skipped
                                         steps in all (saved in checkpoints) */
    REGOPT_STAT_SCALE_COUNTER = 933   /* "stat.scale_counter": int, committed
                                         steps since S last changed (growth
                                         when it reaches scale_interval) */
};

/* Values of REGOPT_TRAINER_LOSS_SCALING. Since 1.0. */
typedef enum regopt_loss_scaling {
    REGOPT_SCALING_AUTO = -1,   /* DYNAMIC with a FLOAT16 tensor, else OFF */
    REGOPT_SCALING_OFF = 0,     /* S = 1; a non-finite gradient fails the
                                   step (REGOPT_ERR_NONFINITE_GRADIENT) */
    REGOPT_SCALING_DYNAMIC = 1, /* GradScaler: skip and back off on an
                                   overflow, grow after the interval */
    REGOPT_SCALING_FIXED = 2    /* S = trainer.loss_scale always; an overflow
                                   still skips the step */
} regopt_loss_scaling;

/* Value types reported by regopt_key_info. */
#define REGOPT_TYPE_DOUBLE 1
#define REGOPT_TYPE_INT 2

/* Flags reported by regopt_key_info. */
#define REGOPT_KEY_MIN_EXCLUSIVE 0x1u /* min itself is not allowed */
#define REGOPT_KEY_MAX_EXCLUSIVE 0x2u /* max itself is not allowed */
#define REGOPT_KEY_READ_ONLY 0x4u     /* a statistic */
#define REGOPT_KEY_GROUP 0x8u         /* set with regopt_optimizer_set_group
                                         or regopt_regularizer_set_group */

/* Describe a key. Every out pointer may be NULL. name: "optimizer.lr" (static
 * text); type: REGOPT_TYPE_*; min/max: the bounds (integers converted to
 * double); default_value: the value a new handle holds (for
 * REGOPT_OPT_WEIGHT_DECAY the non-AdamW default 0; AdamW starts at 1e-2);
 * flags: REGOPT_KEY_*. Unknown key: REGOPT_ERR_UNKNOWN_KEY. */
REGOPT_API regopt_status regopt_key_info(regopt_key key, const char **name,
                                         int *type, double *min, double *max,
                                         double *default_value,
                                         uint32_t *flags);

/* Look a key up by its name ("optimizer.lr"). Unknown: REGOPT_ERR_UNKNOWN_KEY
 * and *key untouched. */
REGOPT_API regopt_status regopt_key_from_name(const char *name,
                                              regopt_key *key);

/* The index-th key the library knows (every option and statistic of every
 * handle, regularizer kinds included), in a fixed order: index 0, 1, ...
 * until REGOPT_ERR_OUT_OF_RANGE, so that bindings can list the keys
 * without probing numbers. A key's handle is told by its name's prefix:
 * "optimizer." and "group." (optimizer), "trainer." and "stat." (trainer),
 * otherwise the name of a regularizer kind (regopt_regularizer_kind_info)
 * followed by a dot. Since 1.0. */
REGOPT_API regopt_status regopt_key_at(size_t index, regopt_key *key);

/* ------------------------------------------------------------------------ */
/* Random numbers (Philox4x32-10, counter based)                            */
/* ------------------------------------------------------------------------ */

/* Element i of the stream `seed` is a pure function of (seed, i): word i%4 of
 * Philox4x32-10 with key {low32(seed), high32(seed)} and counter
 * {low32(i/4), high32(i/4), 0, 0}.
 *
 * regopt_random_uniform fills out[k] with element (offset + k) mapped to
 * [0, 1) as (word >> 8) * 2^-24. Hosts draw inverted-dropout masks from a
 * pass's seed with it: keep unit k when out[k] >= p_drop.
 * regopt_random_normal fills out[k] with standard normal draws (Box-Muller on
 * the pairs of words of each block; out[k] depends on offset + k only):
 * words (w1, w2) = words (0, 1) or (2, 3) of block (offset + k) / 4,
 * u1 = (w1 + 1) / 2^32, u2 = w2 / 2^32, out[k] = sqrt(-2 ln u1) times
 * cos(2 pi u2) for even offset + k, sin(2 pi u2) for odd, rounded to float.
 * The library computes ln, sin and cos itself in double precision (within
 * ~1e-15 of the exact values), so the draws are the same on every CPU and
 * C library; they match the formula computed with libm but for about one
 * draw in 10^7 (by an ulp or two).
 * Both return REGOPT_ERR_NULL_POINTER for a NULL out with n > 0. */
REGOPT_API regopt_status regopt_random_uniform(uint64_t seed, uint64_t offset,
                                               float *out, size_t n);
REGOPT_API regopt_status regopt_random_normal(uint64_t seed, uint64_t offset,
                                              float *out, size_t n);

/* ------------------------------------------------------------------------ */
/* The callback contract                                                    */
/* ------------------------------------------------------------------------ */

/* Pass flags (bits of regopt_pass.flags). */
#define REGOPT_PASS_TRAIN 0x1u             /* training mode: dropout on, use pass->seed */
#define REGOPT_PASS_NO_GRAD 0x2u           /* no backward will follow this forward */
#define REGOPT_PASS_PERTURBED_WEIGHTS 0x4u /* weights are temporarily perturbed
                                              (SAM): do not update batch-norm
                                              running statistics */
#define REGOPT_PASS_TEACHER 0x8u           /* the teacher's (EMA) weights are in
                                              the parameter buffers (SMART), or
                                              in pass->weights (see
                                              REGOPT_CAP_PASS_WEIGHTS) */
#define REGOPT_PASS_NO_PARAM_GRAD 0x10u    /* backward: compute d_input only, do
                                              not touch parameter gradients */
#define REGOPT_PASS_DOUBLED 0x20u          /* the batch twice in one pass (R-Drop):
                                              rows [0, n) with dropout seed `seed`,
                                              rows [n, 2n) with `seed2`, n = rows/2;
                                              only for models that declare
                                              REGOPT_CAP_DOUBLED_BATCH */
#define REGOPT_PASS_PROBE 0x40u            /* a pass of regopt_trainer_flatness:
                                              weights may be perturbed, dropout
                                              is off; do not update batch-norm
                                              running statistics or any other
                                              host state. Since 1.0. */
#define REGOPT_PASS_RECALIBRATE 0x80u      /* a pass of regopt_regularizer_recalibrate
                                              (with TRAIN | NO_GRAD): averaged weights
                                              are in the buffers; recompute, do not
                                              update, batch-norm running statistics:
                                              at micro_batch 0 reset them, then keep
                                              the equal-weight mean over the call's
                                              passes (torch's update_bn: momentum
                                              None). Since 1.0. */

/* What one callback invocation is about. The library fills it; the host
 * reads it (and writes through the non-const pointers). `size` is
 * sizeof(regopt_pass) as the library was built: fields beyond it do not
 * exist. Fields are only ever appended. */
typedef struct regopt_pass {
    size_t size;
    const void *batch;        /* regopt_batch.data of the micro-batch */
    size_t rows;              /* rows of this pass */
    size_t row_offset;        /* the pass covers rows [row_offset, row_offset +
                                 rows) of the batch; 0 unless a regularizer
                                 splits batches */
    int32_t slot;             /* activation slot, 0 .. slots-1 */
    uint32_t flags;           /* REGOPT_PASS_* */
    uint64_t seed;            /* dropout seed for this pass */
    size_t micro_batch;       /* index of the micro-batch within the step */
    size_t output_width;      /* floats per output row */
    float *outputs;           /* forward: write rows*output_width floats.
                                 backward: the outputs of that forward */
    const float *d_outputs;   /* backward: d(loss)/d(outputs), same shape;
                                 forward: NULL */
    const float *input_perturbation; /* forward: NULL, or input_rows *
                                        input_width floats to add to the
                                        input embeddings (SMART's
                                        adversarial passes: hosts keep
                                        batch-norm statistics still) */
    float *d_input;           /* backward: NULL, or write d(loss)/d(input
                                 embeddings), input_rows * input_width */
    size_t input_rows;        /* embedding rows of this batch (0: no inputs) */
    size_t input_width;       /* regopt_model_set_input_width */
    uint64_t seed2;           /* REGOPT_PASS_DOUBLED: dropout seed of the second
                                 half; 0 otherwise */
    double loss_scale;        /* mixed precision: the loss scale S of this
                                 step. backward: d_outputs is d(loss)/d(outputs)
                                 x S, and the gradients (and d_input) the
                                 host computes from it are at scale S too;
                                 the library unscales them. 1 without loss
                                 scaling. Exists when size > offsetof(
                                 regopt_pass, loss_scale). Since 1.0. */
    double task_scale;        /* the weight of this pass's task loss in what
                                 its backward differentiates: that objective
                                 holds task_scale x L_p, L_p the weighted mean
                                 of the task loss over the pass's rows (m_i w_i
                                 of labelled rows; a DOUBLED pass: over both
                                 halves). task_scale = c x W_p / W: W_p the
                                 pass's row weight, W the step's (every
                                 micro-batch, every replica), c the task
                                 loss's coefficient: 1; rdrop.ce_weight for
                                 each R-Drop copy; for adversarial passes
                                 with adv.objective TASK, their weight (1/K
                                 FreeLB, alpha/K free training, alpha the
                                 final pass, 1 an ascent pass). 0 for passes
                                 whose gradient is not of the task loss:
                                 SMART's and the KL objectives' adversarial
                                 passes, teacher, user-term, flatness-probe,
                                 recalibration and evaluation passes. A host
                                 that adds an auxiliary loss A (a mean over
                                 the pass's rows, e.g. on hidden activations)
                                 to its task loss adds task_scale x
                                 loss_scale x dA to the gradients in
                                 backward: A is then weighted, accumulated
                                 and all-reduced as the task loss is. Set in
                                 forward and backward alike. Exists when size
                                 > offsetof(regopt_pass, task_scale). Since
                                 1.0. */
    const float *const *weights; /* forward: NULL, or -- REGOPT_PASS_TEACHER
                                 passes of a host that declared
                                 REGOPT_CAP_PASS_WEIGHTS -- the weights to
                                 compute with instead of the registered
                                 buffers: weights[i] for tensor i in
                                 registration order (the registered buffer
                                 itself for frozen tensors), as many floats
                                 as the tensor. The host's buffers then
                                 keep the student's weights throughout.
                                 Exists when size > offsetof(regopt_pass,
                                 weights). Since 1.0. */
} regopt_pass;

/* Forward and backward callbacks: return 0 on success, anything else aborts
 * the step (see the overview).
 *
 * Rules for every callback the library calls (forward, backward, loss,
 * all-reduce, a user term's, checkpoint read/write, free hooks):
 *  - Report failure by returning nonzero; do not throw a C++ exception
 *    through the library, longjmp out of it, or call exit-like functions
 *    that unwind. If one does anyway, the trainer notices: every later call
 *    that would change or run it (and its regularizers' and optimizer's
 *    setters) returns REGOPT_ERR_STATE until regopt_trainer_recover, which
 *    puts back what the abandoned call had in flight.
 *  - Do not call back into the trainer that called you, nor change its
 *    regularizers or optimizer: such calls return REGOPT_ERR_STATE and
 *    change nothing. Reading options and statistics
 *    (regopt_*_get_double/_get_int, regopt_trainer_regularizer_count/_at,
 *    the *_message functions) is allowed: the statistics are those of the
 *    last finished step. Other trainers may be used freely. */
typedef int (*regopt_pass_fn)(const regopt_pass *pass, void *user);

/* Called once with the callbacks' user pointer when it is no longer needed
 * (model freed, callbacks replaced); lets bindings release their objects. */
typedef void (*regopt_free_fn)(void *user);

/* ------------------------------------------------------------------------ */
/* Batches                                                                  */
/* ------------------------------------------------------------------------ */

/* One (micro-)batch handed to a step. Initialise with regopt_batch_init (or
 * zero it and set size = sizeof(regopt_batch)), then fill what applies.
 * The library reads the arrays during the call only. */
typedef struct regopt_batch {
    size_t size;              /* sizeof(regopt_batch) */
    const void *data;         /* host's own batch pointer, passed to callbacks */
    size_t rows;              /* rows (examples, or tokens), > 0;
                                 rows x output_width <= 2^40 floats */
    const int32_t *labels;    /* SOFTMAX_CE: rows class indices in
                                 [0, output_width); ignored on masked rows */
    const float *targets;     /* MSE: rows * output_width targets */
    const uint8_t *mask;      /* optional: 1 = KEEP the row, 0 = PADDING.
                                 Any non-zero value keeps. NULL: keep all */
    const float *weights;     /* optional: per-row weights >= 0, finite */
    size_t input_rows;        /* embedding rows of this batch when the model
                                 has an input width (0: same as rows);
                                 input_rows x input_width <= 2^36 floats
                                 (256 GiB; SMART keeps two buffers that
                                 size) */
    const uint8_t *task_mask; /* optional: per-row task mask, 1 = LABELLED
                                 (the row takes the task loss), 0 =
                                 UNLABELLED: no task loss and no label or
                                 target is read, but every consistency
                                 term (R-Drop's, SMART's, Bregman's, VAT's,
                                 user terms) still applies, so VAT and
                                 R-Drop train semi-supervised. Any non-zero
                                 value is labelled. NULL: every row is
                                 labelled. Unlike `mask` (padding), an
                                 unlabelled row keeps its weight in the
                                 normaliser: every term, the task loss
                                 included, is divided by sum_i m_i w_i over
                                 all kept rows, so the task loss of a batch
                                 with a fraction f of labelled rows weighs f
                                 times a labelled-only batch's (evaluation
                                 and flatness read it the same way). Hosts
                                 built against an older header pass a
                                 smaller `size` and never have it. Since
                                 1.0. */
} regopt_batch;

/* A batch that breaks a bound above fails the step (or evaluation) with
 * REGOPT_ERR_INVALID_ARGUMENT and a message, before any allocation or
 * callback. */

/* Zero *batch and set batch->size. NULL is ignored. */
REGOPT_API void regopt_batch_init(regopt_batch *batch);

/* Struct sizes for bindings that must not hard-code the layout. */
REGOPT_API size_t regopt_sizeof_batch(void);
REGOPT_API size_t regopt_sizeof_pass(void);
REGOPT_API size_t regopt_sizeof_allocator(void);

/* ------------------------------------------------------------------------ */
/* Model                                                                    */
/* ------------------------------------------------------------------------ */

typedef struct regopt_model regopt_model;

/* Element types of parameter tensors: FLOAT32, and since 1.0 FLOAT16 (IEEE
 * 754 binary16) and BFLOAT16 (the upper half of a binary32), as uint16_t
 * bit patterns in host byte order. FLOAT64 is reserved and rejected with
 * REGOPT_ERR_UNSUPPORTED.
 *
 * Mixed precision (Micikevicius et al., ICLR 2018). A FLOAT16 or BFLOAT16
 * tensor's data and grad buffers both hold that dtype. The library keeps
 * an fp32 master copy of its values (made at registration from the host's
 * values, exactly) and does everything on it: updates, SAM's perturb and
 * restore (the master is the restore point), the Bregman teacher, SMART
 * (its noise and perturbations stay fp32), checkpoints. Before every
 * forward it writes round(master) into the host's buffer, rounding to
 * nearest, ties to even (regopt_convert's bits): a perturbed forward sees
 * round(w + eps); after every regopt_trainer_step -- committed, skipped or
 * failed -- the host's buffer holds round(w). Writing into the host's data
 * buffer outside the library has no effect on training (the master wins).
 *
 * Gradients are half precision, in the host's grad buffer, because that is
 * what a half-precision network's backward produces (torch's .half()
 * modules have half .grad): no extra host buffer. Precision is not lost to
 * accumulation: after EVERY backward call the library adds the host's
 * buffer, unscaled (x 1/S, the product rounded once from double), into an
 * fp32 accumulator of its own and zeroes the host's buffer, so the sum
 * over passes and micro-batches is an fp32 sum. Within one backward the
 * host accumulates in its own precision. After a step the host's grad
 * buffers hold zeros; the step's gradient is internal.
 *
 * Loss scaling (REGOPT_TRAINER_LOSS_SCALING, torch.amp.GradScaler's rules
 * and defaults): every backward receives d_outputs x S (pass->loss_scale
 * says S); a non-finite gradient after unscaling -- on any replica, in any
 * pass (both of SAM's) -- skips the step: nothing is committed (weights,
 * moments, regularizer state, step count, RNG position and the other
 * statistics are as before; the learning-rate schedule, a function of the
 * step count, does not advance either, unlike a torch script that calls
 * scheduler.step() after a skipped optimizer.step()), S is multiplied by
 * trainer.scale_backoff, and the call returns REGOPT_OK with stat.skipped
 * = 1. After trainer.scale_interval committed steps in a row, S is
 * multiplied by trainer.scale_growth. A non-finite LOSS is not an overflow
 * of the scale (the outputs are the host's): it fails the step as before.
 * FLOAT32 tensors may use loss scaling too (hosts that compute in half
 * precision internally): set trainer.loss_scaling to DYNAMIC or FIXED; the
 * library then accumulates their gradients in fp32 buffers of its own the
 * same way. Defaults: FLOAT16 in the model -> DYNAMIC at S = 2^16;
 * BFLOAT16 only -> OFF (S = 1; bf16 has float32's range). Checkpoints save
 * the masters, S, the counter and the skipped count (feature
 * "mixed_precision"). Results are the same bits for every trainer.threads.
 * Since 1.0. */
typedef enum regopt_dtype {
    REGOPT_DTYPE_FLOAT32 = 1,
    REGOPT_DTYPE_FLOAT16 = 2,
    REGOPT_DTYPE_BFLOAT16 = 3,
    REGOPT_DTYPE_FLOAT64 = 4
} regopt_dtype;

/* Convert n elements between FLOAT32 and FLOAT16 or BFLOAT16 (either way;
 * the same dtype on both sides copies), rounding to nearest, ties to even,
 * overflow to infinity, NaN to a quiet NaN of the same sign: the bits the
 * library writes into half-precision parameter buffers. src and dst may
 * not overlap unless equal dtypes. NULL with n > 0:
 * REGOPT_ERR_NULL_POINTER; FLOAT64: REGOPT_ERR_UNSUPPORTED; another value:
 * REGOPT_ERR_INVALID_ARGUMENT (message in regopt_last_error_message).
 * Since 1.0. */
REGOPT_API regopt_status regopt_convert(const void *src, regopt_dtype src_dtype, void *dst,
                                        regopt_dtype dst_dtype, size_t n);

/* Parameter groups are numbered 0 .. REGOPT_MAX_GROUPS-1. */
#define REGOPT_MAX_GROUPS 64
/* Longest parameter name, in bytes, without the terminating NUL. */
#define REGOPT_MAX_NAME 255

/* A new, empty model: output width 0 (must be set), input width 0, one slot,
 * no callbacks. allocator may be NULL. NULL on failure, with *status set
 * (status may be NULL) and regopt_last_error_message() explaining. */
REGOPT_API regopt_model *regopt_model_create(const regopt_allocator *allocator,
                                             regopt_status *status);

/* Release the model and call the free hook of its callbacks. NULL is a
 * no-op (REGOPT_OK). While a trainer is bound to it nothing is freed: the
 * call returns REGOPT_ERR_STATE (the reason also in
 * regopt_last_error_message); free the trainer first. A handle that is not
 * a live model: REGOPT_ERR_INVALID_ARGUMENT. (Every *_free returns a status
 * since 1.0, so a refused free cannot go unnoticed; 0.x returned void.) */
REGOPT_API regopt_status regopt_model_free(regopt_model *model);

/* Register one host tensor of `count` elements: 1 .. SIZE_MAX/16, and the
 * model's tensors together hold at most SIZE_MAX/16 elements (the trainer
 * keeps up to four floats per element); a larger count or total fails with
 * REGOPT_ERR_INVALID_ARGUMENT. name: non-empty, unique in
 * the model, at most REGOPT_MAX_NAME bytes (copied). data: the values,
 * updated in place by the optimizer. grad: where backward accumulates the
 * gradient; NULL registers a frozen tensor that is never updated. dtype:
 * REGOPT_DTYPE_FLOAT32, _FLOAT16 or _BFLOAT16 (data and grad are `count`
 * elements of it; half precision: see "Mixed precision" above; the fp32
 * master and accumulator are allocated here). group: 0 .. REGOPT_MAX_GROUPS-1. Fails with
 * REGOPT_ERR_STATE once the model is bound to a trainer.
 *
 * Buffers may not overlap (the library saves, restores, zeroes and updates
 * them per tensor, on several threads):
 *   - a gradient shares no byte with any registered buffer: not with its
 *     own or another tensor's data (frozen ones included), not with another
 *     tensor's gradient (each trainable tensor has a gradient of its own);
 *   - the data of a trainable tensor shares no byte with another trainable
 *     tensor's data.
 * A frozen tensor's data may share bytes with other tensors' data (a frozen
 * view of a weight): the library never writes it during a step, and a
 * checkpoint restores every tensor's data in registration order.
 * Tied weights (one buffer used in several places of the network) are ONE
 * tensor: register the buffer once, with one gradient buffer into which
 * backward accumulates the contributions of every use.
 * A violation fails with REGOPT_ERR_INVALID_ARGUMENT and a message naming
 * both tensors and the buffers that overlap; so does a buffer that runs
 * past the end of the address space. Registration costs O(log n) in the
 * number of tensors already registered. Nothing is registered on failure. */
REGOPT_API regopt_status regopt_model_add_param(regopt_model *model,
                                                const char *name, void *data,
                                                void *grad, size_t count,
                                                regopt_dtype dtype,
                                                int32_t group);

/* Floats per output row: the number of classes, or the regression width. */
REGOPT_API regopt_status regopt_model_set_output_width(regopt_model *model,
                                                       size_t width);

/* Floats per input-embedding row (needed by input-perturbing regularizers
 * such as SMART); 0 = the host exposes no embeddings (default). */
REGOPT_API regopt_status regopt_model_set_input_width(regopt_model *model,
                                                      size_t width);

/* How many activation slots the host can keep at once (1 .. 16, default 1).
 * Attaching a regularizer that needs more slots than this is refused with
 * REGOPT_ERR_STATE, and so is a step whose regularizers came to need more
 * through an option set after attach (rdrop.doubled = 0). */
REGOPT_API regopt_status regopt_model_set_slots(regopt_model *model,
                                                int32_t slots);

/* Host capabilities (bits of regopt_model_set_capabilities). */
#define REGOPT_CAP_DOUBLED_BATCH 0x1u /* the forward accepts REGOPT_PASS_DOUBLED */
/* The forward computes with pass->weights when that is not NULL (it keeps
 * pointers to its weights rather than the weights in fixed places, as a
 * torch.func.functional_call does). The teacher's passes (Bregman, MESA)
 * then hand the host the teacher's own buffers and never swap them into
 * the host's: 32 bytes per parameter and two passes over the weights less
 * per step. Used when every tensor is float32 (a half tensor's teacher is
 * float32: those models are swapped as before). Since 1.0. */
#define REGOPT_CAP_PASS_WEIGHTS 0x2u

/* Declare what the host's callbacks can do beyond the basic contract
 * (REGOPT_CAP_* bits; default 0). Unknown bits: REGOPT_ERR_INVALID_ARGUMENT. */
REGOPT_API regopt_status regopt_model_set_capabilities(regopt_model *model,
                                                       uint32_t caps);

/* Install the forward and backward callbacks (both required) and their user
 * pointer. free_user (may be NULL) is called with user when the model is
 * freed or the callbacks are replaced. If this call fails, free_user is not
 * called and nothing changes. */
REGOPT_API regopt_status regopt_model_set_callbacks(regopt_model *model,
                                                    regopt_pass_fn forward,
                                                    regopt_pass_fn backward,
                                                    void *user,
                                                    regopt_free_fn free_user);

/* Number of registered tensors / of their elements (0 for NULL). */
REGOPT_API size_t regopt_model_param_count(const regopt_model *model);
REGOPT_API size_t regopt_model_element_count(const regopt_model *model);

/* One-line detail of the model's last failure ("" if none). */
REGOPT_API const char *regopt_model_message(const regopt_model *model);

/* ------------------------------------------------------------------------ */
/* Backends: parameter memory the library never touches (since 1.0)         */
/* ------------------------------------------------------------------------ */
/*
 * By default the library reads and writes the registered buffers itself
 * (the update, zeroing the gradients, norms, SAM's move and restore). A
 * host whose tensors live where the CPU cannot read them (a GPU) sets a
 * backend on the model before registering any tensor: then `data` and `grad`
 * of regopt_model_add_param are opaque handles the library hands back to the
 * backend and never dereferences, the library's own parameter-sized state
 * (optimizer moments, SAM's saved weights) is allocated by the backend, and
 * every operation on parameter-sized memory is one call of backend->run
 * with a regopt_vop naming it. Batch-sized memory (outputs, d_outputs, input
 * embeddings and their perturbations, labels) stays in host memory as
 * always: the host's forward copies its outputs into pass->outputs.
 *
 * A vector is one float32 array per trainable tensor, in registration
 * order, shaped as the tensors: REGOPT_VEC_WEIGHTS (the registered data),
 * REGOPT_VEC_GRADS (the registered gradients) or a buffer the library asked
 * the backend to allocate (ids from REGOPT_VEC_BUFFER0 up, unique in the
 * model). Frozen tensors (grad NULL) are never part of a vector.
 *
 * What runs with a backend: every optimizer kind (SGD with momentum and
 * Nesterov, Adam, AdamW, AMSGrad, RAdam; schedules; clipping; the
 * finiteness guard; REGOPT_HOST, whose callback updates the tensors where
 * the host keeps them), and the regularizers REGOPT_REG_SAM (SAM, ASAM,
 * SAM-ON groups and the stateful variants: m-sharpness, Momentum-SAM,
 * LookSAM, FriendlySAM, VaSSO, GSAM, WSAM), REGOPT_REG_RDROP,
 * REGOPT_REG_SMART, REGOPT_REG_BREGMAN (SMART's proximal term and MESA;
 * its teacher is swapped in, never handed by pointer),
 * REGOPT_REG_ADVERSARIAL (FGM, PGD, FreeLB, VAT), REGOPT_REG_TERM and
 * REGOPT_REG_AVERAGE (EMA and SWA, swapped in for evaluation and
 * recalibration; never sharing the teacher's buffer) in any combination;
 * and checkpoints (every save, load and size call): the bytes
 * are those the same trainer writes without a backend, so either loads the
 * other's. A save reads the backend's buffers with REGOPT_VOP_READ, twice
 * (once for the CRCs, which precede the bytes, once to write them; a size
 * query calls nothing); a load validates the whole checkpoint in host
 * memory first, then writes through REGOPT_VOP_WRITE (the regularizers'
 * state, then the moments, then the tensors). If a WRITE fails
 * (REGOPT_ERR_BACKEND naming it), what was written holds the checkpoint's
 * values and the rest what it held; the step count, seed and statistics
 * are the old ones, the options the old or the checkpoint's: load a
 * checkpoint again (it then restores everything) before training on.
 * The rest is refused with REGOPT_ERR_UNSUPPORTED naming it (at attach, at
 * the setter, at the step or at the call): float16/bfloat16 tensors and
 * loss scaling, an all-reduce, trainer.check_host and
 * regopt_trainer_flatness.
 *
 * Guarantees. The step stays a transaction up to the update: every
 * operation before it writes only the gradient vector and the library's
 * buffers, or moves the weights and puts them back (SAM's ascent, the
 * teacher's swap) before any failure returns, and the update runs only
 * after REGOPT_VOP_UPDATE_CHECK (or the
 * library's proof from REGOPT_VOP_ABS_MAX bounds) showed it writes nothing
 * non-finite. A backend call that fails (run returns non-zero) fails the
 * call with REGOPT_ERR_BACKEND naming the operation, and what the library
 * moved is put back (SAM's w + eps, the teacher swapped in; if putting it
 * back fails too, the next step tries again first). If the update or the
 * work after it (the teacher's EMA, an average's, decoupled WSAM's step)
 * fails, the step is not
 * counted and the parameters, moments, teacher and average are what the
 * backend left. Bit-identical
 * trajectories need the backend to compute every operation with the
 * float32 operations described below in the same order, and the sums in the
 * order below; regopt_backend_cpu_create's backend does, so the same step
 * through it gives the same bits as the library without a backend.
 */

/* Vector ids of regopt_vop.x .. v (-1: none). */
#define REGOPT_VEC_NONE (-1)
#define REGOPT_VEC_WEIGHTS 0
#define REGOPT_VEC_GRADS 1
#define REGOPT_VEC_BUFFER0 2
/* REGOPT_VOP_READ and REGOPT_VOP_WRITE only: regopt_vop.tensor counts the
 * frozen tensors (grad NULL, in registration order; their handles came
 * with REGOPT_VOP_BIND's frozen_data), which no vector holds, so that a
 * checkpoint can save and restore every tensor's data. */
#define REGOPT_VEC_FROZEN (-2)

/* The operations (values fixed forever; new ones are appended, and a
 * backend returns non-zero for a code it does not know). Element i of
 * tensor k of vector x is written x[i]; every elementwise operation is in
 * float32 unless it says otherwise. Sums are in double: each tensor in
 * registration order, cut into chunks of 4096 elements from its start,
 * each chunk summed and the chunk sums added in order. */
typedef enum regopt_vop_code {
    /* Once per trainer, before any other: tensors trainable tensors with
       the handles data[k], grad[k] and counts[k] elements; and `frozen`
       frozen tensors with the handles frozen_data[k] and frozen_counts[k]
       elements (touched only by REGOPT_VOP_READ and REGOPT_VOP_WRITE). */
    REGOPT_VOP_BIND = 1,
    /* Create buffer x: shaped as the vectors, every element 0. */
    REGOPT_VOP_ALLOC = 2,
    /* Release buffer x (its result is ignored). */
    REGOPT_VOP_FREE = 3,
    /* x[i] = 0. */
    REGOPT_VOP_ZERO = 4,
    /* x[i] = y[i]. */
    REGOPT_VOP_COPY = 5,
    /* out[0] = sum of x[i]^2 (double; each chunk in any order of its
       elements), over every tensor, or tensor `tensor` alone when it is
       below `tensors`. */
    REGOPT_VOP_SUM_SQUARES = 6,
    /* out[0] >= max |x[i]| (an upper bound; the exact maximum will do), a
       value >= 2^128 (infinity) when some x[i] is infinite or NaN; over
       tensor `tensor` alone when it is below `tensors`. */
    REGOPT_VOP_ABS_MAX = 7,
    /* The base optimizer's update of x (weights) with gradient y and
       moments z, u, v (variant: regopt_optimizer_kind; per_tensor[3k ..
       3k+2]: lr, weight decay, Adam's step size of tensor k; s[]: see
       REGOPT_VOP_S_*). The formulas are docs/methods.md §2 (torch.optim's,
       in float32): the CPU backend's kernels are the reference. */
    REGOPT_VOP_UPDATE = 8,
    /* The same update computed and written nowhere: out[0] = the first
       tensor with a non-finite result (-1: none), out[1] its element,
       out[2] what (1 a weight already non-finite, 2 the new weight, 3 the
       first moment or momentum buffer, 4 the second moment, 5 AMSGrad's
       maximum), out[3] = max |first moment| after it (0 without one). */
    REGOPT_VOP_UPDATE_CHECK = 9,
    /* SAM's ascent: z[i] = x[i]; on tensors with flags[k] & 1,
       x[i] = x[i] + c * (t * t * a) with a = y[i] + wd * x[i] and
       t = |x[i]| + eta where flags[k] & 2 (ASAM), t = 1 elsewhere
       (c = s[0], wd = s[1], eta = s[2]; with t = 1 and wd = 0 this is
       x[i] + c * y[i]); then with variant 1, y[i] = 0 on every tensor. */
    REGOPT_VOP_SAM_PERTURB = 10,
    /* out[0] = the sum of q[i]^2 over tensors with flags[k] & 1, q = t * a
       in float32 with a and t as in REGOPT_VOP_SAM_PERTURB (wd = s[1],
       eta = s[2]; q = a where t = 1), each square in double: ||T a||^2 of
       SAM's and ASAM's ascent (the sum as REGOPT_VOP_SUM_SQUARES's). */
    REGOPT_VOP_SAM_SQUARES = 11,
    /* Exchange x[i] and y[i]; out[0] = 1 when every value that left x was
       finite, 0 otherwise (the exchange is made all the same). The
       Bregman/MESA teacher's swap into the weights. */
    REGOPT_VOP_SWAP = 12,
    /* The moving average x[i] = (float)(s[0] * (double)x[i] + s[1] *
       (double)y[i]), computed in double and rounded once (s[0] the decay,
       s[1] = 1 - decay as a double): the Bregman/MESA teacher's and the EMA
       average's recurrence. */
    REGOPT_VOP_EMA = 13,
    /* SWA's running mean x[i] = (float)((double)x[i] + ((double)y[i] -
       (double)x[i]) / s[0]) in double, rounded once (s[0] = n + 1). */
    REGOPT_VOP_SWA = 14,
    /* x[i] = x[i] * s[0] in float32 (s[0] a float32 value): the clipping
       factor applied to the gradient before a REGOPT_HOST update. */
    REGOPT_VOP_SCALE = 15,
    /* x[i] = a * y[i] + b * z[i]: the two products rounded to float32,
       then their sum (z = REGOPT_VEC_NONE: x[i] = a * y[i]). a = s[0],
       b = s[1], or per tensor a = per_tensor[2k], b = per_tensor[2k + 1]
       when per_tensor is not NULL (each a float32 value held exactly);
       when flags is not NULL, tensors with flags[k] & 1 == 0 are left as
       they are. x may be y or z (elementwise, in place). With a = 1 this
       is exactly y[i] + b * z[i], with b = -c exactly y[i] - c * z[i]: the
       SAM family's stateful variants (m-sharpness's sums, GSAM's and
       WSAM's combinations, WSAM's step after the update, LookSAM,
       FriendlySAM, VaSSO, Momentum-SAM's move) are made of these. */
    REGOPT_VOP_AXPBY = 16,
    /* out[0] = the sum of x[i] * y[i], each product in double (y may be
       x), over every tensor or tensor `tensor` alone when it is below
       `tensors`; the tensor sums added in order to 0.0. variant 0: each
       tensor summed whole in sixteen double lanes, lane l adding the
       products of elements i = l (mod 16) in order over the tensor's
       complete groups of 16, the last n % 16 products then added into
       lanes 0, 1, ... in order, the lanes folded as l + 8 into l (l < 8),
       l + 4 into l (l < 4), 2 into 0, 3 into 1, and the result lane 0 +
       lane 1 (LookSAM's per-tensor norms and projections). variant 1:
       one running double sum in element order, tensor after tensor
       (GSAM's). */
    REGOPT_VOP_DOT = 17,
    /* host[j] = x[first + j] of tensor `tensor` for j < count (x may be
       REGOPT_VEC_FROZEN: frozen tensor `tensor`): the exact float32 bits,
       nothing else read or written. A checkpoint's save reads every vector
       it stores this way, in pieces of at most a few thousand elements
       */
    REGOPT_VOP_READ = 18,
    /* The reverse: x[first + j] of tensor `tensor` = host[j] for j < count,
       the exact bits (x may be REGOPT_VEC_FROZEN). A checkpoint's load,
       after it has validated every byte of the checkpoint */
    REGOPT_VOP_WRITE = 19
} regopt_vop_code;

/* REGOPT_VOP_UPDATE's shared scalars, indices into regopt_vop.s (each a
 * float32 value held exactly, or a 0/1 flag). */
enum {
    REGOPT_VOP_S_GRAD_SCALE = 0, /* the clipping factor applied to y */
    REGOPT_VOP_S_MOMENTUM = 1,   /* SGD */
    REGOPT_VOP_S_ONE_MINUS_DAMPENING = 2,
    REGOPT_VOP_S_NESTEROV = 3,
    REGOPT_VOP_S_FIRST = 4,      /* SGD: the momentum buffer takes the gradient as it is */
    REGOPT_VOP_S_BETA1 = 5,      /* Adam family */
    REGOPT_VOP_S_BETA2 = 6,
    REGOPT_VOP_S_EPS = 7,
    REGOPT_VOP_S_ONE_MINUS_BETA1 = 8,
    REGOPT_VOP_S_ONE_MINUS_BETA2 = 9,
    REGOPT_VOP_S_BC2_SQRT = 10,  /* sqrt(1 - beta2^t) */
    REGOPT_VOP_S_AMSGRAD = 11,
    REGOPT_VOP_S_RECTIFIED = 12, /* RAdam: rho_t > 5 */
    REGOPT_VOP_S_COUNT = 16
};

/* One operation: filled by the library, read by the backend, which writes
 * out[] only. size: sizeof(regopt_vop) as the library knows it (later
 * versions append fields). */
typedef struct regopt_vop {
    size_t size;
    int32_t code;              /* REGOPT_VOP_* */
    int32_t variant;           /* see the code */
    int32_t x, y, z, u, v;     /* vector ids, REGOPT_VEC_NONE where unused */
    size_t tensors;            /* trainable tensors (every vector's parts) */
    size_t tensor;             /* SUM_SQUARES, DOT: one tensor (>= tensors: all) */
    void *const *data;         /* BIND: the handles registered, per tensor */
    void *const *grad;
    const size_t *counts;      /* BIND: elements per tensor */
    const int32_t *flags;      /* per tensor (SAM_*, AXPBY) */
    const double *per_tensor;  /* per tensor, 3 each (UPDATE*) or 2 each (AXPBY) */
    double s[REGOPT_VOP_S_COUNT];
    double out[4];             /* results */
    /* Checkpoints (REGOPT_VOP_READ, REGOPT_VOP_WRITE) and the frozen tensors: */
    float *host;               /* READ: count floats written; WRITE: read */
    size_t first, count;       /* READ, WRITE: elements [first, first + count)
                                  of part `tensor` (within its count) */
    size_t frozen;             /* BIND: the frozen tensors (grad NULL) */
    void *const *frozen_data;  /* BIND: their data handles, in registration order */
    const size_t *frozen_counts; /* BIND: their elements */
} regopt_vop;

/* Returns 0 on success. Called on the thread of the library call that
 * needs it, one call at a time per trainer. */
typedef int (*regopt_backend_fn)(void *user, regopt_vop *op);

/* The backend table. size: sizeof(regopt_backend) as the host knows it. */
typedef struct regopt_backend {
    size_t size;
    regopt_backend_fn run;
    void *user;
} regopt_backend;

/* Make the model's parameter memory the backend's (copied; the host keeps
 * user alive until the model is freed). Before the first
 * regopt_model_add_param, and while no trainer is bound: else
 * REGOPT_ERR_STATE. NULL backend or run: REGOPT_ERR_NULL_POINTER; a size
 * smaller than the first version's: REGOPT_ERR_INVALID_ARGUMENT. With a
 * backend, regopt_model_add_param takes opaque handles (checked for
 * nothing but grad == NULL meaning frozen; they may even overlap) and
 * refuses dtypes other than float32. */
REGOPT_API regopt_status regopt_model_set_backend(regopt_model *model,
                                                  const regopt_backend *backend);

/* The CPU backend: handles are float32 host pointers, used exactly as the
 * library uses registered buffers without a backend (same kernels, same
 * order, one thread): a reference for hosts writing their own, and the
 * backend a host wraps to work on copies (the PROT_NONE test). Fills
 * *backend; free its state with regopt_backend_cpu_free after the models
 * using it. NULL: REGOPT_ERR_NULL_POINTER; REGOPT_ERR_NO_MEMORY. */
REGOPT_API regopt_status regopt_backend_cpu_create(regopt_backend *backend);
REGOPT_API regopt_status regopt_backend_cpu_free(regopt_backend *backend);

/* ------------------------------------------------------------------------ */
/* Optimizer                                                                */
/* ------------------------------------------------------------------------ */

typedef struct regopt_optimizer regopt_optimizer;

/* Base update rules; each matches torch.optim's update and defaults:
 *   SGD    g += wd*w; b = momentum*b + (1-dampening)*g (b = g on the first
 *          step); g = nesterov ? g + momentum*b : b; w -= lr*g
 *   ADAM   g += wd*w; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
 *          w -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
 *          (AMSGrad: v replaced by its running maximum in the denominator)
 *   ADAMW  w *= 1 - lr*wd, then ADAM without the coupled term
 *   RADAM  Liu et al. 2020: g += wd*w; moments as ADAM;
 *          rho_inf = 2/(1-b2) - 1, rho_t = rho_inf - 2t b2^t/(1-b2^t);
 *          rho_t > 5: w -= lr * m/(1-b1^t) * r_t * sqrt(1-b2^t)/(sqrt(v)+eps)
 *          with r_t = sqrt((rho_t-4)(rho_t-2)rho_inf /
 *                          ((rho_inf-4)(rho_inf-2)rho_t));
 *          otherwise w -= lr * m/(1-b1^t).
 *   HOST   the host's own update (torch.optim, LibTorch's torch::optim, its
 *          own code): see regopt_optimizer_set_host_update below. */
typedef enum regopt_optimizer_kind {
    REGOPT_SGD = 1,
    REGOPT_ADAM = 2,
    REGOPT_ADAMW = 3,
    REGOPT_RADAM = 4,
    REGOPT_HOST = 5 /* since 1.0 */
} regopt_optimizer_kind;

/* Learning-rate schedules (REGOPT_OPT_SCHEDULE). With t = completed steps,
 * W = warmup steps, T = total steps, r = min_lr_ratio, the lr of the next
 * update is lr * f(t) where (the Hugging Face transformers conventions):
 *   CONSTANT  f = t < W ? t/W : 1
 *   LINEAR    f = t < W ? t/W : r + (1-r) * max(0, (T-t)/(T-W))
 *   COSINE    f = t < W ? t/W : r + (1-r) * 0.5*(1 + cos(pi * min(1, (t-W)/(T-W))))
 * With W > 0 the first update therefore uses lr 0, exactly like
 * get_linear_schedule_with_warmup + torch.optim.lr_scheduler.LambdaLR.
 * One deliberate difference: after T steps COSINE holds its floor, where
 * Hugging Face's formula would rise again. */
typedef enum regopt_schedule {
    REGOPT_SCHEDULE_CONSTANT = 0,
    REGOPT_SCHEDULE_LINEAR = 1,
    REGOPT_SCHEDULE_COSINE = 2
} regopt_schedule;

/* A new optimizer of the given kind with torch.optim's defaults. NULL on
 * failure, with *status set (status may be NULL). */
REGOPT_API regopt_optimizer *regopt_optimizer_create(
    regopt_optimizer_kind kind, const regopt_allocator *allocator,
    regopt_status *status);

/* NULL is a no-op (REGOPT_OK). While a trainer is bound to it nothing is
 * freed: REGOPT_ERR_STATE (the reason also in regopt_last_error_message);
 * free the trainer first. */
REGOPT_API regopt_status regopt_optimizer_free(regopt_optimizer *opt);

/* The kind given at creation; 0 for NULL or a handle of another type. */
REGOPT_API regopt_optimizer_kind
regopt_optimizer_get_kind(const regopt_optimizer *opt);

/* Set or read an optimizer key. Integer keys accept a double only when it is
 * integral; double keys accept integers. Changes take effect at the next
 * step (a learning rate may be changed between steps). */
REGOPT_API regopt_status regopt_optimizer_set_double(regopt_optimizer *opt,
                                                     regopt_key key,
                                                     double value);
REGOPT_API regopt_status regopt_optimizer_set_int(regopt_optimizer *opt,
                                                  regopt_key key,
                                                  int64_t value);
REGOPT_API regopt_status regopt_optimizer_get_double(
    const regopt_optimizer *opt, regopt_key key, double *value);
REGOPT_API regopt_status regopt_optimizer_get_int(const regopt_optimizer *opt,
                                                  regopt_key key,
                                                  int64_t *value);

/* Per-group keys (REGOPT_GROUP_*) for group 0 .. REGOPT_MAX_GROUPS-1. */
REGOPT_API regopt_status regopt_optimizer_set_group(regopt_optimizer *opt,
                                                    int32_t group,
                                                    regopt_key key,
                                                    double value);
REGOPT_API regopt_status regopt_optimizer_get_group(
    const regopt_optimizer *opt, int32_t group, regopt_key key,
    double *value);

/* One-line detail of the optimizer's last failure ("" if none); never NULL. */
REGOPT_API const char *regopt_optimizer_message(const regopt_optimizer *opt);

/* ---- A host-owned update (REGOPT_HOST) ----------------------------------
 *
 * The library runs every pass of a step as with a built-in optimizer; only
 * the last line of the update is the host's. When a step's update is due,
 * each trainable tensor's gradient buffer (the `grad` given to
 * regopt_model_add_param) holds, and the callback receives there:
 *   - the gradient of the step's objective (task loss and every attached
 *     loss-side term) at the weights the weight-side regularizer chose
 *     (SAM and its variants: at the perturbed point, GSAM's / WSAM's
 *     combined direction), averaged over the micro-batches by the row
 *     weights,
 *   - after the all-reduce (identical on every replica),
 *   - multiplied by the clipping factor when optimizer.clip_norm is set
 *     (torch.nn.utils.clip_grad_norm_'s factor, written into the buffers),
 *   - with no weight decay added: decay is the host optimizer's business
 *     (optimizer.weight_decay and the group keys do not apply to HOST).
 * The parameters hold w, the point of the step: SAM's perturbation has been
 * undone bit-exactly before the call. The host updates them in place, in
 * the registered buffers (it may read and overwrite the gradient buffers
 * too: the library rewrites them every step).
 *
 * step is the number of the update being made, counting from 1 (it becomes
 * stat.step when the call succeeds); lr is the learning rate a built-in
 * optimizer would have used: optimizer.lr times the schedule
 * (REGOPT_OPT_SCHEDULE, _WARMUP_STEPS, _TOTAL_STEPS, _MIN_LR_RATIO), also
 * reported as stat.lr. A host with its own scheduler may ignore it. The
 * keys of a HOST optimizer are optimizer.lr, the schedule keys and
 * optimizer.clip_norm; the others return REGOPT_ERR_UNKNOWN_KEY.
 *
 * After the callback returns 0 the step is made: the step count advances
 * and what follows an update runs (the Bregman teacher's EMA, SAM's
 * after-update state, statistics, trainer.check_host's record), reading the
 * weights as the host left them. The callback runs on the thread that
 * called regopt_trainer_step, once per step and replica, under the
 * callback contract above (no calls back into the trainer; the optimizer's
 * setters are refused while it runs). Replicas stay identical only if the
 * host's update is deterministic.
 *
 * Failure: a non-zero return fails the step with REGOPT_ERR_HOST_UPDATE.
 * The library cannot undo what the host did: the parameters and the host
 * optimizer's state are what the callback left (a host that fails before
 * writing anything gets a step that changed nothing). The library's own
 * state is exactly as before the step: step count, regularizer state
 * (teacher, SAM's state), statistics, the RNG stream (the step is retried
 * with the same seeds). trainer.check_host records the parameters as the
 * callback left them, so a retry is not refused for them. A callback that
 * returns 0 but wrote a NaN or infinite weight while a moving average of the
 * weights is attached (the Bregman/MESA teacher, REGOPT_REG_AVERAGE) fails
 * the same way, REGOPT_ERR_HOST_UPDATE naming the tensor and element,
 * before the average takes it (it would keep it for good). Momentum-SAM
 * (sam.momentum) reads the library's momentum and is refused with a HOST
 * optimizer (REGOPT_ERR_STATE).
 *
 * Checkpoints save the library's part (step count, options, the schedule
 * keys, regularizer state, parameters) with no optimizer moments; the host
 * saves and restores its optimizer's own state (torch's
 * optimizer.state_dict()). A checkpoint of a HOST trainer loads only into a
 * HOST trainer (REGOPT_ERR_MISMATCH otherwise).
 *
 * A step of a HOST optimizer with no callback set fails with
 * REGOPT_ERR_STATE before any pass. A HOST optimizer cannot train float16
 * or bfloat16 tensors nor use loss scaling (the library keeps those fp32
 * weights and gradient sums itself): such a step fails with
 * REGOPT_ERR_UNSUPPORTED before any pass. */
typedef int (*regopt_host_update_fn)(uint64_t step, double lr, void *user);

/* Install the update of a REGOPT_HOST optimizer and its user pointer.
 * free_user (may be NULL) is called with user when the optimizer is freed
 * or the callback replaced. fn NULL: REGOPT_ERR_NULL_POINTER; an optimizer
 * of another kind: REGOPT_ERR_INVALID_ARGUMENT; while a trainer of it runs
 * host callbacks: REGOPT_ERR_STATE. If this call fails, free_user is not
 * called and nothing changes. */
REGOPT_API regopt_status regopt_optimizer_set_host_update(regopt_optimizer *opt,
                                                          regopt_host_update_fn fn,
                                                          void *user,
                                                          regopt_free_fn free_user);

/* ------------------------------------------------------------------------ */
/* Losses                                                                   */
/* ------------------------------------------------------------------------ */

/* Task losses (REGOPT_TRAINER_LOSS). Per row i, with z = output row:
 *   SOFTMAX_CE  l_i = -sum_k q_k log softmax(z)_k, q = (1-s) onehot(y_i) + s/K
 *               (s = label smoothing, K = output width); dl/dz = softmax(z) - q
 *   MSE         l_i = (1/K) sum_k (z_k - t_ik)^2 (torch's MSELoss mean)
 *   CALLBACK    l_i and dl_i/dz from regopt_trainer_set_loss_callback
 * The step's loss is sum_i m_i w_i l_i / sum_i m_i w_i over all rows of all
 * micro-batches (m = mask, w = weight, both 1 when absent). */
typedef enum regopt_loss_kind {
    REGOPT_LOSS_SOFTMAX_CE = 0,
    REGOPT_LOSS_MSE = 1,
    REGOPT_LOSS_CALLBACK = 2
} regopt_loss_kind;

/* A user loss: for the `rows` output rows of `width` floats in outputs (the
 * rows of `batch`), write the per-row loss to row_loss[i] and its gradient
 * d row_loss[i] / d outputs[i*width + k] to d_outputs[i*width + k]. The
 * library applies mask, weights, the task mask (an unlabelled row's loss
 * and gradient are ignored: write anything finite) and the mean. Return 0
 * on success; anything else aborts the step with REGOPT_ERR_LOSS_CALLBACK. */
typedef int (*regopt_loss_fn)(const regopt_batch *batch, const float *outputs,
                              size_t rows, size_t width, float *row_loss,
                              float *d_outputs, void *user);

/* ------------------------------------------------------------------------ */
/* Trainer                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct regopt_trainer regopt_trainer;

/* Bind a model (with callbacks and at least one parameter with a gradient,
 * and an output width) and an optimizer, and allocate all training state
 * from the model's allocator. Both are borrowed, see the overview. NULL on
 * failure, with *status set (status may be NULL). Regularizers are attached
 * afterwards (regopt_trainer_attach, "Regularizers: common rules"). */
REGOPT_API regopt_trainer *regopt_trainer_create(regopt_model *model,
                                                 regopt_optimizer *opt,
                                                 regopt_status *status);

/* Release the trainer: detach every regularizer (they stay alive, with their
 * options, and can be freed now), unbind its model and optimizer. NULL is a
 * no-op (REGOPT_OK). Refused with REGOPT_ERR_STATE (nothing freed; the
 * reason in regopt_last_error_message and the trainer's message) while a
 * callback of this trainer is running or was abandoned: call
 * regopt_trainer_recover first. In a child process after
 * fork(), the trainer's worker threads (REGOPT_TRAINER_THREADS) do not
 * exist: there it runs its loops on the calling thread, with the same
 * results, and frees without joining them. */
REGOPT_API regopt_status regopt_trainer_free(regopt_trainer *trainer);

/* After a callback threw a C++ exception or longjmp'd out of a call on this
 * trainer (see the callback rules): undo what that call had in flight --
 * the weights SAM had perturbed or the Bregman teacher had swapped in are
 * put back, options a checkpoint load had applied are restored -- and
 * accept calls again. Parameters, optimizer state, step count and
 * statistics are then as before the abandoned call, except when a user
 * term's committed hook was the one that never returned: its step had
 * been applied (the message says so). Memory a save had allocated for a
 * term's state is not recovered. Returns REGOPT_OK, also when nothing was
 * abandoned. Must not be called from inside a callback. Since 1.0. */
REGOPT_API regopt_status regopt_trainer_recover(regopt_trainer *trainer);

/* Trainer keys (REGOPT_TRAINER_*) and, for get, the trainer's statistics
 * (REGOPT_STAT_LOSS .. REGOPT_STAT_BACKWARD_CALLS; a regularizer's are read
 * from its handle). */
REGOPT_API regopt_status regopt_trainer_set_double(regopt_trainer *trainer,
                                                   regopt_key key,
                                                   double value);
REGOPT_API regopt_status regopt_trainer_set_int(regopt_trainer *trainer,
                                                regopt_key key,
                                                int64_t value);
REGOPT_API regopt_status regopt_trainer_get_double(
    const regopt_trainer *trainer, regopt_key key, double *value);
REGOPT_API regopt_status regopt_trainer_get_int(const regopt_trainer *trainer,
                                                regopt_key key,
                                                int64_t *value);

/* Install a user loss and switch REGOPT_TRAINER_LOSS to CALLBACK. fn NULL:
 * back to SOFTMAX_CE. free_user (may be NULL) is called with user when the
 * trainer is freed or the loss replaced. */
REGOPT_API regopt_status regopt_trainer_set_loss_callback(
    regopt_trainer *trainer, regopt_loss_fn fn, void *user,
    regopt_free_fn free_user);

/* Data-parallel training. The callback must sum `count` floats in place
 * over all replicas (MPI_Allreduce with MPI_SUM, NCCL, ...) and return 0;
 * anything else fails the step with REGOPT_ERR_ALLREDUCE. Each step calls it
 * once (twice with sam.sync_ascent: for the ascent gradient too), after the
 * gradient passes and before the norm, clipping and update, on one buffer:
 * the gradients scaled by this replica's weight, then the weight and the
 * weighted loss. The library divides by the summed weight, so
 * every replica applies the exact global weighted mean, whatever its shard
 * size or mask. A replica whose passes fail still joins the all-reduce (with
 * a failure mark) so that its peers never wait forever: they roll back too
 * and return REGOPT_ERR_ALLREDUCE. Every replica must call step with the
 * same number of micro-batches. A replica whose step fails validation also
 * joins (the first all-reduce of the step) with its failure mark. A non-zero
 * return from the callback itself means the communication broke: the
 * replicas may then disagree, and the job should stop. fn NULL: single
 * process (default).
 * free_user as for regopt_trainer_set_loss_callback. Allocates the buffer
 * now, never in the step: the trainable elements followed by a few floats
 * of step totals (loss, weights, statistics, failure mark). Their number may
 * grow in a later version: always reduce exactly `count` floats. */
typedef int (*regopt_allreduce_fn)(float *buffer, size_t count, void *user);

REGOPT_API regopt_status regopt_trainer_set_allreduce(regopt_trainer *trainer,
                                                      regopt_allreduce_fn fn,
                                                      void *user,
                                                      regopt_free_fn free_user);

/* Size every buffer now for steps of up to max_rows rows (all micro-batches
 * of a step together) and up to max_rows embedding rows per micro-batch, so
 * that not even the first step allocates; regularizers attached later get
 * room for the same size when attached. Optional. With SMART, max_rows x
 * the input width is bounded like a batch's embeddings (2^36 floats): a
 * larger size fails with REGOPT_ERR_INVALID_ARGUMENT before SMART
 * allocates. */
REGOPT_API regopt_status regopt_trainer_reserve(regopt_trainer *trainer,
                                                size_t max_rows);

/* One training step over `count` micro-batches (see the overview).
 * batches is an array of `count` descriptors whose stride is batches[0].size,
 * so hosts built against an older, smaller regopt_batch index correctly. On any
 * failure nothing has changed: parameters, optimizer and regularizer state,
 * statistics, step count and RNG position are as before the call (the
 * gradient buffers hold whatever the failed pass left).
 *
 * Non-finite values. A step never leaves a NaN or an infinity in the
 * optimizer state or the regularizers' state, and never turns a finite
 * weight into a non-finite one. A gradient that is finite but huge can make
 * the update overflow (Adam's second moment (1 - beta2) g^2 beyond about
 * g = 6e20, SGD's momentum buffer, the weights w - lr d): such a step fails
 * with REGOPT_ERR_NONFINITE_GRADIENT, the message naming the tensor, the
 * element and what would have overflowed, and nothing is written -- the
 * update is checked before it writes (from bounds on |w|, |g| and the first
 * moment, measured in the gradient norm's pass; after huge values, by the
 * update's exact arithmetic), so there is nothing to undo. torch would
 * carry on with inf/NaN moments; here the step can be retried, e.g. with
 * a smaller learning rate or optimizer.clip_norm. A weight that is already
 * NaN or infinite when the step starts stays so under SGD without momentum
 * (no state takes it); where optimizer state or the Bregman teacher would
 * take it, the step fails the same way. Hence every checkpoint a save
 * writes passes the value checks of regopt_trainer_load.
 *
 * The host's side of a step, and what the library can see of it:
 *  - forward writes all rows x output_width outputs, no more: a host whose
 *    own width differs from regopt_model_set_output_width writes past the
 *    library's buffer;
 *  - backward ADDS into the registered gradient buffers (never overwrites,
 *    never replaces them: zero_grad(set_to_none) in LibTorch frees them);
 *  - the registered data and gradient buffers stay where they were
 *    registered for the trainer's life: a host that reallocates them (a
 *    module moved with .to(), torch::load into it) must build a new model
 *    and trainer; the host may read parameters between steps, and change
 *    them only through a checkpoint load;
 *  - callbacks return nonzero on failure and neither throw nor call back
 *    into the trainer (see regopt_pass_fn).
 * Checking the host: with REGOPT_TRAINER_CHECK_HOST = 1 the library checks
 * what it cheaply can, and fails the step when the host broke a rule:
 * REGOPT_ERR_FORWARD if a forward left an output unwritten (outputs are
 * set to a NaN pattern first) or wrote past its outputs (16 guard floats);
 * REGOPT_ERR_BACKWARD if a backward with a non-zero d_outputs added nothing
 * to the registered gradients; REGOPT_ERR_STATE if the first or last element
 * of a trainable tensor changed since the last step (a checkpoint load with
 * parameters resets the reference, one without forgets it). Each check is a
 * pass over the outputs or the gradients: for debugging a host, not for
 * production runs. Overwriting instead of adding, or moving a buffer
 * whose old memory still holds the same values, cannot be seen. */
REGOPT_API REGOPT_NODISCARD regopt_status
regopt_trainer_step(regopt_trainer *trainer, const regopt_batch *batches,
                    size_t count);

/* Evaluation: one forward in slot 0 with flags NO_GRAD (dropout off). If
 * outputs is not NULL it receives rows * output_width floats. If loss is not
 * NULL it receives the weighted mean task loss (labels or targets needed
 * unless the loss is a callback). Changes no training state. */
REGOPT_API REGOPT_NODISCARD regopt_status
regopt_trainer_evaluate(regopt_trainer *trainer, const regopt_batch *batch,
                        double *loss, float *outputs);

/* One-line detail of the trainer's last failure ("" if none); never NULL.
 * After a failed step it names the cause: the callback and its return
 * value, the micro-batch, the row, the key and its range, ... */
REGOPT_API const char *regopt_trainer_message(const regopt_trainer *trainer);

/* ------------------------------------------------------------------------ */
/* Measuring flatness                                                       */
/* ------------------------------------------------------------------------ */

/*
 * Since 1.0. regopt_trainer_flatness measures how flat the loss is around
 * the current weights w, on the batches it is given (Andriushchenko et al.,
 * ICML 2023, and the reference code tml-epfl/sharpness-vs-generalization,
 * sharpness.py; README, "Measuring flatness"). L is the task loss of the
 * batches together: the weighted mean over every unmasked row of every
 * batch, as in a step, WITHOUT the attached regularizers' terms. w is every
 * trainable tensor (frozen tensors are never moved). Every pass runs in
 * slot 0 with dropout off and is flagged REGOPT_PASS_PROBE (and
 * PERTURBED_WEIGHTS when w is moved), so hosts keep batch-norm statistics
 * still; loss-only passes are also flagged NO_GRAD. T is |w| elementwise
 * (request.adaptive = 1) or 1. The measures, one bit each:
 *
 *   REGOPT_FLAT_WORST_CASE    max over ||delta / T||_p <= rho of
 *       L(w + delta) - L(w), p = 2 or infinity, by the reference's projected
 *       ascent with momentum (eval_APGD_sharpness), from delta_0 = 0:
 *         u = P(delta_k + s T g / (||g||_2 + 1e-12))   (L2)
 *         u = P(delta_k + s T sign(g))                  (L-inf)
 *         delta_{k+1} = 0.75 u + 0.25 delta_{k-1}       (delta_{-1} = 0)
 *       g the gradient at w + delta_k, s = 2 rho at first, P the Euclidean
 *       projection onto the set (L2: scaling onto the ball; adaptive L2:
 *       onto the ellipsoid, by bisection on its multiplier, where the
 *       reference stops at 1e-5; L-inf: clipping to +-rho T). At the
 *       reference's checkpoints -- iterations ceil(p_j K) with p_1 = 0.22,
 *       p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), p_0 = 0 -- s is
 *       halved, and the next gradient is taken at the best point so far,
 *       when fewer than 0.75 x (the iterations since the last checkpoint)
 *       raised the maximum, or when neither s nor the maximum changed since
 *       it. The result is the largest L(w + delta_k) - L(w) seen, k = 1..K
 *       (0 if none exceeds L(w)). Not the reference's default start: it
 *       starts from a random delta, this one from 0 (SAM's first step), so
 *       at a point with an exactly zero gradient it reports 0.
 *   REGOPT_FLAT_AVERAGE_CASE  the mean over n samples of L(w + delta) -
 *       L(w), delta = sigma T z, z ~ N(0, I) (eval_average_sharpness's
 *       Gaussian noise, rho there is sigma here).
 *   REGOPT_FLAT_EIGENVALUE    the Hessian eigenvalue of largest magnitude,
 *       by power iteration (as PyHessian's eigenvalues()): v_0 normal
 *       random, unit; lambda_k = v_k . H v_k, v_{k+1} = H v_k / ||H v_k||;
 *       stops when |lambda_k - lambda_{k-1}| / (|lambda_{k-1}| + 1e-6) <
 *       tolerance (converged) or after the iteration limit.
 *   REGOPT_FLAT_TRACE         the Hessian trace by Hutchinson's estimator
 *       (as PyHessian's trace()): the mean of v . H v over Rademacher
 *       vectors v; stops when the running mean moves by less than
 *       tolerance x (|previous mean| + 1e-6) (converged) or after the sample
 *       limit. Its standard error is reported (exact for a diagonal H: 0).
 *
 * Hessian-vector products. The host gives gradients only, so H v is a
 * central difference of two gradients:
 *   H v ~= (g(w + h v) - g(w - h v)) / (2 h),  h = fd_scale (1 + ||w||) / ||v||
 * with the default fd_scale = 2^(-23/3) ~ 4.9e-3, the cube root of float32's
 * epsilon, the step that balances the two errors of a central difference:
 * truncation O(h^2 ||v||^2 |D^3 L|) (zero for a quadratic loss) and
 * rounding O(eps32 |g| / h) (relative errors near 1e-5 on well-scaled
 * models). h scales with ||w|| (the usual Jacobian-free choice) so that the
 * step stays well above the rounding of w. w is put back by copy.
 *
 * Passes, per batch given (F forward, B backward): 1 F for L(w), then
 *   worst case    1 F+B at w, then K iterations: K F + (K - 1) B, plus
 *                 1 F+B per halving before the last iteration (at most
 *                 8 for any K: result.worst_halvings);
 *   average case  n F (NO_GRAD);
 *   eigenvalue    2 F+B per iteration;
 *   trace         2 F+B per sample.
 * result.forward_calls / backward_calls give the totals of the call.
 *
 * Nothing of the training state changes: parameters (restored by copy,
 * bit-exact, also when a pass fails), optimizer and regularizer state,
 * statistics, step count and RNG position (the probe's randomness comes from
 * request.seed alone: the same numbers on every machine and thread count).
 * The gradient buffers are left with undefined content, as after a failed
 * step. Memory: a scratch of up to 4 floats per trainable element (worst
 * case 4, eigenvalue 3, trace 2, average case 1) is allocated from the
 * model's allocator on the first call that needs it, kept and reused, and
 * released with the trainer. With data parallel training each process
 * measures its own batches (no all-reduce).
 */

/* Measures (bits of regopt_flatness_request.measures). Since 1.0. */
#define REGOPT_FLAT_WORST_CASE 0x1u
#define REGOPT_FLAT_AVERAGE_CASE 0x2u
#define REGOPT_FLAT_EIGENVALUE 0x4u
#define REGOPT_FLAT_TRACE 0x8u
#define REGOPT_FLAT_ALL 0xfu

/* Worst-case norms (regopt_flatness_request.norm). Since 1.0. */
#define REGOPT_FLAT_NORM_L2 2
#define REGOPT_FLAT_NORM_INF 0

/* What to measure. Initialise with regopt_flatness_request_init (the
 * defaults below), then change what applies. Fields are only ever
 * appended; size = sizeof(regopt_flatness_request). Since 1.0. */
typedef struct regopt_flatness_request {
    size_t size;
    uint32_t measures;          /* REGOPT_FLAT_* bits, at least one; default ALL */
    int32_t norm;               /* worst case: REGOPT_FLAT_NORM_L2 (default) or _INF */
    int32_t adaptive;           /* 0 (default) or 1: T = |w| (worst and average case) */
    uint32_t worst_iterations;  /* K, 1 .. 100000, default 20 */
    double rho;                 /* worst-case radius, (0, 1e3], default 0.05 */
    double sigma;               /* average case: std of delta / T, (0, 1e3], default 0.01 */
    uint32_t average_samples;   /* n, 1 .. 100000, default 20 */
    uint32_t eigen_iterations;  /* 1 .. 100000, default 100 */
    double eigen_tolerance;     /* [0, 1], default 1e-3 */
    uint32_t trace_samples;     /* 1 .. 100000, default 100 */
    uint32_t reserved0;         /* must be 0 */
    double trace_tolerance;     /* [0, 1], default 1e-3 */
    double fd_scale;            /* (0, 1], default 2^(-23/3) */
    uint64_t seed;              /* average case, eigenvalue start, trace vectors;
                                   default 0 */
} regopt_flatness_request;

/* What was measured. The caller sets size = sizeof(regopt_flatness); the
 * library writes the fields that fit in it (at least up to backward_calls)
 * on success only. Measures not asked for read 0. Since 1.0. */
typedef struct regopt_flatness {
    size_t size;
    double loss;                /* L(w) */
    double worst_case;          /* max L(w + delta) - L(w), >= 0 */
    double worst_radius;        /* ||delta / T||_p of that delta (<= rho) */
    uint32_t worst_iterations;  /* K made */
    uint32_t worst_halvings;    /* times the step size was halved */
    double average_case;        /* mean L(w + delta) - L(w) */
    double average_stderr;      /* standard error of that mean (n > 1) */
    uint32_t average_samples;   /* n made */
    uint32_t eigen_iterations;  /* power iterations made */
    double eigenvalue;          /* the last lambda_k */
    double eigen_change;        /* the last relative change of lambda */
    int32_t eigen_converged;    /* 1: below eigen_tolerance */
    uint32_t trace_samples;     /* Hutchinson samples made */
    double trace;               /* their mean */
    double trace_stderr;        /* standard error of the mean (samples > 1) */
    int32_t trace_converged;    /* 1: below trace_tolerance */
    uint32_t reserved0;
    double fd_step;             /* h of the last Hessian-vector product */
    uint64_t forward_calls;     /* forwards of this call */
    uint64_t backward_calls;    /* backwards of this call */
} regopt_flatness;

/* Fill *request with the defaults above (size set). NULL is ignored.
 * Since 1.0. */
REGOPT_API void regopt_flatness_request_init(regopt_flatness_request *request);

/* Measure flatness on `count` batches (strided by batches[0].size, as for a
 * step), as described above, into *result. A NULL pointer:
 * REGOPT_ERR_NULL_POINTER. A request or result whose size is too small, no
 * or unknown measure bits, a bad norm or adaptive value, a non-zero
 * reserved field: REGOPT_ERR_INVALID_ARGUMENT; rho, sigma, fd_scale or a
 * tolerance out of its range or NaN, or an iteration or sample count of 0
 * or above its limit: REGOPT_ERR_OUT_OF_RANGE, naming the field. Bad
 * batches fail as for a step. A failing callback gives its status
 * (REGOPT_ERR_FORWARD, _BACKWARD, _LOSS_CALLBACK), a non-finite loss or
 * gradient REGOPT_ERR_NONFINITE_LOSS / _GRADIENT; then *result is
 * untouched and, as on success, no training state has changed (see
 * above). Since 1.0. */
REGOPT_API REGOPT_NODISCARD regopt_status
regopt_trainer_flatness(regopt_trainer *trainer, const regopt_batch *batches, size_t count,
                        const regopt_flatness_request *request, regopt_flatness *result);

/* Struct sizes for bindings. Since 1.0. */
REGOPT_API size_t regopt_sizeof_flatness_request(void);
REGOPT_API size_t regopt_sizeof_flatness(void);

/* ------------------------------------------------------------------------ */
/* Regularizers: common rules                                               */
/* ------------------------------------------------------------------------ */

/*
 * A regularizer is a handle of its own (since 1.0): create it by kind,
 * configure it through its own keys (per-group keys too), attach it to a
 * trainer, read its statistics from it, detach it, free it.
 *
 *   regopt_regularizer *sam = regopt_regularizer_create(REGOPT_REG_SAM, NULL, &st);
 *   regopt_regularizer_set_double(sam, REGOPT_SAM_RHO, 0.1);
 *   regopt_trainer_attach(trainer, sam);
 *   ... steps ...
 *   regopt_regularizer_get_double(sam, REGOPT_STAT_SAM_SHARPNESS, &s);
 *   regopt_trainer_free(trainer);      (or regopt_trainer_detach)
 *   regopt_regularizer_free(sam);
 *
 * Two sides. Loss-side terms (R-Drop, SMART's adversarial term, the Bregman
 * proximal term, user-defined terms) add passes and terms to every gradient
 * evaluation. The weight-side family (SAM and its variants) decides where the
 * gradients are evaluated. A trainer holds up to 32 regularizers (one more
 * is REGOPT_ERR_STATE), at most one of them weight-side; R-Drop, SMART,
 * Bregman, the weight average and adversarial training at most once each
 * (they own the extra copies of the task pass, the embedding noise, the
 * teacher and the average); user-defined terms as often as wanted
 * (each handle once). regopt_regularizer_kind_info reports these rules as
 * REGOPT_REG_WEIGHT_SIDE and REGOPT_REG_SINGLE. Everything attached
 * composes: SAM evaluates the whole objective, with every loss-side term, at
 * w and at w + eps.
 *
 * Order. Whatever the order of attach, the objective is summed as: task loss
 * (both R-Drop copies), R-Drop's consistency, Bregman, SMART, adversarial
 * training with a KL objective, then user terms in the order they were
 * attached, then adversarial training with the task objective (its passes
 * run after the clean backward); activation slots and dropout seeds are
 * handed out in the same order, and regopt_trainer_regularizer_at lists the
 * regularizers in it (the weight average, which adds no term, last: it
 * averages the weights after every other method's after-update hook).
 * Results therefore never depend on the order of the attach calls of
 * built-in methods.
 *
 * Ownership. A trainer borrows what is attached: a regularizer attached to a
 * trainer cannot be attached to another one (REGOPT_ERR_STATE) nor freed
 * (regopt_regularizer_free refuses and says so in
 * regopt_last_error_message()); regopt_trainer_free detaches everything.
 *
 * Keys. A regularizer takes the keys of its own section only. Any other key
 * (another method's, the optimizer's, the trainer's) is
 * REGOPT_ERR_UNKNOWN_KEY, and so is a regularizer's key given to the trainer
 * or the optimizer; per-group keys go through regopt_regularizer_set_group /
 * _get_group only, the others through the _double / _int functions only
 * (the wrong function: REGOPT_ERR_UNKNOWN_KEY). Statistics are read-only:
 * setting one of the handle's own statistics is REGOPT_ERR_STATE
 * ("sam.sharpness is a statistic and cannot be set"), as setting a stat.*
 * key on the trainer is. A refused set changes nothing and explains itself
 * in regopt_regularizer_message().
 *
 * Options may be set before or after attach and between steps, never during
 * one. A regularizer's buffers come from its trainer's allocator (the
 * model's hooks; the handle itself from the allocator given at creation).
 * They are allocated at attach, for the rows the trainer has reserved or
 * seen, and when an option that needs one is set (sam.gsam, sam.m_rows);
 * a step that sees more rows than any before grows them, like the trainer's
 * own scratch buffers, and once the batch sizes have been seen no step
 * allocates.
 *
 * Statistics are those of the trainer's last successful step; they read 0
 * before the first step after attach, and a checkpoint load restores them.
 * Detaching keeps a handle's options; attaching it again zeroes its
 * statistics and restarts its state (the Bregman teacher).
 */
/* Regularizer kinds (values as in 0.x, where the enum was named
 * regopt_regularizer). */
typedef enum regopt_regularizer_kind {
    REGOPT_REG_SAM = 1,     /* "sam": SAM, ASAM, GSAM and the variants of its
                               section (weight side) */
    REGOPT_REG_RDROP = 2,   /* "rdrop": R-Drop */
    REGOPT_REG_SMART = 3,   /* "smart": SMART's adversarial term R_s */
    REGOPT_REG_BREGMAN = 4, /* "bregman": SMART's momentum Bregman proximal term */
    REGOPT_REG_TERM = 5,    /* "term": a user-defined loss-side term
                               (regopt_regularizer_create_term). Since 1.0. */
    REGOPT_REG_AVERAGE = 6, /* "average": EMA or SWA of the weights, swapped in
                               for evaluation. Since 1.0. */
    REGOPT_REG_ADVERSARIAL = 7 /* "adv": adversarial training on the input
                               embeddings -- FGM, PGD, FreeLB, VAT (section
                               "Adversarial training"). Since 1.0. */
} regopt_regularizer_kind;

/* Flags reported by regopt_regularizer_kind_info. Since 1.0. */
#define REGOPT_REG_WEIGHT_SIDE 0x1u /* decides where gradients are taken */
#define REGOPT_REG_SINGLE 0x2u      /* at most one per trainer */

/* The regularizer handle. Since 1.0. */
typedef struct regopt_regularizer regopt_regularizer;

/* A new regularizer of a built-in kind with its defaults. allocator may be
 * NULL (malloc/free). REGOPT_REG_TERM is created with
 * regopt_regularizer_create_term instead (here: REGOPT_ERR_INVALID_ARGUMENT,
 * as for an unknown kind). NULL on failure, with *status set (status may be
 * NULL) and regopt_last_error_message() explaining. Since 1.0. */
REGOPT_API regopt_regularizer *regopt_regularizer_create(regopt_regularizer_kind kind,
                                                         const regopt_allocator *allocator,
                                                         regopt_status *status);

/* Release a regularizer. NULL is a no-op (REGOPT_OK). One that is attached
 * to a trainer is NOT freed: REGOPT_ERR_STATE, the reason also in
 * regopt_last_error_message() (detach it or free the trainer first). A
 * user term's free_user is called here. Since 1.0. */
REGOPT_API regopt_status regopt_regularizer_free(regopt_regularizer *reg);

/* The kind given at creation; 0 for NULL or a handle of another type.
 * Since 1.0. */
REGOPT_API regopt_regularizer_kind regopt_regularizer_get_kind(const regopt_regularizer *reg);

/* Set or read one of the regularizer's keys (its section lists them);
 * statistics are read-only. A key of another kind or handle, or a per-group
 * key: REGOPT_ERR_UNKNOWN_KEY; setting a statistic: REGOPT_ERR_STATE; out
 * of bounds: REGOPT_ERR_OUT_OF_RANGE (see "Keys" above). Since 1.0. */
REGOPT_API regopt_status regopt_regularizer_set_double(regopt_regularizer *reg, regopt_key key,
                                                       double value);
REGOPT_API regopt_status regopt_regularizer_set_int(regopt_regularizer *reg, regopt_key key,
                                                    int64_t value);
REGOPT_API regopt_status regopt_regularizer_get_double(const regopt_regularizer *reg,
                                                       regopt_key key, double *value);
REGOPT_API regopt_status regopt_regularizer_get_int(const regopt_regularizer *reg,
                                                    regopt_key key, int64_t *value);

/* Per-group keys (REGOPT_KEY_GROUP in regopt_key_info) for group 0 ..
 * REGOPT_MAX_GROUPS-1, e.g. REGOPT_SAM_GROUP_ADAPTIVE; another group:
 * REGOPT_ERR_OUT_OF_RANGE. Since 1.0. */
REGOPT_API regopt_status regopt_regularizer_set_group(regopt_regularizer *reg, int32_t group,
                                                      regopt_key key, double value);
REGOPT_API regopt_status regopt_regularizer_get_group(const regopt_regularizer *reg,
                                                      int32_t group, regopt_key key,
                                                      double *value);

/* The trainer the regularizer is attached to, NULL if none (or for NULL).
 * Since 1.0. */
REGOPT_API regopt_trainer *regopt_regularizer_get_trainer(const regopt_regularizer *reg);

/* One-line detail of the regularizer's last failure ("" if none); never
 * NULL. Since 1.0. */
REGOPT_API const char *regopt_regularizer_message(const regopt_regularizer *reg);

/* Attach a regularizer to a trainer: checks that the model can serve it
 * (slots, input width, capabilities), that it composes with what is
 * attached (at most one weight-side regularizer; R-Drop, SMART and Bregman
 * once each), and allocates its buffers for the batch size the trainer has
 * reserved or seen. On failure (REGOPT_ERR_STATE for a rule or a model that
 * cannot serve it) nothing changes; the trainer's message names the problem
 * (and both regularizers, for a conflict). Since 1.0 (a 0.x trainer
 * switched methods on by kind). */
REGOPT_API regopt_status regopt_trainer_attach(regopt_trainer *trainer, regopt_regularizer *reg);

/* Detach a regularizer (its buffers are released, its options kept). One
 * that is not attached to this trainer: REGOPT_ERR_STATE. Since 1.0. */
REGOPT_API regopt_status regopt_trainer_detach(regopt_trainer *trainer, regopt_regularizer *reg);

/* The regularizers attached to a trainer, in the order the step runs them
 * (see "Order" above): index 0 .. count-1, NULL past the end. Since 1.0. */
REGOPT_API size_t regopt_trainer_regularizer_count(const regopt_trainer *trainer);
REGOPT_API regopt_regularizer *regopt_trainer_regularizer_at(const regopt_trainer *trainer,
                                                             size_t index);

/* The index-th regularizer kind the library knows (0, 1, ... until
 * REGOPT_ERR_OUT_OF_RANGE): its kind, its name (static text: "sam", the
 * prefix of its keys) and REGOPT_REG_* flags. Every out pointer may be
 * NULL. Since 1.0. */
REGOPT_API regopt_status regopt_regularizer_kind_info(size_t index,
                                                      regopt_regularizer_kind *kind,
                                                      const char **name, uint32_t *flags);

/* ------------------------------------------------------------------------ */
/* SAM family (REGOPT_REG_SAM, weight side)                                 */
/* ------------------------------------------------------------------------ */

/*
 * SAM family (REGOPT_REG_SAM; Foret et al. 2021, Alg. 1; ASAM, Kwon et al.
 * 2021; GSAM, Zhuang et al. 2022; and, below, FriendlySAM, VaSSO, SAM-ON,
 * WSAM, LookSAM and Momentum-SAM). A SAM step, with g the gradient of the
 * step's loss over all its micro-batches (so gradient accumulation works):
 *   1. clean passes: forward/backward of every micro-batch at w (flags
 *      TRAIN) -> g, L(w). With sam.sync_ascent, g is all-reduced.
 *   2. ascent: a = g + ascent_weight_decay * w, T = |w| + eta for ASAM
 *      tensors (1 otherwise), eps = rho * T^2 a / (||T a|| + delta), where the
 *      norm is ONE global L2 norm over every trainable tensor. If ||T a|| = 0
 *      there is no ascent: the step is a plain step on g.
 *   3. w is saved, w += eps; perturbed passes: forward/backward of every
 *      micro-batch (flags TRAIN | PERTURBED_WEIGHTS, so hosts freeze
 *      batch-norm statistics; dropout seed: sam.same_seed) -> g_p, L(w + eps).
 *   4. w is restored by copy (bit-exact), whatever happened in 3. When 3
 *      succeeded on a whole step (no sam.m_rows chunks, not Momentum-SAM)
 *      and the optimizer is built in, the copy rides in the update's own
 *      pass (one trip through memory fewer): until then -- during the
 *      step's all-reduce -- the host's buffers still hold w + eps; they hold
 *      w (or the updated w) whenever the step returns, and a REGOPT_HOST
 *      update callback finds w in its float32 buffers.
 *   5. GSAM: g_perp = g - <g, u> u with u = g_p / (||g_p|| + delta); the
 *      update direction is g_p - alpha * g_perp. Otherwise it is g_p.
 *   6. the base optimizer steps from the restored w with that gradient (its
 *      weight decay at the restored w), after the data-parallel all-reduce
 *      and clipping, exactly as in a plain step.
 * Callbacks per SAM step: 2 forward and 2 backward per micro-batch, in the
 * order clean(0..count-1), perturbed(0..count-1), all in slot 0. With
 * sam.m_rows = m, each micro-batch is cut into chunks of m rows (the last may
 * be shorter; regopt_pass.row_offset says where a chunk starts), and each
 * chunk makes steps 1-4 alone: clean(chunk), perturbed(chunk), and the
 * perturbed gradients of all chunks are summed with the step's loss
 * weighting, i.e. averaged. A user loss callback then receives a view of
 * the chunk's rows (labels, targets, mask, weights shifted; batch->data is
 * the whole batch's; pass->row_offset says where the chunk starts).
 * Data parallel without sam.sync_ascent: each replica makes its ascent (and
 * the GSAM combination) with its own gradients; the final directions are
 * averaged. Steps where sam.every does not divide the step
 * count are plain steps (1 forward + 1 backward per micro-batch).
 * rho in force: sam.rho, or with sam.rho_follows_lr,
 *   rho_t = rho_min + (rho - rho_min)(lr_t - lr_min)/(lr_max - lr_min)
 * where lr_max = optimizer.lr and lr_min = optimizer.lr * min_lr_ratio,
 * clamped to [rho_min, rho] (during warm-up lr_t < lr_min).
 * Tensors registered without a gradient are never perturbed; tensors whose
 * ascent gradient a = g + ascent_weight_decay * w is zero get eps = 0.
 * SAM-ON (Mueller et al. 2023; since 1.0): a parameter group with
 * sam.group_perturb = 0 is left out of the ascent, both ||T a|| and eps;
 * its tensors still get g_p, taken at the other groups' w + eps.
 * SAM statistics of a plain step (sam.every, or ||T a|| = 0): sam_applied 0,
 * perturbed loss = clean loss, sharpness 0; on sam.every's plain steps
 * sam_rho and sam_ascent_norm read 0 too.
 *
 * Ascent directions with state (sam.direction; since 1.0). In step 2 the
 * gradient g is replaced by a direction that remembers earlier SAM steps;
 * the normalisation, ASAM's T, the ascent weight decay, GSAM (which still
 * uses the clean g) and the final gradient g_p are unchanged:
 *   FriendlySAM (Li et al., CVPR 2024): at the first SAM step m = g and the
 *     ascent follows g; then a = g - sigma m (m of the previous SAM step)
 *     and m = lambda m + (1 - lambda) g, with the raw g (the official code).
 *   VaSSO (Li & Giannakis, NeurIPS 2023): d = g at the first SAM step, then
 *     d = (1 - theta) d + theta g; the ascent follows d. The official code
 *     adds 1e-7 to the norm: set sam.delta = 1e-7 to match it.
 * sigma 0 (FriendlySAM) and theta 1 (VaSSO) are SAM bit for bit. The state
 * (one parameter-sized buffer; two more are per-step scratch) moves only
 * on SAM steps (not on sam.every's plain steps) and only when the step is
 * made: a failed step leaves it as it was. It is saved in checkpoints (the
 * SAM section's state) and freed by regopt_trainer_detach (a later attach
 * starts afresh); a state made by another direction than the one now
 * selected is not used (the next SAM step starts afresh). With sam.m_rows
 * each chunk ascends along its own direction, the state weighted by the
 * chunk's share of the step's weight; the new state is made from the whole
 * step's clean gradient. Data parallel: with sam.sync_ascent the state is
 * made from the averaged g and is the same on every replica; without it,
 * each replica keeps its own (from its own g), so resume each replica from
 * its own checkpoint.
 */
enum regopt_sam_direction {
    REGOPT_SAM_DIRECTION_GRADIENT = 0, /* SAM, ASAM, GSAM: the ascent follows g */
    REGOPT_SAM_DIRECTION_FRIENDLY = 1, /* FriendlySAM */
    REGOPT_SAM_DIRECTION_VASSO = 2     /* VaSSO */
};

/*
 * WSAM (sam.wsam; Yue et al., KDD 2023; since 1.0) weights the sharpness
 * g_p - g by alpha = gamma / (1 - gamma) (sam.wsam_gamma):
 *   decoupled (the paper's default): the base optimizer steps with the clean
 *     g (its momentum, preconditioner, weight decay and clipping see only g),
 *     then a raw step w -= lr_t * lr_scale(group) * alpha * (g_p - g);
 *   coupled: the base optimizer steps with alpha g_p + (1 - alpha) g.
 * The ascent is unchanged (ASAM, sam.direction, m-sharpness compose). Data
 * parallel: the ascent uses each replica's own g (as the official code) and
 * both g and g_p are averaged: decoupled WSAM adds one all-reduce per SAM
 * step for g_p - g. No state across steps.
 */
/*
 * LookSAM (sam.looksam; Liu et al., CVPR 2022; since 1.0): steps
 * 0, k, 2k, ... (k = sam.every) are SAM steps that also keep, per tensor,
 * g_v = g_p - (<g, g_p> / ||g||^2) g (g_v = g_p where ||g|| = 0); the other
 * steps take one gradient g (1 forward + 1 backward per micro-batch) and
 * step with, per tensor, g + alpha ||g|| / (||g_v|| + 1e-8) g_v. k = 1 is
 * SAM bit for bit. g_v is committed only when a SAM step is made, freed by
 * detach, and saved in checkpoints (the SAM section's state). Composes with
 * ASAM, sam.direction, SAM-ON and m-sharpness (g and g_p summed over the
 * chunks); data parallel: g_v is made from each replica's own g and g_p
 * (resume each replica from its own checkpoint). Statistics of a reuse
 * step: sam.applied 0, sam.rho_used and sam.ascent_norm 0.
 */
/*
 * Momentum-SAM (sam.momentum; Becker et al. 2024; since 1.0): ONE forward
 * and backward per micro-batch, at w + eps with eps = -rho v / (||v|| +
 * delta), v the base optimizer's first block of state (SGD's momentum
 * buffer, which includes its weight decay; Adam's, AdamW's and RAdam's
 * uncorrected m); the weights are restored by copy and the base optimizer
 * steps from w with that gradient (its weight decay at w). While v = 0
 * (the first step; SGD without momentum always) the pass is at w. The pass
 * is the step's only one: flags TRAIN without PERTURBED_WEIGHTS, so batch
 * norm updates its statistics there. Statistics: sam.clean_loss and
 * sam.perturbed_loss are both L(w + eps), sharpness 0, sam.ascent_norm
 * ||v||, sam.applied 1 when perturbed. Refused with sam.gsam, sam.wsam,
 * sam.looksam, sam.direction, sam.m_rows and sam.adaptive;
 * sam.group_perturb and sam.ascent_weight_decay do not apply; sam.every
 * makes the other steps plain. Data parallel: v is the same on every
 * replica, so is eps; one all-reduce per step. No state of its own (v is
 * the optimizer's, in checkpoints already).
 */
enum regopt_sam_wsam {
    REGOPT_SAM_WSAM_OFF = 0,
    REGOPT_SAM_WSAM_DECOUPLED = 1,
    REGOPT_SAM_WSAM_COUPLED = 2
};

enum regopt_sam_key {
    REGOPT_SAM_RHO = 1000,          /* "sam.rho": ascent radius (rho_max of GSAM),
                                       [0, 1e3], default 0.05 (ASAM: 0.5 - 2) */
    REGOPT_SAM_DELTA = 1001,        /* "sam.delta": added to the norm in the ascent
                                       denominator, [0, 1], default 1e-12 (use
                                       >= 1e-7 for half-precision hosts) */
    REGOPT_SAM_ADAPTIVE = 1002,     /* "sam.adaptive": int 0/1, default 0; 1 = ASAM */
    REGOPT_SAM_ETA = 1003,          /* "sam.eta": ASAM's T_w = |w| + eta, [0, 1e3],
                                       default 0.01 (0 = davda54 adaptive=True) */
    REGOPT_SAM_GSAM = 1004,         /* "sam.gsam": int 0/1, default 0; 1 = GSAM update */
    REGOPT_SAM_GSAM_ALPHA = 1005,   /* "sam.gsam_alpha": [0, 1e3], default 0.4 */
    REGOPT_SAM_RHO_MIN = 1006,      /* "sam.rho_min": [0, 1e3], default 0 */
    REGOPT_SAM_RHO_FOLLOWS_LR = 1007, /* "sam.rho_follows_lr": int 0/1, default 0;
                                       1 = rho moves with the scheduled lr between
                                       rho_min and rho (GSAM) */
    REGOPT_SAM_EVERY = 1008,        /* "sam.every": int [1, 2^31], default 1: make the
                                       ascent on steps 0, k, 2k, ... only */
    REGOPT_SAM_M_ROWS = 1009,       /* "sam.m_rows": int [0, 2^31], default 0 = one
                                       ascent for the whole step; m > 0 =
                                       m-sharpness: every m rows of each
                                       micro-batch make their own ascent and the
                                       perturbed gradients are averaged */
    REGOPT_SAM_SAME_SEED = 1010,    /* "sam.same_seed": int 0/1, default 1: the
                                       perturbed pass reuses the clean pass's
                                       dropout seed (google-research); 0 = a fresh
                                       seed (davda54) */
    REGOPT_SAM_ASCENT_WEIGHT_DECAY = 1011, /* "sam.ascent_weight_decay": [0, 1e3],
                                       default 0: add wd*w to the ascent gradient
                                       before it is normalised (google-research's
                                       L2 term in the objective) */
    REGOPT_SAM_SYNC_ASCENT = 1012,  /* "sam.sync_ascent": int 0/1, default 0: with an
                                       all-reduce, also average the ascent gradient
                                       over replicas (default: each replica
                                       perturbs with its own shard's gradient,
                                       m-sharpness with m = shard) */
    REGOPT_SAM_DIRECTION = 1013,    /* "sam.direction": int, default 0: what the
                                       ascent follows (a of step 2 above):
                                       REGOPT_SAM_DIRECTION_GRADIENT g (SAM),
                                       _FRIENDLY g - sigma m (FriendlySAM),
                                       _VASSO d (VaSSO); see "Ascent
                                       directions with state" above. Since 1.0 */
    REGOPT_SAM_FRIENDLY_SIGMA = 1014, /* "sam.friendly_sigma": FriendlySAM's sigma,
                                       [0, 1e3], default 1 (0 = SAM) */
    REGOPT_SAM_FRIENDLY_LAMBDA = 1015, /* "sam.friendly_lambda": FriendlySAM's EMA
                                       decay lambda, [0, 1], default 0.9 (F-SAM
                                       train.py 0.95; CIFAR-100 0.6) */
    REGOPT_SAM_VASSO_THETA = 1016,  /* "sam.vasso_theta": VaSSO's theta, [0, 1],
                                       default 0.9 (1 = SAM) */
    REGOPT_SAM_WSAM = 1017,         /* "sam.wsam": int, default 0 (off): WSAM,
                                       REGOPT_SAM_WSAM_DECOUPLED or _COUPLED; see
                                       "WSAM" above. Not with sam.gsam. Since 1.0 */
    REGOPT_SAM_WSAM_GAMMA = 1018,   /* "sam.wsam_gamma": WSAM's gamma, [0, 0.999],
                                       default 0.9; alpha = gamma / (1 - gamma)
                                       (gamma 0.5: coupled = SAM; 0: decoupled =
                                       the base optimizer) */
    REGOPT_SAM_LOOKSAM = 1019,      /* "sam.looksam": int 0/1, default 0: LookSAM;
                                       the steps between sam.every's SAM steps
                                       reuse the last one's g_v (see "LookSAM"
                                       above). Not with sam.gsam or sam.wsam.
                                       Since 1.0 */
    REGOPT_SAM_LOOKSAM_ALPHA = 1020, /* "sam.looksam_alpha": [0, 1e3], default 0.7 */
    REGOPT_SAM_MOMENTUM = 1021,     /* "sam.momentum": int 0/1, default 0:
                                       Momentum-SAM (see above): one pass per
                                       step at w - rho v/(||v|| + delta). Set
                                       sam.rho (the paper: 0.3 with SGD, 1 with
                                       AdamW). Since 1.0 */

    /* Per parameter group (regopt_regularizer_set_group). */
    REGOPT_SAM_GROUP_ADAPTIVE = 1050, /* "sam.group_adaptive": int 0/1, default 1:
                                       ASAM scales this group's tensors by
                                       |w| + eta; 0 = unscaled (SamsungLabs
                                       scales weights only: set 0 on bias/norm
                                       groups). Since 1.0 (0.x: the trainer's
                                       REGOPT_GROUP_SAM_ADAPTIVE, 152) */
    REGOPT_SAM_GROUP_PERTURB = 1051, /* "sam.group_perturb": int 0/1, default 1:
                                       0 leaves this group's tensors out of the
                                       ascent, both its norm and eps (SAM-ON,
                                       Mueller et al. 2023: perturb only the
                                       normalisation layers' affine parameters;
                                       with sam.adaptive 1, eta 0, rho 10: their
                                       ASAM-ON recipe). They still get g_p, taken
                                       at the other groups' w + eps. Since 1.0 */

    /* Statistics (read-only). On the handle since 1.0 (0.x: trainer
     * statistics 909..914, "stat.sam_*"). */
    REGOPT_STAT_SAM_CLEAN_LOSS = 1090,     /* "sam.clean_loss": L(w), L the whole
                                              objective (with R-Drop, SMART,
                                              Bregman and user terms when on) */
    REGOPT_STAT_SAM_PERTURBED_LOSS = 1091, /* "sam.perturbed_loss": L(w + eps) */
    REGOPT_STAT_SAM_SHARPNESS = 1092,      /* "sam.sharpness": L(w + eps) - L(w) */
    REGOPT_STAT_SAM_ASCENT_NORM = 1093,    /* "sam.ascent_norm": ||g|| (ASAM:
                                              ||T_w g||; with sam.direction, of
                                              the direction), the ascent denominator;
                                              with sam.m_rows the mean over chunks */
    REGOPT_STAT_SAM_RHO = 1094,            /* "sam.rho_used": rho in force */
    REGOPT_STAT_SAM_APPLIED = 1095         /* "sam.applied": 1 if the last step made
                                              the ascent, 0 for a plain step */
};

/* ------------------------------------------------------------------------ */
/* R-Drop (REGOPT_REG_RDROP, loss side)                                     */
/* ------------------------------------------------------------------------ */

/*
 * R-Drop (REGOPT_REG_RDROP; Liang et al. 2021, Eq. 3). Each micro-batch runs
 * twice with different dropout seeds, and per row
 *   l_i = w_ce (l(z1_i) + l(z2_i)) + alpha * c(z1_i, z2_i)
 * where l is the task loss and c the consistency term:
 *   softmax CE or a user loss:  c = (KL(P1||P2) + KL(P2||P1)) / 2, P = softmax(z)
 *   MSE (regression):           c = mean_k (z1_k - z2_k)^2
 * averaged like the task loss over unmasked rows (mask 1 = KEEP, 0 =
 * padding, so padded tokens contribute nothing), or with rdrop.kl_sum the
 * consistency term summed over rows instead. Gradients flow into both passes;
 * nothing is detached. Callbacks per micro-batch: forward(slot 0, seed s1),
 * forward(slot 1, seed s2), backward(slot 0), backward(slot 1) -- the model
 * needs 2 slots -- or, for a model with REGOPT_CAP_DOUBLED_BATCH (and
 * rdrop.doubled = 1), one forward(slot 0, 2n rows, flags DOUBLED, seed s1,
 * seed2 s2) and one backward over the 2n output rows: the same numbers from
 * fewer, larger matrix products. s1 is the seed the pass would have without
 * R-Drop; both are reproducible from trainer.seed. With SAM, both of SAM's
 * gradient evaluations use the R-Drop objective (2 x 2 passes).
 *
 * The reference code paths reduce differently; to reproduce one, set
 * (../shared/METHODS2.md, "R-Drop reductions, mapped"):
 *   code path                                          ce_weight kl_sum alpha
 *   paper Eq. 3; fairseq translation/LM/RoBERTa
 *     (divides by sample_size = tokens)                1         0      alpha
 *   R-Drop README snippet: 0.5 (CE1 + CE2)
 *     + alpha (sum p + sum q) / 2                      0.5       1      alpha
 *   Hugging Face bert_kl: CE1 + CE2 (means),
 *     0.5 (sum KL + sum rKL) / 2                       1         1      0.5 alpha
 *   ViT: alpha (sum KL + sum rKL), no 1/2              1         1      2 alpha
 * where alpha is the reference's own coefficient. With a task mask
 * (regopt_batch.task_mask), unlabelled rows take the consistency term
 * only: semi-supervised R-Drop.
 *
 */
enum regopt_rdrop_key {
    REGOPT_RDROP_ALPHA = 1100,      /* "rdrop.alpha": weight of the consistency term,
                                       [0, 1e4], default 1 (paper: 0.3 ViT .. 5 MT) */
    REGOPT_RDROP_CE_WEIGHT = 1101,  /* "rdrop.ce_weight": weight of each pass's task
                                       loss, [0, 1e3], default 1 (paper, Eq. 3);
                                       0.5 = the R-Drop README's (CE1 + CE2)/2 */
    REGOPT_RDROP_KL_SUM = 1102,     /* "rdrop.kl_sum": int 0/1, default 0 = the
                                       consistency term is a weighted mean over
                                       rows like the task loss (the paper's Eq. 3
                                       and fairseq, which divides by the token
                                       count); 1 = summed over rows (the R-Drop
                                       README snippet, Hugging Face bert_kl, ViT;
                                       see the table above; data parallel: each
                                       replica's sum, averaged over replicas by
                                       row weight like every term) */
    REGOPT_RDROP_EVERY = 1103,      /* "rdrop.every": int [1, 2^31], default 1: R-Drop
                                       on steps 0, k, 2k, ..., a single plain pass
                                       otherwise */
    REGOPT_RDROP_DOUBLED = 1104,    /* "rdrop.doubled": int 0/1, default 1: when the
                                       model declares REGOPT_CAP_DOUBLED_BATCH, run
                                       both passes as one forward over 2n rows */

    /* Statistics (read-only). On the handle since 1.0 (0.x: trainer
     * statistics 915..918, "stat.rdrop_*"). */
    REGOPT_STAT_RDROP_LOSS1 = 1190,       /* "rdrop.loss1": task loss of pass 1 */
    REGOPT_STAT_RDROP_LOSS2 = 1191,       /* "rdrop.loss2": task loss of pass 2 */
    REGOPT_STAT_RDROP_CONSISTENCY = 1192, /* "rdrop.consistency": the consistency
                                             term before alpha: mean (or sum) of
                                             (KL(P1||P2) + KL(P2||P1))/2, or of the
                                             squared difference for MSE */
    REGOPT_STAT_RDROP_APPLIED = 1193      /* "rdrop.applied": 1 if the last step ran
                                             R-Drop, 0 for a plain step */
};

/* ------------------------------------------------------------------------ */
/* SMART (REGOPT_REG_SMART and REGOPT_REG_BREGMAN, loss side)               */
/* ------------------------------------------------------------------------ */

/*
 * SMART (Jiang et al. 2020, Eq. 1-3): min L(w) + lambda_s R_s(w) +
 * mu D_Breg(w, w~), as two regularizers that may be used together or alone.
 *
 *
 * REGOPT_REG_SMART, the smoothness-inducing adversarial term R_s, needs
 * regopt_model_set_input_width(d): the host adds pass->input_perturbation
 * (input_rows x d floats; batch.input_rows, default rows) to its input
 * embeddings, and in backward writes d(loss)/d(embeddings) to pass->d_input
 * when it is not NULL. Per micro-batch, after the clean forward z = f(x):
 *   1. nu ~ N(0, sigma^2), drawn from the library's generator;
 *   2. K times: forward(f(x + nu)), then backward flagged NO_PARAM_GRAD
 *      (the host must leave parameter gradients alone and only fill d_input)
 *      with d(l_s(f(x + nu), sg(z)))/d(outputs) -> g = d/d nu; per embedding
 *      row, g^ = g / ||g||_p (0 where g = 0), and
 *        paper mode:  nu <- projection onto {||nu||_p <= epsilon} of nu + eta g^
 *        mt-dnn mode: d = nu + eta g, nu <- d / (||d||_p + epsilon)
 *   3. R_s = l_s(f(x + nu), f(x)), weighted mean over rows, with gradients
 *      into BOTH passes: a final forward(f(x + nu)) and its backward with
 *      parameter gradients.
 * l_s is the symmetric KL, KL(P||Q) + KL(Q||P) (not halved), for
 * classification; the squared error mean_k (a_k - b_k)^2 for MSE; the
 * ascent may use mt-dnn's stable KL instead (smart.stable_kl).
 * Callbacks per micro-batch: forward(slot 0) [clean], then K x (forward(slot
 * s), backward(slot s, NO_PARAM_GRAD)), forward(slot s), backward(slot s),
 * backward(slot 0), where s = 1 (2 with two-call R-Drop): K + 2 forwards.
 * In either mode, a NaN or infinity in the ascent -- the inner loss of an
 * ascent forward's outputs, the d_input of an ascent backward, the
 * perturbation after an update (mt-dnn's nu + eta g can overflow) -- or a
 * non-finite R_s fails the step with REGOPT_ERR_NONFINITE_LOSS and a message
 * naming the pass and micro-batch; the step is rolled back like any failure.
 *
 * Matching namisan/mt-dnn (and archinetai/smart-pytorch) step for step:
 * smart.mtdnn 1, smart.stable_kl 1, smart.detach_target 1, smart.same_seed 0
 * (they draw fresh dropout), smart.norm INF. Reductions differ: their inner
 * (ascent) loss is SUMMED over rows (stable_kl with reduce=False) while ours
 * is the weighted mean, so their ascent gradient is W times ours (W = the
 * step's total row weight, the rows of the batch for unit weights): in the
 * mt-dnn mode (d = nu + eta g, not normalised first) set smart.eta = their
 * step_size x W. (The paper mode normalises g and does not care.) Their
 * outer loss (SymKlCriterion, reduction "batchmean") is the mean over rows,
 * like ours; smart-pytorch's sym_kl_loss SUMS the outer loss
 * (reduction="sum"): smart.lambda = its weight x W.
 *
 * ALUM (Liu et al. 2020, "Adversarial Training for Large Neural Language
 * Models") is SMART's mt-dnn mode with these values (a documented preset,
 * not a key): smart.mtdnn 1, smart.epsilon 1e-5, smart.eta 1e-3,
 * smart.sigma 1e-5, smart.steps 1, smart.norm INF, smart.lambda 10 for
 * pre-training and 1 for fine-tuning; add smart.stable_kl 1,
 * smart.detach_target 1 and smart.same_seed 0 for the mt-dnn code's exact
 * gradients.
 *
 */
enum regopt_smart_key {
    REGOPT_SMART_LAMBDA = 1200,     /* "smart.lambda": lambda_s, [0, 1e4], default 1
                                       (paper: 1, 3, 5) */
    REGOPT_SMART_EPSILON = 1201,    /* "smart.epsilon": radius of the p-ball (paper
                                       mode) or the normaliser's epsilon (mt-dnn
                                       mode), (0, 1e3], default 1e-5 */
    REGOPT_SMART_SIGMA = 1202,      /* "smart.sigma": std of the initial noise,
                                       [0, 1e3], default 1e-5 */
    REGOPT_SMART_ETA = 1203,        /* "smart.eta": ascent step, [0, 1e3], default 1e-3 */
    REGOPT_SMART_STEPS = 1204,      /* "smart.steps": K ascent steps, int [1, 100],
                                       default 1 */
    REGOPT_SMART_NORM = 1205,       /* "smart.norm": per-row norm of the gradient
                                       normalisation and the projection:
                                       REGOPT_SMART_NORM_INF (default), _L1, _L2 */
    REGOPT_SMART_MTDNN = 1206,      /* "smart.mtdnn": int 0/1, default 0 = the paper's
                                       projected ascent; 1 = namisan/mt-dnn's unit
                                       normalisation without projection */
    REGOPT_SMART_STABLE_KL = 1207,  /* "smart.stable_kl": int 0/1, default 0; 1 = the
                                       ascent's inner loss is mt-dnn's log-odds
                                       "stable KL" (classification only) */
    REGOPT_SMART_SAME_SEED = 1208,  /* "smart.same_seed": int 0/1, default 1: the
                                       adversarial passes reuse the clean pass's
                                       dropout seed (the perturbation is then the
                                       only difference); 0 = fresh seeds (mt-dnn) */
    REGOPT_SMART_DETACH_TARGET = 1209, /* "smart.detach_target": int 0/1, default 0
                                       = R_s's symmetric KL has its full gradient
                                       (Eq. 2: nothing detached); 1 = the target
                                       side of each direction is detached, as in
                                       mt-dnn's SymKlCriterion and smart-pytorch's
                                       sym_kl_loss: R_s = KL(sg(P)||Q) +
                                       KL(sg(Q)||P), same value, gradient Q - P
                                       into the adversarial logits and P - Q into
                                       the clean ones (per row, times lambda_s and
                                       the row weight). Classification only (MSE
                                       keeps the squared error). Since 1.0. */

    /* Statistics (read-only). On the handle since 1.0 (0.x: trainer
     * statistics 919..920, "stat.smart_*"). */
    REGOPT_STAT_SMART_RS = 1240,        /* "smart.rs": R_s, the adversarial term
                                           before lambda */
    REGOPT_STAT_SMART_NOISE_NORM = 1241 /* "smart.noise_norm": mean over all
                                           embedding rows (padding included) of
                                           ||nu||_p after the ascent */
};

/* Values of REGOPT_SMART_NORM. */
#define REGOPT_SMART_NORM_INF 0
#define REGOPT_SMART_NORM_L1 1
#define REGOPT_SMART_NORM_L2 2

/*
 * REGOPT_REG_BREGMAN, the momentum Bregman proximal point term:
 * D_Breg = weighted mean over rows of l_s(f(x; w), sg(f(x; w~))), where the
 * teacher w~ is an exponential moving average of the parameters, set to w at
 * the first step and updated after every optimizer update:
 *   w~ <- beta w~ + (1 - beta) w   (beta, then beta_late after bregman.switch
 *                                  of optimizer.total_steps).
 * Once per step, before any other pass, the library swaps the teacher's
 * weights into the host's buffers in place (no extra copy of the model),
 * runs one forward per micro-batch flagged TEACHER | NO_GRAD (dropout off)
 * into slot 0, and swaps the student weights back bit-exactly; the teacher's
 * outputs are kept for the step. +1 forward per micro-batch. A NaN or
 * infinite weight found in that swap fails the step with
 * REGOPT_ERR_NONFINITE_GRADIENT (the EMA would carry it into the teacher);
 * the EMA of finite weights is always finite.
 *
 * The switch to beta_late happens at step bregman.switch_step when it is set
 * (>= 0), otherwise after bregman.switch * optimizer.total_steps steps, and
 * never when total_steps is 0: read "bregman.beta_used" to see which beta
 * the last step applied.
 *
 * With R-Drop, the SMART and Bregman terms apply to the first of R-Drop's
 * passes. With SAM, both of SAM's gradient evaluations include them (the
 * teacher's outputs are computed once per step).
 */
enum regopt_bregman_key {
    REGOPT_BREGMAN_MU = 1250,       /* "bregman.mu": mu, [0, 1e4], default 1 */
    REGOPT_BREGMAN_BETA = 1251,     /* "bregman.beta": EMA momentum early on, [0, 1),
                                       default 0.99 (0 = vanilla proximal point) */
    REGOPT_BREGMAN_BETA_LATE = 1252, /* "bregman.beta_late": EMA momentum after the
                                       switch, [0, 1), default 0.999 */
    REGOPT_BREGMAN_SWITCH = 1253,   /* "bregman.switch": fraction of
                                       optimizer.total_steps after which beta_late
                                       applies, [0, 1], default 0.1 (total_steps 0:
                                       beta throughout) */
    REGOPT_BREGMAN_SWITCH_STEP = 1254, /* "bregman.switch_step": int [-1, 2^31],
                                       default -1 = use bregman.switch; >= 0: the
                                       step count from which beta_late applies,
                                       independent of optimizer.total_steps.
                                       Since 1.0. */
    /* MESA's divergence and window (Du et al., NeurIPS 2022). Since 1.0. */
    REGOPT_BREGMAN_DIVERGENCE = 1255, /* "bregman.divergence": int,
                                       REGOPT_BREGMAN_SYM_KL (0, default: l_s as
                                       above) or REGOPT_BREGMAN_KL_TEACHER (1:
                                       tau^2 KL(softmax(q/tau) || softmax(z/tau)),
                                       q the teacher's outputs, z the student's;
                                       sum over classes, weighted mean over rows;
                                       gradient mu tau (softmax(z/tau) -
                                       softmax(q/tau)) per row). Classification
                                       losses only: with the MSE loss a step is
                                       REGOPT_ERR_STATE */
    REGOPT_BREGMAN_TAU = 1256,      /* "bregman.tau": temperature of divergence 1,
                                       (0, 1e3], default 1 (MESA: 5) */
    REGOPT_BREGMAN_START_STEP = 1257, /* "bregman.start_step": int [0, 2^31],
                                       default 0: the term applies to the steps
                                       whose step count (stat.step before the
                                       step) is >= start_step. MESA's "epoch >
                                       start" with E steps per epoch is
                                       (start + 1) E */
    REGOPT_BREGMAN_END_STEP = 1258, /* "bregman.end_step": int [-1, 2^31], default
                                       -1 = never: the term applies to steps whose
                                       count is < end_step (MESA's "epoch < end":
                                       end E) */

    /* Statistics (read-only). On the handle since 1.0 (0.x: trainer
     * statistics 921..922, "stat.bregman_*"). */
    REGOPT_STAT_BREGMAN_D = 1290,   /* "bregman.d": D_Breg before mu */
    REGOPT_STAT_BREGMAN_BETA = 1291 /* "bregman.beta_used": beta of the EMA update
                                       made by the last step */
};

/* Values of REGOPT_BREGMAN_DIVERGENCE. Since 1.0. */
#define REGOPT_BREGMAN_SYM_KL 0
#define REGOPT_BREGMAN_KL_TEACHER 1

/*
 * MESA (Du et al., "Sharpness-Aware Training for Free", NeurIPS 2022;
 * AngusDujw/SAF MESA_train.py) is this term with another divergence: one
 * no-grad teacher forward per micro-batch instead of SAM's second gradient
 * evaluation (about 1.3x a plain step instead of 2x). The preset:
 *   bregman.mu 0.3 (0.8 in the official ImageNet script), bregman.divergence
 *   REGOPT_BREGMAN_KL_TEACHER, bregman.tau 5, bregman.beta 0.9998 and
 *   bregman.beta_late 0.9998 (one decay throughout), bregman.start_step and
 *   bregman.end_step from the official epochs 5 and 360 (see above).
 * Differences from the official code: its EMA also averages batch-norm
 * buffers (here the host's running statistics serve the teacher's forward,
 * flagged TEACHER | NO_GRAD, eval mode); the teacher's forward runs outside
 * the window too (user terms with a teacher pass read it); only the term
 * is switched off.
 * The teacher is an average of the weights like REGOPT_REG_AVERAGE's EMA,
 * by the same recurrence (w~ <- beta w~ + (1 - beta) w in double, rounded
 * to float once, src/reg/ema.c): with one decay
 * throughout, the teacher holds bit for bit what an EMA average with that
 * decay and no warm-up, attached at the same time, would hold.
 * regopt_regularizer_swap_average and regopt_regularizer_recalibrate take a
 * Bregman handle too, so the teacher's buffer is the EMA's: evaluating
 * MESA's EMA needs no second copy of the weights. An EMA average attached
 * beside the teacher with no warm-up, average.every 1 and average.decay
 * equal to both betas holds the teacher's buffer instead of its own once
 * the two are equal after an update (attached together, or loaded from one
 * checkpoint): one EMA pass, 4 bytes per parameter less, the same bits. When
 * a decay or the average's mode changes, the teacher is detached or a
 * checkpoint is loaded, the average takes a copy of its own back before the
 * next update (a step, or a checkpoint load, can then fail with
 * REGOPT_ERR_NO_MEMORY, changing nothing).
 */

/* ------------------------------------------------------------------------ */
/* Weight averaging (REGOPT_REG_AVERAGE)                                    */
/* ------------------------------------------------------------------------ */

/*
 * REGOPT_REG_AVERAGE keeps an average w_bar of the trainable weights, updated
 * after the optimizer's update of every counted step (on the trainer's
 * threads, element by element: the same bits for every trainer.threads).
 * It adds no pass and no term; a trainer holds at most one. The steps
 * counted are those whose step count t (stat.step before the step) has
 * t >= average.start and (t - average.start) % average.every == 0; n is the
 * number of updates averaged so far (average.count).
 *
 *   EMA (average.mode REGOPT_AVERAGE_EMA): w_bar starts as the weights
 *     before the first counted update (timm's ModelEma copy at creation, as
 *     in MESA); then w_bar <- b_n w_bar + (1 - b_n) w, in double rounded to
 *     float, with
 *       warmup NONE:  b_n = decay
 *       warmup TF:    b_n = min(decay, (1 + n) / (10 + n))  (TensorFlow's
 *                     ExponentialMovingAverage with num_updates)
 *       warmup TIMM:  b_0 = 0; b_n = clamp(1 - (1 + n / gamma)^(-power),
 *                     min_decay, decay) (timm's ModelEmaV3)
 *       warmup FIRST: b_0 = 0; b_n = decay (torch.optim.swa_utils'
 *                     get_ema_multi_avg_fn: the first update copies w).
 *   SWA (average.mode REGOPT_AVERAGE_SWA; Izmailov et al., UAI 2018, Alg. 1):
 *     the first counted update copies w, then w_bar <- w_bar + (w - w_bar) /
 *     (n + 1) in double rounded to float (the running mean of the counted
 *     weights; torch's AveragedModel). SWA's learning rate schedule is the
 *     optimizer's business.
 *
 * The average is of finite weights only (an update never writes a
 * non-finite weight), and is finite itself. A failed step leaves it (and n)
 * exactly as before. Checkpoints carry w_bar and n in the regularizer's
 * section: training resumed from one continues the average bit for bit.
 * Detach forgets the average; attaching again starts over.
 *
 * Evaluation: regopt_regularizer_swap_average puts w_bar into the host's
 * buffers (and the weights into the average's), regopt_trainer_evaluate or
 * the host's own code evaluates, and a second swap_average puts everything
 * back bit for bit. While swapped, regopt_trainer_step, checkpoint save and
 * load are refused (REGOPT_ERR_STATE, the message says to swap back);
 * regopt_trainer_evaluate and regopt_trainer_flatness work on w_bar.
 * Detaching (or freeing the trainer) while swapped swaps back first.
 *
 * Batch norm: the running statistics the host keeps belong to w, not w_bar.
 * regopt_regularizer_recalibrate(reg, batches, count), while swapped, runs
 * one forward per batch flagged TRAIN | NO_GRAD | RECALIBRATE, micro_batch
 * 0 .. count-1, dropout seeds from trainer.seed as a step's task passes,
 * slot 0, outputs discarded: the host resets its running statistics at
 * micro_batch 0 and averages each batch's statistics with equal weight
 * (torch.optim.swa_utils.update_bn: reset_running_stats, momentum None,
 * train mode, no_grad). Hosts that train on after swapping back should save
 * their running statistics before recalibrating and restore them after
 * (python/regopt/torch.py's evaluation context does). Hosts without batch
 * norm need not recalibrate.
 */
enum regopt_average_key {
    REGOPT_AVERAGE_MODE = 1400,     /* "average.mode": int, REGOPT_AVERAGE_EMA (0,
                                       default) or REGOPT_AVERAGE_SWA (1) */
    REGOPT_AVERAGE_DECAY = 1401,    /* "average.decay": the EMA's decay, [0, 1),
                                       default 0.9998 (timm's train.py and MESA;
                                       torch swa_utils 0.999, timm's classes
                                       0.9999) */
    REGOPT_AVERAGE_WARMUP = 1402,   /* "average.warmup": int, REGOPT_AVERAGE_WARMUP_*,
                                       default NONE (0) */
    REGOPT_AVERAGE_WARMUP_GAMMA = 1403, /* "average.warmup_gamma": timm's gamma,
                                       (0, 1e9], default 1 */
    REGOPT_AVERAGE_WARMUP_POWER = 1404, /* "average.warmup_power": timm's power,
                                       (0, 10], default 2/3 */
    REGOPT_AVERAGE_MIN_DECAY = 1405, /* "average.min_decay": timm's floor of b_n,
                                       [0, 1), default 0 */
    REGOPT_AVERAGE_START = 1406,    /* "average.start": int [0, 2^31], default 0:
                                       the first step counted (SWA's s0) */
    REGOPT_AVERAGE_EVERY = 1407,    /* "average.every": int [1, 2^31], default 1:
                                       count every c-th step from the start (SWA's
                                       cycle) */

    /* Statistics (read-only). */
    REGOPT_STAT_AVERAGE_COUNT = 1490, /* "average.count": n, the updates averaged */
    REGOPT_STAT_AVERAGE_DECAY = 1491  /* "average.decay_used": the weight the last
                                         step kept of the old average (b_n; SWA
                                         n / (n + 1); 1 when the step was not
                                         counted) */
};

/* Values of REGOPT_AVERAGE_MODE and REGOPT_AVERAGE_WARMUP. Since 1.0. */
#define REGOPT_AVERAGE_EMA 0
#define REGOPT_AVERAGE_SWA 1
#define REGOPT_AVERAGE_WARMUP_NONE 0
#define REGOPT_AVERAGE_WARMUP_TF 1
#define REGOPT_AVERAGE_WARMUP_TIMM 2
#define REGOPT_AVERAGE_WARMUP_FIRST 3

/* Exchange the averaged weights and the host's, element by element (no
 * copy, no allocation; twice restores both bit for bit). Takes an average
 * handle or a Bregman handle (its EMA teacher), attached to a trainer whose
 * call is not under way. Errors (nothing changed): NULL,
 * REGOPT_ERR_NULL_POINTER; a dead handle or one of a kind that keeps no
 * average, REGOPT_ERR_INVALID_ARGUMENT; not attached, no update
 * averaged yet, or another handle of the trainer swapped, REGOPT_ERR_STATE;
 * the reason in regopt_regularizer_message(). Since 1.0. */
REGOPT_API REGOPT_NODISCARD regopt_status
regopt_regularizer_swap_average(regopt_regularizer *reg);

/* 1 while reg's averaged weights are swapped in, 0 otherwise (and for NULL
 * or a handle of another type). Since 1.0. */
REGOPT_API int regopt_regularizer_average_swapped(const regopt_regularizer *reg);

/* Batch-norm recalibration for the averaged weights (see above): one
 * forward per batch, flagged TRAIN | NO_GRAD | RECALIBRATE. Only while reg
 * is swapped in (REGOPT_ERR_STATE otherwise); batches as for a step (labels
 * and targets are not read); count >= 1. A failed forward stops the call:
 * the weights stay swapped in, the host's statistics are whatever its
 * forwards left. The trainer is busy meanwhile, as for a step. Since 1.0. */
REGOPT_API REGOPT_NODISCARD regopt_status
regopt_regularizer_recalibrate(regopt_regularizer *reg, const regopt_batch *batches,
                               size_t count);

/* ------------------------------------------------------------------------ */
/* Adversarial training (REGOPT_REG_ADVERSARIAL, loss side)                 */
/* ------------------------------------------------------------------------ */

/*
 * Since 1.0. REGOPT_REG_ADVERSARIAL ("adv") trains against a perturbation r
 * of the host's input embeddings e, on SMART's machinery: the model needs
 * regopt_model_set_input_width(d); forward adds pass->input_perturbation to
 * the embeddings, backward writes d(loss)/d(embeddings) to pass->d_input when
 * it is not NULL (flagged NO_PARAM_GRAD: d_input only). One engine, four
 * methods (adv.method), whose facets can be overridden one by one (every
 * facet key's -1 means "as adv.method says"):
 *
 *   facet        FGM        PGD        FreeLB       VAT
 *   objective    task       task       task         KL(sg(P)||P_adv)
 *   init         zero       zero       uniform      random direction
 *   clean pass   yes        yes        no           yes
 *   param grad   no         no         yes (1/K)    no
 *   update       r = eps g^ r <- P(r + a g^) as PGD  r = (xi, last: eps) g^
 *   passes (F+B) 2          K + 1      K            K + 2
 *
 * with g the gradient of the objective with respect to r, g^ = g / ||g||
 * over a norm unit (adv.scope: per embedding row, per example -- the
 * input_rows / rows embedding rows of one output row --, or per micro-batch),
 * a = adv.step, eps = adv.epsilon, P the projection onto {||r|| <= eps}
 * (eps 0: none), ||.|| the L2 norm or the L-inf norm (adv.norm).
 *
 *  - FGM (Miyato et al., ICLR 2017; official adversarial_text: eps 5.0 per
 *    example): g is the clean backward's d_input (no extra ascent pass: the
 *    clean backward of micro-batch slot 0 gets a d_input buffer);
 *    r = eps g / ||g|| (0 where g = 0); L = L(e) + alpha L(e + r).
 *    Callbacks: forward(0), backward(0, d_input), forward(s, e + r),
 *    backward(s). The community snippet's "embedding table" mode (one r per
 *    token id) is not offered: it needs token ids the library does not see.
 *  - PGD (Madry et al. 2018; NLP snippet K 3, a 0.3, eps 1): r_0 = 0, g_0
 *    from the clean backward, r_{k+1} = P(r_k + a g_k / ||g_k||), K - 1
 *    ascent passes flagged NO_PARAM_GRAD, then L(e) + alpha L(e + r_K).
 *  - FreeLB (Zhu et al., ICLR 2020; zhuchen03/FreeLB run_glue_freelb.py):
 *    no separate clean pass: the task pass itself runs at e + delta_0 with
 *    delta_0 = U(-1, 1) init_mag / sqrt(elements of the unit) (L2) or
 *    U(-init_mag, init_mag) (L-inf); init_mag 0: delta_0 = 0 and no
 *    perturbation is passed. For t = 1..K: forward/backward at
 *    e + delta_{t-1} adding (1/K) of the parameter gradient, d_input from
 *    the same backward; if t < K, delta <- delta + a g / max(||g||, 1e-8)
 *    (L2) or a g / max(||g||_inf, 1e-8) (L-inf), then rescaled into the
 *    eps ball (L2) or clamped to +-eps (L-inf), eps 0 = unbounded (the
 *    code's max_norm 0). The task loss is the mean of the K passes' (1/K
 *    each); adv.alpha does not apply. Dropout: adv.same_seed 1 reuses the
 *    clean seed in every pass -- fairseq's choice ("same masks
 *    everywhere"); the ALBERT code reuses only the attention and classifier
 *    masks. With K = 1 and init_mag 0 FreeLB is plain training. The GLUE
 *    scripts use K 2-4, a 0.03-0.2, init_mag 0-0.6, max_norm 0 (QQP 0.7).
 *    The first pass is copy 0 of the task: with R-Drop, use two calls
 *    (rdrop.doubled 0); R-Drop's second copy stays clean.
 *  - VAT (Miyato et al., TPAMI 2018; official vat_tf): d ~ N(0, I)
 *    normalised per unit as d / (1e-12 + max|d|) / sqrt(1e-6 + sum d^2);
 *    K power iterations (default 1): r = xi d (xi = adv.init_mag), g =
 *    d/dr KL(sg(P(e)) || P(e + r)) (forward and backward NO_PARAM_GRAD),
 *    d = normalised g; then r_adv = eps d and L = L_task + alpha
 *    KL(sg(P(e)) || P(e + r_adv)), a weighted mean over rows that INCLUDES
 *    unlabelled rows (regopt_batch.task_mask 0): VAT trains semi-supervised.
 *    Official values: xi 1e-6, eps 8.0 (image; README runs 2.5-10), alpha 1;
 *    adversarial_text: xi 0.1, eps 5.0; the lyakaap port: xi 10, eps 1.
 *    Hosts keep batch-norm statistics still in passes with an
 *    input_perturbation, as the paper's code does.
 *
 * Objectives (adv.objective): the task loss of the perturbed pass (labelled
 * rows only; its gradient at e + r); KL(sg(P) || P_adv) with the clean side
 * detached (gradient P_adv - P into the adversarial logits); or the
 * symmetric KL(P||P_adv) + KL(P_adv||P), not halved, with gradients into
 * both passes (SMART's R_s). For MSE the two KL objectives are the squared
 * error mean_k (a_k - z_k)^2, detached or not. The KL objectives are weighted
 * means over every kept row, labelled or not; the task objective over
 * labelled rows; all divide by the step's total row weight, like the task
 * loss. With a KL objective the clean outputs are needed: adv.clean_pass 0
 * then fails the step (REGOPT_ERR_STATE); adv.clean_pass 0 also needs
 * adv.param_grad 1 (the passes at e + delta are the only ones that train).
 * adv.init (zero, Gaussian N(0, init_mag^2) per element, FreeLB's uniform,
 * VAT's random direction of length init_mag) applies wherever the first
 * direction is not the clean backward's: with init zero and the task
 * objective, FGM and PGD take g_0 from the clean backward.
 *
 * The first direction of FGM and PGD is the clean backward's d_input, i.e.
 * the gradient of the whole objective of the first task pass -- the task
 * loss alone unless R-Drop, SMART, Bregman or a user term add to it.
 * A NaN or infinity in any adversarial pass (outputs, inner loss, d_input,
 * perturbation) fails the step with REGOPT_ERR_NONFINITE_LOSS and a message
 * naming the pass; it is never skipped. Slots: the adversarial passes use a
 * slot of their own, the next after R-Drop's and SMART's (1 alone, 3 with
 * both in two-call mode). With SAM, both gradient evaluations include the
 * term; with gradient accumulation and data parallel, every micro-batch
 * (replica) perturbs its own embeddings, and the norm units never span
 * micro-batches. No state is kept between steps (the draws are functions of
 * the trainer seed and the step count), so checkpoints hold only the
 * options.
 */
enum regopt_adv_key {
    REGOPT_ADV_METHOD = 1500,     /* "adv.method": int, REGOPT_ADV_FGM (0, default),
                                     _PGD (1), _FREELB (2), _VAT (3) */
    REGOPT_ADV_ALPHA = 1501,      /* "adv.alpha": weight of the adversarial term,
                                     [0, 1e4], default 1 (FreeLB: unused) */
    REGOPT_ADV_EPSILON = 1502,    /* "adv.epsilon": FGM's step, PGD's radius,
                                     FreeLB's max_norm (0: unbounded), VAT's eps;
                                     [0, 1e4], default 1 */
    REGOPT_ADV_STEP = 1503,       /* "adv.step": ascent step a of PGD and FreeLB,
                                     [0, 1e4], default 0.3 */
    REGOPT_ADV_STEPS = 1504,      /* "adv.steps": K, int [1, 100], default 1: PGD's
                                     ascent steps, FreeLB's passes, VAT's power
                                     iterations (FGM: 1 whatever it says) */
    REGOPT_ADV_INIT_MAG = 1505,   /* "adv.init_mag": size of the initial
                                     perturbation: the Gaussian's sigma, FreeLB's
                                     init_mag, VAT's xi; [-1, 1e4], default -1 =
                                     the method's: 1e-6 for VAT, 0 otherwise */
    REGOPT_ADV_NORM = 1506,       /* "adv.norm": REGOPT_ADV_NORM_L2 (0, default)
                                     or REGOPT_ADV_NORM_INF (1) */
    REGOPT_ADV_SCOPE = 1507,      /* "adv.scope": int [-1, 2], default -1 = per
                                     example; REGOPT_ADV_SCOPE_ROW (0),
                                     _EXAMPLE (1: needs input_rows a multiple of
                                     rows), _BATCH (2: the micro-batch) */
    REGOPT_ADV_OBJECTIVE = 1508,  /* "adv.objective": int [-1, 2], default -1 = the
                                     method's; REGOPT_ADV_OBJ_TASK (0), _KL (1:
                                     KL(sg(P)||P_adv)), _SYM_KL (2) */
    REGOPT_ADV_INIT = 1509,       /* "adv.init": int [-1, 3], default -1 = the
                                     method's; REGOPT_ADV_INIT_ZERO (0),
                                     _GAUSSIAN (1), _UNIFORM (2: FreeLB's),
                                     _DIRECTION (3: VAT's) */
    REGOPT_ADV_PARAM_GRAD = 1510, /* "adv.param_grad": int [-1, 1], default -1 = the
                                     method's (FreeLB 1); 1: every ascent pass
                                     adds alpha/K of its parameter gradient
                                     (FreeLB's 1/K accumulation) and there is no
                                     final pass */
    REGOPT_ADV_CLEAN_PASS = 1511, /* "adv.clean_pass": int [-1, 1], default -1 = the
                                     method's (FreeLB 0); 0: the task pass is the
                                     first pass at e + delta_0 */
    REGOPT_ADV_SAME_SEED = 1512,  /* "adv.same_seed": int 0/1, default 1: the
                                     adversarial passes reuse the clean pass's
                                     dropout seed; 0 = a fresh seed per step */

    /* Statistics (read-only). */
    REGOPT_STAT_ADV_LOSS = 1590,  /* "adv.loss": the adversarial term before alpha
                                     (FreeLB: the mean task loss of its K passes) */
    REGOPT_STAT_ADV_NORM = 1591   /* "adv.norm_used": mean over norm units of
                                     ||r|| of the last perturbation */
};

/* Values of REGOPT_ADV_METHOD, _NORM, _SCOPE, _OBJECTIVE and _INIT. */
#define REGOPT_ADV_FGM 0
#define REGOPT_ADV_PGD 1
#define REGOPT_ADV_FREELB 2
#define REGOPT_ADV_VAT 3
#define REGOPT_ADV_NORM_L2 0
#define REGOPT_ADV_NORM_INF 1
#define REGOPT_ADV_SCOPE_ROW 0
#define REGOPT_ADV_SCOPE_EXAMPLE 1
#define REGOPT_ADV_SCOPE_BATCH 2
#define REGOPT_ADV_OBJ_TASK 0
#define REGOPT_ADV_OBJ_KL 1
#define REGOPT_ADV_OBJ_SYM_KL 2
#define REGOPT_ADV_INIT_ZERO 0
#define REGOPT_ADV_INIT_GAUSSIAN 1
#define REGOPT_ADV_INIT_UNIFORM 2
#define REGOPT_ADV_INIT_DIRECTION 3

/* ------------------------------------------------------------------------ */
/* User-defined loss-side terms (REGOPT_REG_TERM)                           */
/* ------------------------------------------------------------------------ */

/*
 * Since 1.0. A host can add a loss-side term of its own that composes with
 * everything else: SAM evaluates it at w and w + eps, micro-batches
 * accumulate it, data parallel averages it, a failed step rolls it back,
 * checkpoints carry its state. The library runs the passes the term
 * declares and hands it their outputs; the term returns its value and the
 * gradient of that value with respect to each pass's outputs.
 *
 * Per view (a micro-batch, or a chunk of sam.m_rows rows), after the task
 * pass(es) in slot 0 (and R-Drop's second copy):
 *   1. forward of each declared pass p = 1 .. passes, in slot s_p, with the
 *      clean pass's flags (TRAIN; PERTURBED_WEIGHTS inside SAM's second
 *      evaluation), and with its pass flags:
 *        REGOPT_TERM_PASS_FRESH_SEED  a dropout seed of its own, drawn like
 *                                     R-Drop's second copy (the k-th fresh
 *                                     copy of a step gets stream k; R-Drop's
 *                                     copy, when attached, is copy 0);
 *                                     otherwise the clean pass's seed
 *        REGOPT_TERM_PASS_EVAL        dropout off (the TRAIN flag cleared)
 *        REGOPT_TERM_PASS_NO_GRAD     no backward will follow (a detached
 *                                     target; the pass is flagged NO_GRAD)
 *   2. the built-in terms, then value(view, &value, user): outputs[0] are
 *      the clean outputs (R-Drop's first copy), outputs[p] those of pass p;
 *      d_outputs[p] are zeroed buffers of the same shape where the term
 *      writes d value / d outputs[p] (NULL for NO_GRAD passes);
 *   3. the library adds term.weight * value to the objective and
 *      term.weight * d_outputs[0] to the clean pass's output gradient;
 *   4. backward of the clean pass(es), then of each pass p with gradient
 *      term.weight * d_outputs[p], in slot order.
 * Slots: s_p = the next free slots after R-Drop's second copy and SMART's
 * (the model must declare them: regopt_model_set_slots); a teacher pass
 * (REGOPT_TERM_PASS_TEACHER) runs no forward and takes no slot.
 *
 * value must be a weighted mean like the task loss to scale like it across
 * micro-batches and replicas: view->inv_weight is 1 / sum_i m_i w_i over the
 * whole step (all micro-batches), and view->batch the view's rows (labels,
 * targets, mask and weights already shifted), so
 *   value = inv_weight * sum_i m_i w_i c_i   (c_i the term of row i).
 * Callbacks run on the calling thread, from inside regopt_trainer_step, and
 * must not call into the trainer. A non-zero return or a non-finite value
 * aborts the step (REGOPT_ERR_LOSS_CALLBACK / REGOPT_ERR_NONFINITE_LOSS,
 * rolled back as any failure).
 *
 * State. A term with state across steps (an EMA, a counter) gives
 * state_size/save_state/load_state (all three or none): checkpoints carry
 * the bytes in the term's "reg.N" section. A save may call state_size and
 * save_state more than once (it measures before it writes), and they must
 * give the same bytes each time; save_state returning non-zero fails the
 * save with REGOPT_ERR_IO. A size query (regopt_trainer_checkpoint_size,
 * the size bound of a load) calls state_size only. load_state is called only after the whole
 * checkpoint has been validated (with REGOPT_CHECKPOINT_OPTIONS, after the
 * options were applied: they are put back if it refuses), before the
 * library changes any state of its own, and must either take the state
 * whole or return non-zero and keep its old one (the load then fails with
 * REGOPT_ERR_CORRUPT and nothing has changed). The library cannot undo a
 * load_state that succeeded: with two terms that keep state, if the second
 * refuses, the first keeps what it took. State bytes in a checkpoint for a
 * term without load_state are REGOPT_ERR_MISMATCH.
 * committed(step) is called after every successful update (step = the new
 * step count).
 */
#define REGOPT_TERM_MAX_PASSES 8 /* Since 1.0. */

/* Flags of one declared pass (regopt_term_ops.pass_flags). Since 1.0. */
#define REGOPT_TERM_PASS_FRESH_SEED 0x1u
#define REGOPT_TERM_PASS_EVAL 0x2u
#define REGOPT_TERM_PASS_NO_GRAD 0x4u
/* A teacher pass: outputs[p] are the EMA teacher's outputs for the view's
 * rows, as the Bregman regularizer computes them once per step (its weights
 * swapped in, flags TEACHER | NO_GRAD); no forward runs for this pass and
 * no gradient flows into it (d_outputs[p] is NULL). A Bregman regularizer
 * must be attached (bregman.mu may be 0: the teacher without its term);
 * otherwise the step fails with REGOPT_ERR_STATE. Takes no other flag.
 * Since 1.0. */
#define REGOPT_TERM_PASS_TEACHER 0x8u

/* What one call of a term's value function is about. The library fills it;
 * fields are only ever appended (size = sizeof as the library was built).
 * Since 1.0. */
typedef struct regopt_term_view {
    size_t size;
    const regopt_batch *batch;   /* the view's rows; batch->data is the host's */
    size_t micro_batch;          /* index of the micro-batch within the step */
    size_t row_offset;           /* first row of the view within the batch */
    size_t rows;                 /* rows of the view */
    size_t output_width;         /* floats per output row */
    uint32_t flags;              /* the clean pass's REGOPT_PASS_* flags */
    uint32_t n_outputs;          /* 1 + the declared passes */
    uint64_t step;               /* completed steps before this one */
    double inv_weight;           /* 1 / sum_i m_i w_i of the whole step */
    const float *const *outputs; /* n_outputs arrays of rows * output_width */
    float *const *d_outputs;     /* n_outputs zeroed arrays (NULL: NO_GRAD pass) */
} regopt_term_view;

/* Compute the term of one view: write its value to *value and d value /
 * d outputs[p] into view->d_outputs[p]. Return 0, anything else aborts.
 * Since 1.0. */
typedef int (*regopt_term_fn)(const regopt_term_view *view, double *value, void *user);

/* The definition of a user term, copied at creation. size = sizeof
 * (regopt_term_ops); fields are only ever appended (a size that does not
 * reach state_size is REGOPT_ERR_INVALID_ARGUMENT). Since 1.0. */
typedef struct regopt_term_ops {
    size_t size;
    const char *name;        /* shown in messages and kept in checkpoints:
                                1 .. 23 bytes of [A-Za-z0-9_.-], copied */
    uint32_t passes;         /* extra forwards per view, 0 .. REGOPT_TERM_MAX_PASSES */
    uint32_t pass_flags[REGOPT_TERM_MAX_PASSES]; /* REGOPT_TERM_PASS_* per pass */
    regopt_term_fn value;    /* required */
    /* optional state; all three or none */
    size_t (*state_size)(void *user);
    int (*save_state)(void *buffer, size_t size, void *user);
    int (*load_state)(const void *buffer, size_t size, void *user);
    /* optional: after each successful update */
    void (*committed)(uint64_t step, void *user);
} regopt_term_ops;

/* A user-defined term. ops is copied; user is passed to every callback and
 * free_user (may be NULL) is called with it when the regularizer is freed.
 * A bad name, pass count or pass flag, or state callbacks that are not all
 * three or none: REGOPT_ERR_INVALID_ARGUMENT; no value callback:
 * REGOPT_ERR_NULL_POINTER. If this call fails, free_user is not called.
 * Since 1.0. */
REGOPT_API regopt_regularizer *regopt_regularizer_create_term(const regopt_term_ops *ops,
                                                              void *user,
                                                              regopt_free_fn free_user,
                                                              const regopt_allocator *allocator,
                                                              regopt_status *status);

/* Struct sizes for bindings. Since 1.0. */
REGOPT_API size_t regopt_sizeof_term_ops(void);
REGOPT_API size_t regopt_sizeof_term_view(void);

/* A user term's keys. Since 1.0. */
enum regopt_term_key {
    REGOPT_TERM_WEIGHT = 1300,    /* "term.weight": the term's coefficient,
                                     [0, 1e4], default 1 */
    REGOPT_STAT_TERM_VALUE = 1390 /* "term.value": the term's value (before
                                     term.weight) in the last step, at w */
};

/* ------------------------------------------------------------------------ */
/* Checkpoints                                                              */
/* ------------------------------------------------------------------------ */

/*
 * A checkpoint holds the whole training state of a trainer, so that training
 * resumed from it continues bit for bit as if it had never stopped:
 *
 *   - the step count (which is also the schedule position, the sam.every /
 *     rdrop.every phase and the GSAM rho position),
 *   - the optimizer moments (SGD's momentum buffer and whether it is primed;
 *     Adam's first and second moments and AMSGrad's maximum; RAdam's moments),
 *   - the RNG state: trainer.seed (every dropout and SMART noise draw is a
 *     function of the seed and the step count, so nothing else is needed),
 *   - the trainer's statistics of the last step,
 *   - the required features: the regularizer kinds attached, so that a
 *     reader that does not know one refuses the checkpoint by name instead
 *     of silently training without it (since 1.0),
 *   - per attached regularizer, in step order: its kind, its name (a user
 *     term's own), its statistics and its state: the Bregman teacher's EMA
 *     weights and the beta in force, the weight average and its count, a
 *     user term's bytes (save_state), the
 *     state of SAM's sam.direction (FriendlySAM's m, VaSSO's d) and
 *     LookSAM's g_v when it holds them; plain SAM, R-Drop and SMART keep
 *     nothing across steps (their buffers are per step), so the step count
 *     covers them,
 *   - with REGOPT_CHECKPOINT_OPTIONS, every option of the optimizer (those
 *     of its kind), the trainer and each attached regularizer, per-group ones
 *     included; not trainer.seed (saved as state above), not trainer.threads
 *     (the machine's business, not the run's), not callbacks,
 *   - with REGOPT_CHECKPOINT_PARAMS, the values of every registered tensor
 *     (frozen ones too).
 * Gradient accumulation and clipping are within a step: between steps there
 * is no state to save. Callbacks, the all-reduce hook and allocator are the
 * host's and are not saved.
 *
 * Loading needs a trainer built the same way: the same parameter tensors
 * (names, element counts, groups, trainable or frozen, in registration
 * order), the same optimizer kind and state size (optimizer.amsgrad when the
 * trainer was created), and the same regularizers attached: the same kinds,
 * and user terms with the same names, attached in the same order among
 * themselves (the built-in methods' attach order does not matter: the step
 * orders them). It validates the whole checkpoint before it changes
 * anything; on any failure the trainer, its optimizer, its regularizers and
 * the host's parameters are untouched (but see "State" in the user-terms
 * section for two terms that keep state) and the status says why:
 *   REGOPT_ERR_CORRUPT     wrong magic, wrong size or truncated, a CRC that
 *                          does not match, a malformed or missing section,
 *                          a user term's load_state that refused its bytes;
 *   REGOPT_ERR_UNSUPPORTED a format this library does not read -- format 1,
 *                          written by libregopt 0.x (the message says so:
 *                          resume with 0.x or restart), or a newer one -- or
 *                          a required feature this library does not know
 *                          (the message names it);
 *   REGOPT_ERR_MISMATCH    a different model layout, optimizer kind or set of
 *                          regularizers, state for a user term without
 *                          load_state, or parameters/options asked for but
 *                          not saved;
 *   REGOPT_ERR_OUT_OF_RANGE an option value this library refuses;
 *   REGOPT_ERR_STATE       an option the trainer cannot take now (a loss
 *                          callback that is not set);
 *   REGOPT_ERR_IO          the file or the read callback failed;
 *   REGOPT_ERR_NO_MEMORY, REGOPT_ERR_NULL_POINTER, REGOPT_ERR_INVALID_ARGUMENT
 *                          as everywhere.
 * Values are checked too, not only CRCs: a step count beyond 2^53, a
 * non-finite moment or teacher weight, or a negative second moment is
 * REGOPT_ERR_CORRUPT (a CRC proves the bytes are what was written, not that
 * the writer wrote sense). Whatever this library saves, it loads: steps
 * never leave such values in the state (see regopt_trainer_step, "Non-finite
 * values"), so only a damaged or forged file fails these checks. Saved
 * weights (REGOPT_CHECKPOINT_PARAMS) are the host's and are not checked.
 * Options (with REGOPT_CHECKPOINT_OPTIONS) are applied through the usual
 * setters once everything else has been validated, and put back if one of
 * them or a regularizer's state is refused. Keys of the optimizer or the
 * trainer that this library does not know (a newer writer) are skipped; an
 * unknown key of a regularizer is REGOPT_ERR_CORRUPT.
 *
 * Format: little-endian, a header and a table of named sections, each under
 * a CRC-32; a reader skips sections it does not know. The byte layout of
 * format 2 (since 1.0) and how format 1 is told apart are described in
 * docs/checkpoint-format.md. Anything save writes, load accepts.
 */

/* Flags of save and load (or-ed; other bits: REGOPT_ERR_INVALID_ARGUMENT). */
enum {
    REGOPT_CHECKPOINT_PARAMS = 1u, /* save: include the host's tensors;
                                      load: copy them into the host's buffers */
    REGOPT_CHECKPOINT_OPTIONS = 2u /* save: include every option;
                                      load: apply them */
};

/* Write callback: take `size` bytes. Returns 0 on success; anything else
 * aborts the save (REGOPT_ERR_IO). Called with chunks of at most 64 KiB. */
typedef int (*regopt_write_fn)(const void *data, size_t size, void *user);
/* Read callback: fill `data` with exactly the next `size` bytes. Returns 0
 * on success, anything else (including end of data) aborts the load. */
typedef int (*regopt_read_fn)(void *data, size_t size, void *user);

/* The exact size in bytes of the checkpoint regopt_trainer_save* would write
 * now with these flags. */
REGOPT_API regopt_status regopt_trainer_checkpoint_size(const regopt_trainer *trainer,
                                                        uint32_t flags, size_t *size);

/* Save through a write callback (in order, no seeking). */
REGOPT_API REGOPT_NODISCARD regopt_status
regopt_trainer_save(const regopt_trainer *trainer, uint32_t flags, regopt_write_fn write,
                    void *user);

/* Save into buffer[0 .. capacity). *written (may be NULL) receives the
 * checkpoint's size, also when the buffer is too small (then
 * REGOPT_ERR_INVALID_ARGUMENT and nothing written). */
REGOPT_API REGOPT_NODISCARD regopt_status
regopt_trainer_save_buffer(const regopt_trainer *trainer, uint32_t flags, void *buffer,
                           size_t capacity, size_t *written);

/* Save to a file, atomically: the checkpoint is written to a temporary file
 * in the same directory, flushed and fsync'ed, then renamed over `path` and
 * the directory is fsync'ed. A failure or a crash at any point leaves the
 * previous file under `path` (if any) intact and no temporary file behind
 * (a crash may leave one, named path.tmp.PID.N). A new file gets mode 0666
 * less the umask; a replaced one keeps its permission bits. When `path` is
 * a symbolic link, the file it points to is replaced, not the link. POSIX
 * only. */
REGOPT_API REGOPT_NODISCARD regopt_status
regopt_trainer_save_file(const regopt_trainer *trainer, uint32_t flags, const char *path);

/* Load through a read callback. The library reads the 32-byte header, then
 * the rest in one call. A checkpoint larger than twice what this trainer
 * would write with every flag, plus 1 MiB, is refused as damaged (so a
 * damaged size field cannot make the library allocate without bound). */
REGOPT_API REGOPT_NODISCARD regopt_status
regopt_trainer_load(regopt_trainer *trainer, uint32_t flags, regopt_read_fn read,
                    void *user);

/* Load from memory (the buffer is only read, during the call). */
REGOPT_API REGOPT_NODISCARD regopt_status
regopt_trainer_load_buffer(regopt_trainer *trainer, uint32_t flags, const void *buffer,
                           size_t size);

/* Load from a file (the same size limit as regopt_trainer_load, checked
 * against the file's size; a path that is not a regular file is
 * REGOPT_ERR_IO, a file that ends early REGOPT_ERR_CORRUPT). */
REGOPT_API REGOPT_NODISCARD regopt_status
regopt_trainer_load_file(regopt_trainer *trainer, uint32_t flags, const char *path);

#ifdef __cplusplus
}
#endif

#endif /* REGOPT_H */
