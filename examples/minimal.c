/* minimal.c — the smallest complete libregopt program: a host "network"
 * y = w*x + b fitted by AdamW through the two callbacks. */
#include <regopt.h>
#include <stdio.h>

typedef struct { float w, b, gw, gb; const float *x; } host;

static int forward(const regopt_pass *p, void *user)
{
    host *h = user;
    size_t i;
    h->x = p->batch; /* regopt_batch.data: the host's own batch */
    for (i = 0; i < p->rows; i++)
        p->outputs[i] = h->w * h->x[i] + h->b;
    return 0;
}

static int backward(const regopt_pass *p, void *user)
{
    host *h = user; /* accumulate: the library zeroed gw, gb before the step */
    size_t i;
    for (i = 0; i < p->rows; i++) {
        h->gw += p->d_outputs[i] * h->x[i];
        h->gb += p->d_outputs[i];
    }
    return 0;
}

int main(void)
{
    float x[8], y[8];
    host h = {0, 0, 0, 0, NULL};
    regopt_batch batch;
    regopt_status st;
    int i;
    for (i = 0; i < 8; i++) {
        x[i] = (float)i / 4.0f;
        y[i] = 3.0f * x[i] - 1.0f;
    }
    regopt_model *model = regopt_model_create(NULL, &st);
    regopt_model_add_param(model, "w", &h.w, &h.gw, 1, REGOPT_DTYPE_FLOAT32, 0);
    regopt_model_add_param(model, "b", &h.b, &h.gb, 1, REGOPT_DTYPE_FLOAT32, 1);
    regopt_model_set_output_width(model, 1);
    regopt_model_set_callbacks(model, forward, backward, &h, NULL);

    regopt_optimizer *opt = regopt_optimizer_create(REGOPT_ADAMW, NULL, &st);
    regopt_optimizer_set_double(opt, REGOPT_OPT_LR, 0.05);
    regopt_optimizer_set_group(opt, 1, REGOPT_GROUP_WEIGHT_DECAY, 0.0); /* no decay on b */

    regopt_trainer *trainer = regopt_trainer_create(model, opt, &st);
    if (!trainer) {
        fprintf(stderr, "%s\n", regopt_last_error_message());
        return 1;
    }
    regopt_trainer_set_int(trainer, REGOPT_TRAINER_LOSS, REGOPT_LOSS_MSE);

    regopt_batch_init(&batch);
    batch.data = x;
    batch.rows = 8;
    batch.targets = y;
    for (i = 0; i < 500; i++) {
        st = regopt_trainer_step(trainer, &batch, 1);
        if (st != REGOPT_OK) {
            fprintf(stderr, "step: %s\n", regopt_trainer_message(trainer));
            return 1;
        }
    }
    double loss;
    regopt_trainer_get_double(trainer, REGOPT_STAT_LOSS, &loss);
    printf("w = %.3f, b = %.3f, loss = %.2e\n", h.w, h.b, loss);

    regopt_trainer_free(trainer);
    regopt_optimizer_free(opt);
    regopt_model_free(model);
    return (h.w > 2.9f && h.w < 3.1f && h.b > -1.1f && h.b < -0.9f) ? 0 : 1;
}
