/* dispatch_hash.c — hashes of every kernel that has wider x86 paths, on
 * awkward lengths, for test/check_dispatch.sh: built once with run-time
 * dispatch and once with -DRO_NO_DISPATCH, the two outputs must be equal
 * line for line (the library promises the same bits on every path).
 * Linked with the library's sources, so it calls internal kernels. */
#include "optim/optim.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    size_t i;
    for (i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}

#define H0 14695981039346656037ull

static const size_t lengths[] = {0, 1, 3, 4, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65,
                                 100, 127, 128, 129, 1000, 4095, 4096, 4097, 65537};
#define N_LENGTHS (sizeof lengths / sizeof lengths[0])
#define MAX_N 65537

static float *vec(uint64_t seed, float scale)
{
    float *x = malloc((MAX_N + 8) * sizeof *x); /* + 8: shifted views */
    size_t i;
    if (!x || regopt_random_normal(seed, 0, x, MAX_N + 8) != REGOPT_OK) {
        fprintf(stderr, "dispatch_hash: setup failed\n");
        exit(1);
    }
    for (i = 0; i < MAX_N + 8; i++)
        x[i] *= scale;
    return x;
}

static void sums(const float *w, const float *g)
{
    size_t k;
    for (k = 0; k < N_LENGTHS; k++) {
        size_t n = lengths[k];
        double s[5];
        s[0] = ro_sum_squares(g, n);
        s[1] = ro_sum_squares(g + 1, n ? n - 1 : 0); /* unaligned */
        s[2] = ro_sum_scaled_squares(w, g, n, 0.0f, 0.01f, 1);
        s[3] = ro_sum_scaled_squares(w, g, n, 0.1f, 0.0f, 1);
        s[4] = ro_sum_scaled_squares(w, g, n, 0.1f, 0.0f, 0);
        printf("sum n=%zu %016llx\n", n, (unsigned long long)fnv(H0, s, sizeof s));
    }
}

/* kind: 0 Adam, 1 AdamW, 2 RAdam, 3 SGD momentum, 4 SGD nesterov; three
 * steps with varying gradients, from step 1 (bias corrections vary). */
static void updates(const float *w0, const float *g)
{
    static const char *names[] = {"adam", "adamw", "radam", "sgd", "nesterov", "adam_tiny_bc"};
    float *w = malloc(MAX_N * sizeof *w), *st = calloc(2 * MAX_N, sizeof *st);
    size_t k;
    int kind, step;
    regopt_status status;
    regopt_optimizer *o;
    for (kind = 0; kind < 6; kind++) {
        o = regopt_optimizer_create(kind == 1 ? REGOPT_ADAMW
                                    : kind == 2 ? REGOPT_RADAM
                                    : kind >= 3 && kind <= 4 ? REGOPT_SGD
                                                             : REGOPT_ADAM,
                                    NULL, &status);
        if (!o || !w || !st)
            exit(1);
        if (kind == 5) /* bc2 under 2^-40: the FMA paths must step aside */
            regopt_optimizer_set_double(o, REGOPT_OPT_BETA2, 0.9999999);
        for (k = 0; k < N_LENGTHS; k++) {
            size_t n = lengths[k];
            uint64_t h = H0;
            memcpy(w, w0, MAX_N * sizeof *w);
            memset(st, 0, 2 * MAX_N * sizeof *st);
            for (step = 1; step <= 3; step++) {
                ro_update u;
                memset(&u, 0, sizeof u);
                u.lr = 1e-2f;
                u.wd = 1e-2f;
                u.grad_scale = step == 2 ? 0.5f : 1.0f;
                u.momentum = 0.9f;
                u.one_minus_dampening = 1.0f;
                u.nesterov = kind == 4;
                u.first = step == 1;
                if (kind >= 3 && kind <= 4) {
                    ro_sgd_update(&u, w, g + step, st, n);
                    continue;
                }
                ro_adam_scalars(&u, o, (uint64_t)step, 1e-2);
                if (kind == 2)
                    ro_radam_update(&u, w, g + step, st, st + MAX_N, n);
                else
                    ro_adam_update(&u, w, g + step, st, st + MAX_N, NULL, n, kind == 1);
            }
            h = fnv(h, w, n * sizeof *w);
            h = fnv(h, st, n * sizeof *st);
            h = fnv(h, st + MAX_N, n * sizeof *st);
            printf("%s n=%zu %016llx\n", names[kind], n, (unsigned long long)h);
        }
        regopt_optimizer_free(o);
    }
    free(w);
    free(st);
}

/* The random streams: Philox words, uniforms and normals at odd offsets. */
static void streams(void)
{
    float *x = malloc(MAX_N * sizeof *x);
    size_t k;
    if (!x)
        exit(1);
    for (k = 0; k < N_LENGTHS; k++) {
        size_t n = lengths[k];
        uint64_t h = H0;
        if (regopt_random_uniform(7, 3 + k, x, n) != REGOPT_OK)
            exit(1);
        h = fnv(h, x, n * sizeof *x);
        if (regopt_random_normal(7, 5 + k, x, n) != REGOPT_OK)
            exit(1);
        h = fnv(h, x, n * sizeof *x);
        printf("random n=%zu %016llx\n", n, (unsigned long long)h);
    }
    free(x);
}

int main(void)
{
    float *w = vec(1, 1.0f), *g = vec(2, 1e-3f);
    sums(w, g);
    updates(w, g);
    streams();
    free(w);
    free(g);
    return 0;
}
