/* host_mlp.h — the benchmark's host network: a multi-layer perceptron on
 * CBLAS (ReLU and inverted dropout after every hidden layer, as
 * torch.nn.Linear + F.relu + F.dropout), with everything a host needs to
 * serve every method: activation slots, R-Drop's doubled batch, SMART's
 * input perturbation and d(input). It also measures itself: the time spent
 * inside its callbacks and the floating-point operations they made, so the
 * benchmark can split a step into host time and library time. */
#ifndef BENCH_HOST_MLP_H
#define BENCH_HOST_MLP_H

#include <regopt.h>

#include <stddef.h>
#include <stdint.h>

#define HOST_MAX_LAYERS 8
#define HOST_SLOTS 3 /* two-call R-Drop with SMART needs slots 0, 1, 2 */

typedef struct host_mlp {
    size_t layers;                    /* weight matrices */
    size_t size[HOST_MAX_LAYERS + 1]; /* widths, input first */
    size_t max_rows;                  /* largest batch (a doubled pass: twice) */
    float drop;                       /* dropout probability of hidden units */
    float *w[HOST_MAX_LAYERS], *b[HOST_MAX_LAYERS];   /* w: in x out, row-major */
    float *gw[HOST_MAX_LAYERS], *gb[HOST_MAX_LAYERS];
    /* per slot: hidden activations after ReLU and dropout; a unit is > 0
       exactly where the ReLU passed and dropout kept it, so no mask is kept */
    float *act[HOST_SLOTS][HOST_MAX_LAYERS];
    const float *in[HOST_SLOTS];      /* the input of the slot's forward */
    float *xcopy[HOST_SLOTS];         /* perturbed input */
    size_t shared[HOST_SLOTS];        /* doubled pass: the n rows both halves
                                         share in the first layer; 0 if not */
    float *mask;                      /* scratch: dropout uniforms */
    float *d0, *d1;                   /* scratch: d(activations), ping-pong */
    float *ones;                      /* 2 max_rows ones: bias gradients by sgemv */
    float *tr0, *tr1;                 /* scratch: transposed d(outputs), d(inputs) */
    int fast;                         /* the AVX-512 products are usable here */
    int swap_teacher;                 /* set before host_mlp_register: do not
                                         declare REGOPT_CAP_PASS_WEIGHTS (the
                                         library swaps a teacher's weights in) */
    /* self-measurement */
    double cb_seconds;                /* time inside forward and backward */
    double flops;                     /* multiply-adds x 2 of the matrix products */
} host_mlp;

/* widths[0..layers]; He-initialised weights from the library's generator. */
int host_mlp_init(host_mlp *h, const size_t *widths, size_t layers, size_t max_rows,
                  float drop, uint64_t seed);
void host_mlp_free(host_mlp *h);
size_t host_mlp_params(const host_mlp *h);

/* Register tensors (biases in group 1), widths, slots, the doubled-batch
 * capability and the callbacks. The batch's data pointer is the input rows
 * (float, rows x size[0]). */
regopt_status host_mlp_register(host_mlp *h, regopt_model *model);

/* The callbacks themselves, for hosts that drive the network directly. */
int host_mlp_forward(const regopt_pass *p, void *user);
int host_mlp_backward(const regopt_pass *p, void *user);

double host_now(void); /* monotonic seconds */

#endif
