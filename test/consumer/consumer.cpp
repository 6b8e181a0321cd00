// consumer.cpp — the same fit from C++: the header's extern "C" block, the
// handles owned by std::unique_ptr, state in a class.
#include <regopt.h>

#include <cmath>
#include <cstdio>
#include <memory>
#include <vector>

namespace {

struct Line {
    float w = 0, b = 0, gw = 0, gb = 0;
    const float *x = nullptr;
};

int forward(const regopt_pass *p, void *user)
{
    Line *l = static_cast<Line *>(user);
    l->x = static_cast<const float *>(p->batch);
    for (size_t i = 0; i < p->rows; i++)
        p->outputs[i] = l->w * l->x[i] + l->b;
    return 0;
}

int backward(const regopt_pass *p, void *user)
{
    Line *l = static_cast<Line *>(user);
    for (size_t i = 0; i < p->rows; i++) {
        l->gw += p->d_outputs[i] * l->x[i];
        l->gb += p->d_outputs[i];
    }
    return 0;
}

struct ModelFree {
    void operator()(regopt_model *m) const { regopt_model_free(m); }
};
struct OptimizerFree {
    void operator()(regopt_optimizer *o) const { regopt_optimizer_free(o); }
};
struct TrainerFree {
    void operator()(regopt_trainer *t) const { regopt_trainer_free(t); }
};

} // namespace

int main()
{
    const std::vector<float> x = {-1.0f, 0.0f, 0.5f, 2.0f};
    std::vector<float> y;
    for (float v : x)
        y.push_back(2.0f * v + 1.0f);
    Line l;
    // declared in this order so the trainer is freed first
    std::unique_ptr<regopt_model, ModelFree> m(regopt_model_create(nullptr, nullptr));
    std::unique_ptr<regopt_optimizer, OptimizerFree> o(
        regopt_optimizer_create(REGOPT_ADAMW, nullptr, nullptr));
    if (!m || !o || regopt_model_add_param(m.get(), "w", &l.w, &l.gw, 1, REGOPT_DTYPE_FLOAT32, 0) ||
        regopt_model_add_param(m.get(), "b", &l.b, &l.gb, 1, REGOPT_DTYPE_FLOAT32, 0) ||
        regopt_model_set_output_width(m.get(), 1) ||
        regopt_model_set_callbacks(m.get(), forward, backward, &l, nullptr) ||
        regopt_optimizer_set_double(o.get(), REGOPT_OPT_LR, 0.05) ||
        regopt_optimizer_set_double(o.get(), REGOPT_OPT_WEIGHT_DECAY, 0.0))
        return 1;
    std::unique_ptr<regopt_trainer, TrainerFree> t(
        regopt_trainer_create(m.get(), o.get(), nullptr));
    if (!t || regopt_trainer_set_int(t.get(), REGOPT_TRAINER_LOSS, REGOPT_LOSS_MSE))
        return 1;
    regopt_batch b;
    regopt_batch_init(&b);
    b.data = x.data();
    b.rows = x.size();
    b.targets = y.data();
    for (int i = 0; i < 400; i++)
        if (regopt_trainer_step(t.get(), &b, 1) != REGOPT_OK) {
            std::fprintf(stderr, "consumer++: %s\n", regopt_trainer_message(t.get()));
            return 1;
        }
    if (std::fabs(l.w - 2.0f) > 0.05f || std::fabs(l.b - 1.0f) > 0.05f) {
        std::fprintf(stderr, "consumer++: w = %g, b = %g\n", l.w, l.b);
        return 1;
    }
    std::printf("consumer (C++, libregopt %s): w = %.3f, b = %.3f\n", regopt_version_string(),
                l.w, l.b);
    return 0;
}
