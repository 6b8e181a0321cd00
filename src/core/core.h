/* core.h — the core utilities every layer of libregopt may use: messages,
 * allocation, the key table, random numbers, CRC-32 and little-endian bytes,
 * the worker pool and the vector kernels. Includes only the public header
 * (src/README.md states the layers). Nothing here is exported: the public API is include/regopt.h only, and
 * internal names use the ro_ prefix so the linker script can never export
 * them by accident. */
#ifndef REGOPT_CORE_H
#define REGOPT_CORE_H

#include "regopt.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#define RO_MSG_SIZE 256
#define RO_MAX_REGS 32 /* regularizers attached to one trainer */
#define RO_MAX_THREADS 256 /* trainer.threads */

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

/* ---- crc32.c ----------------------------------------------------------- */

/* CRC-32 (IEEE 802.3, zlib's crc32): continue `crc` (0 to start) over n bytes. */
uint32_t ro_crc32(uint32_t crc, const void *data, size_t n);

/* ---- bytes.c: little-endian encoding, the checkpoint byte sink ---------- */

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
    int lost; /* a regularizer could not give its state (message written) */
    regopt_status lost_st; /* what lost returns: 0 means REGOPT_ERR_IO (a term's) */
    float *scratch; /* a save's host floats for what a backend reads (model/backend_io.c) */
    size_t scratch_n;
} ro_ck_sink;

void ro_ck_put(ro_ck_sink *s, const void *data, size_t n);
/* A size query (no write, no CRC): a section may count bytes it does not
 * produce (a user term's state, from its state_size). */
static inline int ro_ck_measuring(const ro_ck_sink *s) { return !s->write && !s->crc_on; }
static inline void ro_ck_skip(ro_ck_sink *s, size_t n) { s->size += n; }
/* Pass what is buffered to write (sets failed when it fails). */
void ro_ck_flush(ro_ck_sink *s);
void ro_ck_le32(unsigned char *p, uint32_t v);
void ro_ck_le64(unsigned char *p, uint64_t v);
void ro_ck_u32(ro_ck_sink *s, uint32_t v);
void ro_ck_u64(ro_ck_sink *s, uint64_t v);
void ro_ck_f64(ro_ck_sink *s, double v);
void ro_ck_floats(ro_ck_sink *s, const float *f, size_t n);
uint32_t ro_ck_rd32(const unsigned char *p);
uint64_t ro_ck_rd64(const unsigned char *p);
double ro_ck_rdf64(const unsigned char *p);
void ro_ck_rdfloats(float *dst, const unsigned char *src, size_t n);


/* ---- pool.c: worker threads -------------------------------------------- */

/* One piece of a job: part in [0, parts). */
typedef void (*ro_task_fn)(void *ctx, unsigned part, unsigned parts);
typedef struct ro_pool ro_pool;
ro_pool *ro_pool_create(const ro_alloc *a, unsigned parts);
void ro_pool_free(ro_pool *p);
/* Run fn on every part, part 0 on the calling thread; returns when all are
 * done. No allocation, no system call when the workers are spinning. */
void ro_pool_run(ro_pool *p, ro_task_fn fn, void *ctx);

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
/* The dot product of x and y in double, in the lanes of ro_sum_squares. */
double ro_dot(const float *x, const float *y, size_t n);
/* a <-> b, elementwise (distinct buffers); twice is the identity. */
void ro_exchange(float *a, float *b, size_t n);
void ro_zero(float *x, size_t n);

/* ---- half.c: fp16 / bf16 conversions (round to nearest even) ------------ */

uint16_t ro_f32_to_f16(float f);
float ro_f16_to_f32(uint16_t h);
uint16_t ro_f32_to_bf16(float f);
float ro_bf16_to_f32(uint16_t h);
/* dtype: REGOPT_DTYPE_FLOAT16 or REGOPT_DTYPE_BFLOAT16. */
void ro_half_from_f32(uint16_t *dst, const float *src, size_t n, int dtype);
void ro_half_to_f32(float *dst, const uint16_t *src, size_t n, int dtype);
/* g += h * inv (h in dtype, FLOAT32 too), h = 0; returns the count of
 * non-finite g. */
size_t ro_grad_flush(float *g, void *h, size_t n, int dtype, double inv);
/* x *= inv; returns the count of non-finite results. */
size_t ro_unscale(float *x, size_t n, double inv);
/* dst = src * s, each product rounded once from double. */
void ro_scale_copy(float *dst, const float *src, size_t n, double s);

#endif
