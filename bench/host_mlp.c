/* host_mlp.c — the benchmark's host network (see host_mlp.h). It does the
 * work torch does for the same model: per layer one matrix product with the
 * bias folded into its accumulator, ReLU and inverted dropout fused in one
 * pass, and in backward the two products per layer (the first layer's
 * d(input) only when SMART asks for it). */
#define _POSIX_C_SOURCE 200112L
#include "host_mlp.h"

#include <cblas.h>

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__GNUC__) && defined(__x86_64__) && !defined(HOST_NO_AVX512)
#define HOST_AVX512 1
#include <immintrin.h>
#else
#define HOST_AVX512 0
#endif

static int cpu_fast(void); /* AVX-512 present: the small products (below) */

double host_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float *falloc(size_t n) { return calloc(n ? n : 1, sizeof(float)); }

size_t host_mlp_params(const host_mlp *h)
{
    size_t l, n = 0;
    for (l = 0; l < h->layers; l++)
        n += h->size[l] * h->size[l + 1] + h->size[l + 1];
    return n;
}

int host_mlp_init(host_mlp *h, const size_t *widths, size_t layers, size_t max_rows,
                  float drop, uint64_t seed)
{
    size_t l, s, i, widest = 0;
    memset(h, 0, sizeof *h);
    if (layers < 1 || layers > HOST_MAX_LAYERS)
        return -1;
    h->layers = layers;
    h->max_rows = max_rows;
    h->drop = drop;
    for (l = 0; l <= layers; l++) {
        h->size[l] = widths[l];
        if (widths[l] > widest)
            widest = widths[l];
    }
    for (l = 0; l < layers; l++) {
        size_t in = h->size[l], out = h->size[l + 1];
        float scale = sqrtf(2.0f / (float)in);
        h->w[l] = falloc(in * out);
        h->b[l] = falloc(out);
        h->gw[l] = falloc(in * out);
        h->gb[l] = falloc(out);
        if (!h->w[l] || !h->b[l] || !h->gw[l] || !h->gb[l])
            return -1;
        if (regopt_random_normal(seed, (uint64_t)l << 36, h->w[l], in * out) != REGOPT_OK)
            return -1;
        for (i = 0; i < in * out; i++)
            h->w[l][i] *= scale;
        for (s = 0; s < HOST_SLOTS && l + 1 < layers; s++)
            if (!(h->act[s][l] = falloc(2 * max_rows * out)))
                return -1;
    }
    for (s = 0; s < HOST_SLOTS; s++)
        if (!(h->xcopy[s] = falloc(2 * max_rows * h->size[0])))
            return -1;
    h->mask = falloc(max_rows * widest);
    h->d0 = falloc(2 * max_rows * widest);
    h->d1 = falloc(2 * max_rows * widest);
    h->ones = falloc(2 * max_rows);
    h->tr0 = falloc(2 * max_rows * widest);
    h->tr1 = falloc(2 * max_rows * widest);
    if (!h->mask || !h->d0 || !h->d1 || !h->ones || !h->tr0 || !h->tr1)
        return -1;
    /* HOST_NO_AVX512 in the environment: the BLAS for every product (to
       compare the two paths on one machine) */
    h->fast = getenv("HOST_NO_AVX512") ? 0 : cpu_fast();
    for (i = 0; i < 2 * max_rows; i++)
        h->ones[i] = 1.0f;
    return 0;
}

void host_mlp_free(host_mlp *h)
{
    size_t l, s;
    for (l = 0; l < HOST_MAX_LAYERS; l++) {
        free(h->w[l]);
        free(h->b[l]);
        free(h->gw[l]);
        free(h->gb[l]);
        for (s = 0; s < HOST_SLOTS; s++)
            free(h->act[s][l]);
    }
    for (s = 0; s < HOST_SLOTS; s++)
        free(h->xcopy[s]);
    free(h->mask);
    free(h->d0);
    free(h->d1);
    free(h->ones);
    free(h->tr0);
    free(h->tr1);
    memset(h, 0, sizeof *h);
}

/* ---- small matrix products ---------------------------------------------
 * The small model's products (32 rows, 64-256 wide) are too small for the
 * BLAS to reach its rate: packing both operands and the call overhead take
 * much of the time (32x256 times 256x256: 45 us in OpenBLAS, 30 us here).
 * Where AVX-512 is there (checked at run time) and the shapes fit, the
 * host computes the forward products and, for batches of up to 32 rows,
 * d(hidden activations) directly: C (m x n) = A B or C += A B with B's
 * rows contiguous, A read through two strides, in tiles of 8 rows x 32
 * columns held in 16 registers. Measured here, the weight gradients (a sum
 * over the rows only) gain nothing and stay with the BLAS.
 * Larger products (B beyond SMALL_B_BYTES, out of L2 when re-read per row
 * tile) stay with the BLAS, as do shapes that are not whole tiles. The
 * results differ from the BLAS's only in rounding (another summation
 * order), as torch's own kernels do. */
#define SMALL_B_BYTES (512u * 1024u)

static int small_fits(const host_mlp *h, size_t m, size_t n, size_t k)
{
    return h->fast && m % 8 == 0 && n % 32 == 0 && k > 0 &&
           k * n * sizeof(float) <= SMALL_B_BYTES;
}

#if HOST_AVX512
#define TILE_ROW(r)                                                                        \
    do {                                                                                   \
        __m512 x_ = _mm512_set1_ps(ap[(r) * sai]);                                         \
        acc[2 * (r)] = _mm512_fmadd_ps(x_, b0, acc[2 * (r)]);                              \
        acc[2 * (r) + 1] = _mm512_fmadd_ps(x_, b1, acc[2 * (r) + 1]);                      \
    } while (0)

/* C(i, j) (+)= sum_p A(i, p) B(p, j), A(i, p) = a[i sai + p sak], B(p, j) =
 * b[p ldb + j]; m a multiple of 8, n of 32. */
__attribute__((target("avx512f"))) static void
small_gemm(size_t m, size_t n, size_t k, const float *a, size_t sai, size_t sak,
           const float *b, size_t ldb, int accumulate, float *c, size_t ldc)
{
    size_t i, j, p, r;
    for (i = 0; i < m; i += 8)
        for (j = 0; j < n; j += 32) {
            __m512 acc[16];
            for (r = 0; r < 8; r++) {
                float *cr = c + (i + r) * ldc + j;
                acc[2 * r] = accumulate ? _mm512_loadu_ps(cr) : _mm512_setzero_ps();
                acc[2 * r + 1] = accumulate ? _mm512_loadu_ps(cr + 16) : _mm512_setzero_ps();
            }
            for (p = 0; p < k; p++) {
                const float *bp = b + p * ldb + j, *ap = a + i * sai + p * sak;
                __m512 b0 = _mm512_loadu_ps(bp), b1 = _mm512_loadu_ps(bp + 16);
                TILE_ROW(0);
                TILE_ROW(1);
                TILE_ROW(2);
                TILE_ROW(3);
                TILE_ROW(4);
                TILE_ROW(5);
                TILE_ROW(6);
                TILE_ROW(7);
            }
            for (r = 0; r < 8; r++) {
                float *cr = c + (i + r) * ldc + j;
                _mm512_storeu_ps(cr, acc[2 * r]);
                _mm512_storeu_ps(cr + 16, acc[2 * r + 1]);
            }
        }
}
#undef TILE_ROW

static int cpu_fast(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
}
#else
static void small_gemm(size_t m, size_t n, size_t k, const float *a, size_t sai, size_t sak,
                       const float *b, size_t ldb, int accumulate, float *c, size_t ldc)
{
    (void)m, (void)n, (void)k, (void)a, (void)sai, (void)sak, (void)b, (void)ldb;
    (void)accumulate, (void)c, (void)ldc; /* never called: cpu_fast() is 0 */
}

static int cpu_fast(void) { return 0; }
#endif

/* dst (cols x rows) = src^T, src rows x cols */
static void transpose(float *restrict dst, const float *restrict src, size_t rows, size_t cols)
{
    size_t i, j;
    for (i = 0; i < rows; i++)
        for (j = 0; j < cols; j++)
            dst[j * rows + i] = src[i * cols + j];
}

/* GCC at -O2 vectorizes only loops whose trip count is a known multiple of
 * the vector width: the elementwise loops run over blocks of BLOCK floats
 * through block pointers, then a scalar tail. */
#define BLOCK 16

static void relu_block(float *restrict y)
{
    size_t j;
    for (j = 0; j < BLOCK; j++)
        y[j] = y[j] > 0.0f ? y[j] : 0.0f;
}

/* y = relu(y) * (u >= p ? 1/(1-p) : 0): torch's F.dropout(F.relu(y)) */
static void relu_dropout_block(float *restrict y, const float *restrict u, float p, float inv)
{
    size_t j;
    for (j = 0; j < BLOCK; j++) {
        float r = y[j] > 0.0f ? y[j] : 0.0f;
        y[j] = r * (u[j] >= p ? inv : 0.0f);
    }
}

/* d = d * inv where the unit was active (a > 0: the ReLU passed and
 * dropout kept it), 0 elsewhere */
static void mask_block(float *restrict d, const float *restrict a, float inv)
{
    size_t j;
    for (j = 0; j < BLOCK; j++) /* select, then scale: no branch */
        d[j] = (a[j] > 0.0f ? d[j] : 0.0f) * inv;
}

/* ReLU then inverted dropout, in place, over `n` rows drawn from `seed`.
 * Unit j of row r of layer l is element (l << 40) + r*out + j of the
 * stream, so a doubled pass draws exactly what two separate passes would. */
static int relu_dropout(host_mlp *h, float *y, size_t n, size_t out, size_t l,
                        size_t row0, uint64_t seed, int train)
{
    size_t j = 0, count = n * out;
    if (!train || h->drop <= 0.0f) {
        for (; j + BLOCK <= count; j += BLOCK)
            relu_block(y + j);
        for (; j < count; j++)
            y[j] = y[j] > 0.0f ? y[j] : 0.0f;
        return 0;
    }
    {
        const float p = h->drop, inv = 1.0f / (1.0f - p);
        const float *u = h->mask;
        if (regopt_random_uniform(seed, ((uint64_t)l << 40) + row0 * out, h->mask, count) !=
            REGOPT_OK)
            return -1;
        for (; j + BLOCK <= count; j += BLOCK)
            relu_dropout_block(y + j, u + j, p, inv);
        for (; j < count; j++)
            y[j] = (y[j] > 0.0f ? y[j] : 0.0f) * (u[j] >= p ? inv : 0.0f);
    }
    return 0;
}

static int forward(host_mlp *h, const regopt_pass *p)
{
    int s = p->slot, doubled = (p->flags & REGOPT_PASS_DOUBLED) != 0;
    int train = (p->flags & REGOPT_PASS_TRAIN) != 0;
    size_t rows = p->rows, n = doubled ? rows / 2 : rows, d0 = h->size[0], l, i, j;
    const float *x;
    /* a teacher pass may hand the weights to use: W_l and b_l are tensors
       2l and 2l + 1 in registration order */
    const float *const *pw = p->size > offsetof(regopt_pass, weights) ? p->weights : NULL;
    if (s < 0 || s >= HOST_SLOTS || n > h->max_rows || p->output_width != h->size[h->layers])
        return 1;
    x = (const float *)p->batch + p->row_offset * d0;
    /* R-Drop doubled: both halves are the same n rows and dropout comes after
       the first layer, so its product runs once over n rows and is copied;
       every later product runs once over 2n rows */
    h->shared[s] = doubled ? n : 0;
    if (p->input_perturbation) { /* SMART: the input rows are the embeddings */
        if (doubled || p->input_rows != n || p->input_width != d0)
            return 2;
        for (j = 0; j < n * d0; j++)
            h->xcopy[s][j] = x[j] + p->input_perturbation[j];
        x = h->xcopy[s];
    }
    h->in[s] = x;
    for (l = 0; l < h->layers; l++) {
        size_t in = h->size[l], out = h->size[l + 1], r = l == 0 && doubled ? n : rows;
        float *y = l + 1 < h->layers ? h->act[s][l] : p->outputs;
        const float *w = pw ? pw[2 * l] : h->w[l], *b = pw ? pw[2 * l + 1] : h->b[l];
        for (i = 0; i < r; i++)
            memcpy(y + i * out, b, out * sizeof(float));
        if (small_fits(h, r, out, in))
            small_gemm(r, out, in, x, in, 1, w, out, 1, y, out);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)r, (int)out, (int)in,
                        1.0f, x, (int)in, w, (int)out, 1.0f, y, (int)out);
        h->flops += 2.0 * (double)r * (double)in * (double)out;
        if (r < rows)
            memcpy(y + r * out, y, r * out * sizeof(float));
        if (l + 1 < h->layers) {
            if (relu_dropout(h, y, n, out, l, p->row_offset, p->seed, train) != 0)
                return 3;
            if (doubled &&
                relu_dropout(h, y + n * out, n, out, l, p->row_offset, p->seed2, train) != 0)
                return 3;
        }
        x = y;
    }
    return 0;
}

static void add_block(float *restrict s, const float *restrict a, const float *restrict b)
{
    size_t j;
    for (j = 0; j < BLOCK; j++)
        s[j] = a[j] + b[j];
}

/* Column sums of d (rows x out) added to g, the bias gradient, as one
 * matrix-vector product with a vector of ones. */
static void add_column_sums(const host_mlp *h, float *g, const float *d, size_t rows,
                            size_t out)
{
    cblas_sgemv(CblasRowMajor, CblasTrans, (int)rows, (int)out, 1.0f, d, (int)out, h->ones, 1,
                1.0f, g, 1);
}

static int backward(host_mlp *h, const regopt_pass *p)
{
    int s = p->slot, params = !(p->flags & REGOPT_PASS_NO_PARAM_GRAD);
    /* backward follows a training forward: kept units were scaled by inv */
    float inv = h->drop > 0.0f ? 1.0f / (1.0f - h->drop) : 1.0f;
    size_t rows = p->rows, l, j;
    const float *d = p->d_outputs;
    if (s < 0 || s >= HOST_SLOTS || rows > 2 * h->max_rows || !h->in[s])
        return 1;
    if (p->d_input && (p->input_rows != rows || p->input_width != h->size[0]))
        return 2;
    for (l = h->layers; l-- > 0;) {
        size_t in = h->size[l], out = h->size[l + 1];
        const float *a = l ? h->act[s][l - 1] : h->in[s];
        if (params && l == 0 && h->shared[s]) {
            /* both halves saw the same n input rows: gW0 += x^T (d1 + d2) */
            size_t n = h->shared[s];
            float *sum = d == h->d0 ? h->d1 : h->d0;
            for (j = 0; j + BLOCK <= n * out; j += BLOCK)
                add_block(sum + j, d + j, d + n * out + j);
            for (; j < n * out; j++)
                sum[j] = d[j] + d[n * out + j];
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)in, (int)out, (int)n,
                        1.0f, a, (int)in, sum, (int)out, 1.0f, h->gw[l], (int)out);
            h->flops += 2.0 * (double)n * (double)in * (double)out;
            add_column_sums(h, h->gb[l], sum, n, out);
        } else if (params) { /* gW += a^T d, gb += column sums of d */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)in, (int)out, (int)rows,
                        1.0f, a, (int)in, d, (int)out, 1.0f, h->gw[l], (int)out);
            h->flops += 2.0 * (double)rows * (double)in * (double)out;
            add_column_sums(h, h->gb[l], d, rows, out);
        }
        if (l > 0) { /* d(a) = d W^T, through dropout and ReLU */
            float *nd = d == h->d0 ? h->d1 : h->d0;
            if (rows <= 32 && small_fits(h, in, rows, out)) {
                /* d W^T has W^T's columns strided: compute its transpose
                   W d^T instead, whose right factor d^T is a small copy
                   (the two copies outweigh the gain beyond 32 rows) */
                transpose(h->tr0, d, rows, out);
                small_gemm(in, rows, out, h->w[l], out, 1, h->tr0, rows, 0, h->tr1, rows);
                transpose(nd, h->tr1, in, rows);
            } else {
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)in,
                            (int)out, 1.0f, d, (int)out, h->w[l], (int)out, 0.0f, nd, (int)in);
            }
            h->flops += 2.0 * (double)rows * (double)in * (double)out;
            for (j = 0; j + BLOCK <= rows * in; j += BLOCK)
                mask_block(nd + j, a + j, inv);
            for (; j < rows * in; j++)
                nd[j] = a[j] > 0.0f ? nd[j] * inv : 0.0f;
            d = nd;
        } else if (p->d_input) { /* SMART: d(loss)/d(input) = d W0^T */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)in, (int)out,
                        1.0f, d, (int)out, h->w[0], (int)out, 0.0f, p->d_input, (int)in);
            h->flops += 2.0 * (double)rows * (double)in * (double)out;
        }
    }
    return 0;
}

int host_mlp_forward(const regopt_pass *p, void *user)
{
    host_mlp *h = user;
    double t0 = host_now();
    int rc = forward(h, p);
    h->cb_seconds += host_now() - t0;
    return rc;
}

int host_mlp_backward(const regopt_pass *p, void *user)
{
    host_mlp *h = user;
    double t0 = host_now();
    int rc = backward(h, p);
    h->cb_seconds += host_now() - t0;
    return rc;
}

regopt_status host_mlp_register(host_mlp *h, regopt_model *model)
{
    regopt_status st = REGOPT_OK;
    size_t l;
    char name[16];
    for (l = 0; l < h->layers && st == REGOPT_OK; l++) {
        name[0] = 'w';
        name[1] = (char)('0' + l);
        name[2] = '\0';
        st = regopt_model_add_param(model, name, h->w[l], h->gw[l],
                                    h->size[l] * h->size[l + 1], REGOPT_DTYPE_FLOAT32, 0);
        name[0] = 'b';
        if (st == REGOPT_OK)
            st = regopt_model_add_param(model, name, h->b[l], h->gb[l], h->size[l + 1],
                                        REGOPT_DTYPE_FLOAT32, 1);
    }
    if (st == REGOPT_OK)
        st = regopt_model_set_output_width(model, h->size[h->layers]);
    if (st == REGOPT_OK)
        st = regopt_model_set_input_width(model, h->size[0]);
    if (st == REGOPT_OK)
        st = regopt_model_set_slots(model, HOST_SLOTS);
    if (st == REGOPT_OK)
        st = regopt_model_set_capabilities(
            model, REGOPT_CAP_DOUBLED_BATCH | (h->swap_teacher ? 0u : REGOPT_CAP_PASS_WEIGHTS));
    if (st == REGOPT_OK)
        st = regopt_model_set_callbacks(model, host_mlp_forward, host_mlp_backward, h, NULL);
    return st;
}
