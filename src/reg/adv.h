/* adv.h — the adversarial regularizer's state and the perturbation's
 * geometry shared by adv.c (the passes) and adv_ascent.c (initialisation,
 * norms, updates, the KL of its objective). Included by those two only. */
#ifndef REGOPT_ADV_H
#define REGOPT_ADV_H

#include "reg/reg.h"

typedef struct adv {
    double alpha, epsilon, step, init_mag;
    int method, steps, norm, scope, objective, init, param_grad, clean_pass, same_seed;
    float *r, *g; /* perturbation and its gradient, cap_in embedding rows */
    size_t cap_in;
} adv;

/* The facets in force for a step (every -1 resolved by the method). */
typedef struct adv_cfg {
    int obj, init, scope, free, clean, K, shortcut;
    double mag, step;
} adv_cfg;

/* The perturbation of one view: `in` embedding rows of width d, normalised
 * in units of `unit` rows (1, an example's, or all) under `norm`. */
typedef struct ro_adv_geom {
    size_t d, in, unit;
    int norm; /* REGOPT_ADV_NORM_* */
} ro_adv_geom;

adv_cfg ro_adv_resolve(const adv *a);

/* adv_ascent.c */
/* r_0 for the configured initialisation, from the stream `seed`. */
void ro_adv_initial(float *r, const ro_adv_geom *g, const adv_cfg *c, uint64_t seed);
/* One update of r from its gradient g (finite), per unit: VAT's
 * r = (last ? eps : xi) g^, otherwise r <- P_eps(r + step g^). */
void ro_adv_update(float *r, const float *g, const ro_adv_geom *geo, const adv_cfg *c,
                   int method, double eps, int last);
/* The sum over units of ||r|| (the statistic). */
double ro_adv_norm_sum(const float *r, const ro_adv_geom *g);
/* The first of `rows` rows of width d holding a NaN or an infinity, or rows. */
size_t ro_adv_nonfinite_row(const float *x, size_t rows, size_t d);
/* KL(softmax(z) || softmax(a)) with z detached: returns it and ADDS
 * coef * (softmax(a) - softmax(z)) to da. */
double ro_adv_kl_row(const float *z, const float *a, size_t k, float coef, float *da);

#endif
