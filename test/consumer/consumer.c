/* consumer.c — a program outside the library's tree: fits y = 2x + 1 with
 * AdamW through the installed (or subproject) libregopt, and checks the fit
 * and the version it was compiled and linked against. */
#include <regopt.h>

#include <math.h>
#include <stdio.h>

typedef struct line {
    float w, b, gw, gb;
    const float *x;
} line;

static int forward(const regopt_pass *p, void *user)
{
    line *l = user;
    size_t i;
    l->x = p->batch;
    for (i = 0; i < p->rows; i++)
        p->outputs[i] = l->w * l->x[i] + l->b;
    return 0;
}

static int backward(const regopt_pass *p, void *user)
{
    line *l = user;
    size_t i;
    for (i = 0; i < p->rows; i++) {
        l->gw += p->d_outputs[i] * l->x[i];
        l->gb += p->d_outputs[i];
    }
    return 0;
}

int main(void)
{
    static const float x[4] = {-1.0f, 0.0f, 0.5f, 2.0f};
    float y[4];
    line l = {0.0f, 0.0f, 0.0f, 0.0f, NULL};
    regopt_model *m;
    regopt_optimizer *o;
    regopt_trainer *t;
    regopt_batch b;
    int i, ok = 1;

    if (regopt_version_number() / 10000 != REGOPT_VERSION_MAJOR) {
        fprintf(stderr, "consumer: header %s, library %s\n", REGOPT_VERSION_STRING,
                regopt_version_string());
        return 1;
    }
    for (i = 0; i < 4; i++)
        y[i] = 2.0f * x[i] + 1.0f;
    m = regopt_model_create(NULL, NULL);
    o = regopt_optimizer_create(REGOPT_ADAMW, NULL, NULL);
    if (!m || !o || regopt_model_add_param(m, "w", &l.w, &l.gw, 1, REGOPT_DTYPE_FLOAT32, 0) ||
        regopt_model_add_param(m, "b", &l.b, &l.gb, 1, REGOPT_DTYPE_FLOAT32, 0) ||
        regopt_model_set_output_width(m, 1) ||
        regopt_model_set_callbacks(m, forward, backward, &l, NULL) ||
        regopt_optimizer_set_double(o, REGOPT_OPT_LR, 0.05) ||
        regopt_optimizer_set_double(o, REGOPT_OPT_WEIGHT_DECAY, 0.0))
        return 1;
    t = regopt_trainer_create(m, o, NULL);
    if (!t || regopt_trainer_set_int(t, REGOPT_TRAINER_LOSS, REGOPT_LOSS_MSE))
        return 1;
    regopt_batch_init(&b);
    b.data = x;
    b.rows = 4;
    b.targets = y;
    for (i = 0; i < 400 && ok; i++)
        ok = regopt_trainer_step(t, &b, 1) == REGOPT_OK;
    if (!ok)
        fprintf(stderr, "consumer: %s\n", regopt_trainer_message(t));
    regopt_trainer_free(t);
    regopt_optimizer_free(o);
    regopt_model_free(m);
    if (!ok || fabsf(l.w - 2.0f) > 0.05f || fabsf(l.b - 1.0f) > 0.05f) {
        fprintf(stderr, "consumer: w = %g, b = %g\n", l.w, l.b);
        return 1;
    }
    printf("consumer (C, libregopt %s): w = %.3f, b = %.3f\n", regopt_version_string(), l.w,
           l.b);
    return 0;
}
