/* traffic.c — what a step of each method must cost, and what it costs:
 * the bytes per parameter (and per input element) the best fused
 * implementation moves, the library's measured time against that traffic
 * at the triad bandwidth of buffers of the model's size, the library's
 * own memory per parameter, and each method's step against a plain step.
 *
 * The traffic model (issue 25). Buffers are float32, AdamW is the base
 * optimizer, every fused pass reads and writes each buffer it needs once,
 * and what the contract asks for stays: the step's final gradient is in the
 * gradient buffers after it, weights come back bit for bit from a saved
 * copy (w + eps - eps is not w), a teacher is swapped into the host's
 * buffers (the host reads its weights from there). Per parameter:
 *   base (plain, R-Drop, FreeLB, VAT): zero the gradient (write 4), its
 *     norm before clipping (read 4), the update (read w g m v, write w m v:
 *     28) = 36;
 *   SAM: + the ascent norm (4), perturb saving w (read w g, write w and the
 *     copy: 16), zero again (4), with the restore read by the update from
 *     the copy = 60; ASAM's norm also reads w: 64;
 *   Momentum-SAM: the norm of the first moment (4), perturb along it (16),
 *     the update from the copy: 36 + 20 = 56;
 *   LookSAM (k = 5): its SAM step also keeps the clean gradient (write 4)
 *     and stores g_v in the update's pass (read the clean one, write g_v:
 *     8): 76; the four steps between read g_v in their norm and update
 *     passes and write the reused gradient (12): 48; mean 53.6;
 *   FriendlySAM: the state's EMA with the ascent norm (read g s, write s:
 *     12), perturb reads the state too (20): 72; VaSSO: the state is the
 *     direction (12 + 16): 68;
 *   WSAM (decoupled): SAM keeping the clean gradient (64), clipping's norm
 *     of g (4), the base step and the raw step in one pass (read w g g_p m v,
 *     write w m v: 32 + 12 = 44 instead of 28 + 4): 80;
 *   teacher (SMART's Bregman term, MESA): its EMA in the update's pass
 *     (read and write the teacher: 8); the host reads the teacher's
 *     buffers through pass->weights (REGOPT_CAP_PASS_WEIGHTS, the bench
 *     host does). A host that cannot (mesa_swap) has it swapped in saving w
 *     (16) and w put back by copy (8): 32; an EMA of the weights: 8.
 * Per input element (the adversarial methods' perturbation of the batch's
 * embeddings): SMART and VAT, one ascent: the noise (write 4), the
 * gradient's norm (read 4), the step (read d_input and delta, write delta:
 * 12) = 20; FreeLB K = 3: 4 + 3 x 16 = 52. */
#define _POSIX_C_SOURCE 200112L
#include "bench.h"

#include <stdio.h>

typedef struct traffic_model {
    double per_param, per_input;
} traffic_model;

#define TEACHER 8.0
#define TEACHER_SWAPPED 32.0
#define BASE 36.0

static const traffic_model model_of[M_COUNT] = {
    [M_PLAIN] = {BASE, 0},
    [M_SAM] = {60, 0},
    [M_ASAM] = {64, 0},
    [M_RDROP2] = {BASE, 0},
    [M_RDROP] = {BASE, 0},
    [M_SMART] = {BASE + TEACHER, 20},
    [M_SMART_SAM] = {60 + TEACHER, 20},
    [M_MSAM] = {56, 0},
    [M_LOOKSAM] = {53.6, 0},
    [M_FSAM] = {72, 0},
    [M_VASSO] = {68, 0},
    [M_WSAM] = {80, 0},
    [M_MESA] = {BASE + TEACHER, 0},
    [M_EMA] = {BASE + 8, 0},
    [M_FREELB] = {BASE, 52},
    [M_VAT] = {BASE, 20},
    [M_MESA_SWAP] = {BASE + TEACHER_SWAPPED, 0},
};

void traffic_report(const char *size, int method, size_t params, size_t inputs,
                    double library_ms, double triad_gbs)
{
    const traffic_model *t = &model_of[method];
    double bytes = t->per_param * (double)params + t->per_input * (double)inputs;
    double bound_ms = bytes / (triad_gbs * 1e9) * 1e3;
    printf("# traffic %-6s %-14s %5.1f B/param %4.0f B/input  bound %7.3f ms  library "
           "%7.3f ms  = %.2f x\n", size, method_name[method], t->per_param, t->per_input,
           bound_ms, library_ms, library_ms / bound_ms);
    printf("RATIO kind=traffic size=%s method=%s bytes_per_param=%.1f bytes_per_input=%.0f "
           "params=%zu inputs=%zu triad_gbs=%.3f bound_ms=%.4f library_ms=%.4f value=%.4f\n",
           size, method_name[method], t->per_param, t->per_input, params, inputs, triad_gbs,
           bound_ms, library_ms, library_ms / bound_ms);
}

void memory_report(const char *size, int method, size_t params, size_t bytes)
{
    printf("# memory  %-6s %-14s %10zu bytes  = %6.2f B/param\n", size, method_name[method],
           bytes, (double)bytes / (double)params);
    printf("BENCH kind=memory size=%s method=%s params=%zu library_bytes=%zu "
           "bytes_per_param=%.3f\n", size, method_name[method], params, bytes,
           (double)bytes / (double)params);
}

void cost_report(const char *size, int method, double step_ms, double plain_ms)
{
    printf("# cost    %-6s %-14s %9.3f ms  = %.2f x plain\n", size, method_name[method],
           step_ms, step_ms / plain_ms);
    printf("RATIO kind=cost size=%s method=%s step_ms=%.4f plain_ms=%.4f value=%.4f\n", size,
           method_name[method], step_ms, plain_ms, step_ms / plain_ms);
}
