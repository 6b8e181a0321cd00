// abandon_cxx.cpp — a C++ host whose callback throws through the library
// (what a LibTorch trainer does when an op fails), issue 16 #7: SAM has
// moved the weights to w + eps when the perturbed backward throws. The
// exception reaches the host; the trainer then refuses to step until
// regopt_trainer_recover, which puts w back bit for bit, and the run goes
// on exactly like a trainer that never saw the exception.
#include <regopt.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <vector>

namespace {

const size_t D = 3, K = 4, N = 8;

struct Host {
    std::vector<float> w = std::vector<float>(D * K), g = std::vector<float>(D * K);
    std::vector<float> x = std::vector<float>(N * D);
    int backwards = 0;
    int throw_at = 0; // 1-based backward call that throws, 0: never
};

int forward(const regopt_pass *p, void *user)
{
    Host *h = static_cast<Host *>(user);
    for (size_t i = 0; i < p->rows; i++)
        for (size_t k = 0; k < K; k++) {
            float z = 0.0f;
            for (size_t j = 0; j < D; j++)
                z += h->x[(p->row_offset + i) * D + j] * h->w[j * K + k];
            p->outputs[i * K + k] = z;
        }
    return 0;
}

int backward(const regopt_pass *p, void *user)
{
    Host *h = static_cast<Host *>(user);
    if (++h->backwards == h->throw_at)
        throw std::runtime_error("CUDA error: an illegal memory access (simulated)");
    for (size_t i = 0; i < p->rows; i++)
        for (size_t k = 0; k < K; k++)
            for (size_t j = 0; j < D; j++)
                h->g[j * K + k] += h->x[(p->row_offset + i) * D + j] * p->d_outputs[i * K + k];
    return 0;
}

struct Run {
    Host h;
    regopt_model *m = nullptr;
    regopt_optimizer *o = nullptr;
    regopt_trainer *t = nullptr;
    regopt_regularizer *sam = nullptr;
};

int fail(const char *what, const regopt_trainer *t)
{
    std::fprintf(stderr, "abandon_cxx: FAIL: %s (%s)\n", what, t ? regopt_trainer_message(t) : "");
    return 1;
}

bool make(Run &r)
{
    for (size_t i = 0; i < D * K; i++)
        r.h.w[i] = 0.1f * static_cast<float>(static_cast<int>(i * 7 % 11) - 5);
    for (size_t i = 0; i < N * D; i++)
        r.h.x[i] = static_cast<float>(std::sin(1.3 * static_cast<double>(i)));
    regopt_status st;
    r.m = regopt_model_create(nullptr, &st);
    r.o = regopt_optimizer_create(REGOPT_SGD, nullptr, &st);
    if (!r.m || !r.o ||
        regopt_model_add_param(r.m, "W", r.h.w.data(), r.h.g.data(), D * K, REGOPT_DTYPE_FLOAT32,
                               0) != REGOPT_OK ||
        regopt_model_set_output_width(r.m, K) != REGOPT_OK ||
        regopt_model_set_callbacks(r.m, forward, backward, &r.h, nullptr) != REGOPT_OK ||
        regopt_optimizer_set_double(r.o, REGOPT_OPT_MOMENTUM, 0.9) != REGOPT_OK)
        return false;
    r.t = regopt_trainer_create(r.m, r.o, &st);
    r.sam = regopt_regularizer_create(REGOPT_REG_SAM, nullptr, &st);
    return r.t && r.sam && regopt_trainer_attach(r.t, r.sam) == REGOPT_OK;
}

void destroy(Run &r)
{
    regopt_trainer_free(r.t);
    regopt_regularizer_free(r.sam);
    regopt_model_free(r.m);
    regopt_optimizer_free(r.o);
}

} // namespace

int main()
{
    Run a, ref;
    int32_t y[N];
    regopt_batch b;
    for (size_t i = 0; i < N; i++)
        y[i] = static_cast<int32_t>(i * 3 % K);
    regopt_batch_init(&b);
    b.rows = N;
    b.labels = y;
    if (!make(a) || !make(ref))
        return fail("setup", nullptr);
    for (Run *r : {&a, &ref})
        if (regopt_trainer_step(r->t, &b, 1) != REGOPT_OK)
            return fail("first step", r->t);
    std::vector<float> before = a.h.w;
    a.h.throw_at = a.h.backwards + 2; // SAM's second backward: w is at w + eps
    bool caught = false;
    try {
        regopt_status st = regopt_trainer_step(a.t, &b, 1);
        std::fprintf(stderr, "abandon_cxx: the step returned %s\n", regopt_status_string(st));
    } catch (const std::runtime_error &e) {
        caught = std::strstr(e.what(), "simulated") != nullptr;
    }
    if (!caught)
        return fail("the exception did not reach the host", a.t);
    if (a.h.w == before)
        return fail("the weights were not perturbed when the exception left", a.t);
    if (regopt_trainer_step(a.t, &b, 1) != REGOPT_ERR_STATE ||
        !std::strstr(regopt_trainer_message(a.t), "regopt_trainer_recover"))
        return fail("a step after the exception was not refused", a.t);
    if (regopt_trainer_recover(a.t) != REGOPT_OK)
        return fail("recover", a.t);
    if (std::memcmp(a.h.w.data(), before.data(), before.size() * sizeof(float)) != 0)
        return fail("recover did not put w back bit for bit", a.t);
    for (Run *r : {&a, &ref})
        for (int s = 0; s < 3; s++)
            if (regopt_trainer_step(r->t, &b, 1) != REGOPT_OK)
                return fail("steps after recover", r->t);
    if (std::memcmp(a.h.w.data(), ref.h.w.data(), before.size() * sizeof(float)) != 0)
        return fail("the run differs from one that never saw the exception", a.t);
    destroy(a);
    destroy(ref);
    std::printf("abandon_cxx: ok (an exception from SAM's perturbed backward: refused, then "
                "recovered bit for bit)\n");
    return 0;
}
