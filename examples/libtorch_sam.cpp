// libtorch_sam.cpp — a torch::nn network trained with SAM and R-Drop through
// libregopt, as a C++ framework would use it (include/regopt_torch.hpp).
//
//   ./examples/libtorch_sam                  train on the UCI digits, print test accuracy
//   ./examples/libtorch_sam --check          the adapter's checks against pure LibTorch
//   ./examples/libtorch_sam --bench          SAM steps: through libregopt vs pure LibTorch
//
// The network: Linear(64, 128) -> BatchNorm1d -> ReLU -> Dropout(0.1) ->
// Linear(128, 10); AdamW (lr 1e-3, weight decay 1e-2 except biases and
// batch-norm weights); SAM (rho 0.05) and R-Drop (alpha 1) attached together.
#include <regopt_torch.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

namespace {

struct NetImpl : torch::nn::Module {
    NetImpl(int64_t in, int64_t hidden, int64_t out, double dropout)
        : fc1(register_module("fc1", torch::nn::Linear(in, hidden))),
          bn(register_module("bn", torch::nn::BatchNorm1d(hidden))),
          drop(register_module("drop", torch::nn::Dropout(dropout))),
          fc2(register_module("fc2", torch::nn::Linear(hidden, out))) {}
    // delta: SMART's perturbation of fc1's output (the "embedding"), or undefined
    torch::Tensor forward(const torch::Tensor &x, const torch::Tensor &delta = {}) {
        torch::Tensor h = fc1->forward(x);
        if (delta.defined())
            h = h + delta;
        return fc2->forward(drop->forward(torch::relu(bn->forward(h))));
    }
    torch::nn::Linear fc1;
    torch::nn::BatchNorm1d bn;
    torch::nn::Dropout drop;
    torch::nn::Linear fc2;
};
TORCH_MODULE(Net);

struct Digits {
    torch::Tensor x, y;
};

Digits load_digits(const std::string &path) {
    std::ifstream f(path);
    if (!f)
        throw std::runtime_error("cannot open " + path);
    std::vector<float> xs;
    std::vector<int64_t> ys;
    std::string line;
    while (std::getline(f, line)) {
        std::stringstream ss(line);
        std::string cell;
        std::vector<int> v;
        while (std::getline(ss, cell, ','))
            v.push_back(std::stoi(cell));
        if (v.size() != 65 || v[64] < 0 || v[64] > 9)
            throw std::runtime_error(path + ": a row without 64 pixels and a class");
        for (int j = 0; j < 64; j++)
            xs.push_back(static_cast<float>(v[static_cast<size_t>(j)]) / 16.0f);
        ys.push_back(v[64]);
    }
    const int64_t n = static_cast<int64_t>(ys.size());
    return {torch::from_blob(xs.data(), {n, 64}).clone(),
            torch::from_blob(ys.data(), {n}, torch::kLong).clone()};
}

double accuracy(const torch::Tensor &out, const torch::Tensor &y) {
    return out.argmax(1).eq(y).to(torch::kDouble).mean().item<double>();
}

regopt::TorchModel make_model(Net net) {
    return regopt::TorchModel(net.ptr(), 10,
                              [net](const torch::Tensor &x, const torch::Tensor &d) mutable {
                                  return net->forward(x, d);
                              });
}

// ---- training -----------------------------------------------------------------

int train(const std::string &data, int epochs, double min_acc) {
    torch::manual_seed(1);
    Digits d = load_digits(data);
    const int64_t n_train = 1200, batch = 32;
    torch::Tensor perm = torch::randperm(d.x.size(0));
    torch::Tensor xtr = d.x.index({perm.slice(0, 0, n_train)}),
                  ytr = d.y.index({perm.slice(0, 0, n_train)});
    torch::Tensor xte = d.x.index({perm.slice(0, n_train)}), yte = d.y.index({perm.slice(0, n_train)});

    Net net(64, 128, 10, 0.1);
    regopt::TorchModel model = make_model(net);
    regopt::Optimizer opt(REGOPT_ADAMW);
    opt.set("optimizer.lr", 1e-3).set_group(1, "group.weight_decay", 0.0);
    regopt::Trainer trainer(model, opt);
    trainer.set("trainer.seed", 7);
    regopt::Regularizer sam(REGOPT_REG_SAM), rdrop(REGOPT_REG_RDROP);
    sam.set("sam.rho", 0.05);
    rdrop.set("rdrop.alpha", 1.0);
    trainer.attach(sam).attach(rdrop);

    regopt::Batch test(xte, yte);
    for (int e = 0; e < epochs; e++) {
        torch::Tensor order = torch::randperm(n_train);
        double loss = 0.0;
        int steps = 0;
        for (int64_t i = 0; i + batch <= n_train; i += batch, steps++) {
            torch::Tensor idx = order.slice(0, i, i + batch);
            regopt::Batch b(xtr.index({idx}), ytr.index({idx}));
            loss += trainer.step(b);
        }
        std::printf("epoch %2d  loss %.4f  sharpness %.5f  test accuracy %.4f\n", e + 1,
                    loss / steps, sam.get("sam.sharpness"), accuracy(trainer.evaluate(test), yte));
    }
    double acc = accuracy(trainer.evaluate(test), yte);
    std::printf("RESULT test_acc=%.4f epochs=%d\n", acc, epochs);
    if (acc < min_acc) {
        std::fprintf(stderr, "libtorch_sam: test accuracy %.4f below %.4f\n", acc, min_acc);
        return 1;
    }
    return 0;
}

// ---- checks against pure LibTorch ------------------------------------------------

int failures = 0;

std::string sci(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2e", v);
    return buf;
}

void expect(bool ok, const std::string &what) {
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
    failures += !ok;
}

double max_diff(const std::vector<torch::Tensor> &a, const std::vector<torch::Tensor> &b) {
    double m = 0.0;
    for (size_t i = 0; i < a.size(); i++)
        m = std::max(m, (a[i] - b[i]).abs().max().item<double>());
    return m;
}

std::vector<torch::Tensor> snapshot(torch::nn::Module &m) {
    std::vector<torch::Tensor> out;
    for (auto &p : m.parameters())
        out.push_back(p.detach().clone());
    return out;
}

// Pure LibTorch: the gradient of the mean cross-entropy at the module's
// weights, train mode, no dropout (the checks' networks have none).
std::vector<torch::Tensor> torch_grad(Net net, const torch::Tensor &x, const torch::Tensor &y) {
    net->zero_grad();
    torch::nn::functional::cross_entropy(net->forward(x), y).backward();
    std::vector<torch::Tensor> g;
    for (auto &p : net->parameters())
        g.push_back(p.grad().clone());
    return g;
}

void check_sgd_step(const Digits &d) {
    torch::manual_seed(3);
    Net net(64, 16, 10, 0.0), ref(64, 16, 10, 0.0);
    torch::Tensor x = d.x.slice(0, 0, 64), y = d.y.slice(0, 0, 64);
    {
        torch::NoGradGuard ng;
        for (size_t i = 0; i < net->parameters().size(); i++)
            ref->parameters()[i].copy_(net->parameters()[i]);
    }
    std::vector<torch::Tensor> g = torch_grad(ref, x, y), w0 = snapshot(*net);
    regopt::TorchModel model = make_model(net);
    regopt::Optimizer opt(REGOPT_SGD);
    opt.set("optimizer.lr", 0.1);
    regopt::Trainer trainer(model, opt);
    regopt::Batch b(x, y);
    trainer.step(b);
    std::vector<torch::Tensor> want;
    for (size_t i = 0; i < w0.size(); i++)
        want.push_back(w0[i] - 0.1 * g[i]);
    double diff = max_diff(snapshot(*net), want);
    expect(diff < 1e-6, "SGD step = w - lr * (LibTorch's gradient), max diff " + sci(diff));
}

// SAM (Foret et al. Alg. 1) written with LibTorch alone: g at w, w + rho g /
// ||g||, g_s there, back to w, SGD with g_s.
void check_sam_step(const Digits &d) {
    torch::manual_seed(4);
    const double rho = 0.05, lr = 0.1;
    Net net(64, 16, 10, 0.0), ref(64, 16, 10, 0.0);
    torch::Tensor x = d.x.slice(0, 64, 128), y = d.y.slice(0, 64, 128);
    {
        torch::NoGradGuard ng;
        for (size_t i = 0; i < net->parameters().size(); i++)
            ref->parameters()[i].copy_(net->parameters()[i]);
    }
    auto ps = ref->parameters();
    std::vector<torch::Tensor> g = torch_grad(ref, x, y);
    double norm = 0.0;
    for (auto &t : g)
        norm += t.pow(2).sum().item<double>();
    norm = std::sqrt(norm);
    std::vector<torch::Tensor> w0 = snapshot(*ref);
    {
        torch::NoGradGuard ng;
        for (size_t i = 0; i < ps.size(); i++)
            ps[i].add_(g[i] * (rho / (norm + 1e-12)));
    }
    // the perturbed pass must not move batch-norm statistics: keep them
    torch::Tensor rm = ref->bn->running_mean.clone(), rv = ref->bn->running_var.clone();
    std::vector<torch::Tensor> gs = torch_grad(ref, x, y);
    {
        torch::NoGradGuard ng;
        ref->bn->running_mean.copy_(rm);
        ref->bn->running_var.copy_(rv);
        for (size_t i = 0; i < ps.size(); i++)
            ps[i].copy_(w0[i] - lr * gs[i]);
    }
    regopt::TorchModel model = make_model(net);
    regopt::Optimizer opt(REGOPT_SGD);
    opt.set("optimizer.lr", lr);
    regopt::Trainer trainer(model, opt);
    regopt::Regularizer sam(REGOPT_REG_SAM);
    sam.set("sam.rho", rho);
    trainer.attach(sam);
    regopt::Batch b(x, y);
    trainer.step(b);
    double diff = max_diff(snapshot(*net), snapshot(*ref));
    expect(diff < 2e-6, "SAM step = SAM written in LibTorch, max diff " + sci(diff));
    double bn = (net->bn->running_mean - ref->bn->running_mean).abs().max().item<double>();
    expect(bn < 1e-6 && net->bn->num_batches_tracked.item<int64_t>() == 1,
           "batch norm: only the clean pass moved the statistics (max diff " + sci(bn) +
               ", num_batches_tracked " +
               std::to_string(net->bn->num_batches_tracked.item<int64_t>()) + ")");
}

// A callback that throws: the step fails with the exception's text and
// changes nothing; the next step works.
void check_exception(const Digits &d) {
    torch::manual_seed(5);
    Net net(64, 16, 10, 0.1);
    int calls = 0;
    regopt::TorchModel model(net.ptr(), 10, [&](const torch::Tensor &x, const torch::Tensor &dl) {
        if (++calls == 2)
            throw std::runtime_error("host out of patience");
        return net->forward(x, dl);
    });
    regopt::Optimizer opt(REGOPT_ADAMW);
    regopt::Trainer trainer(model, opt);
    regopt::Regularizer sam(REGOPT_REG_SAM);
    trainer.attach(sam);
    regopt::Batch b(d.x.slice(0, 0, 32), d.y.slice(0, 0, 32));
    std::vector<torch::Tensor> w0 = snapshot(*net);
    std::string what;
    try {
        trainer.step(b);
    } catch (const regopt::Error &e) {
        what = e.what();
    }
    expect(what.find("host out of patience") != std::string::npos,
           "a throwing forward fails the step with its text: " + what);
    expect(max_diff(snapshot(*net), w0) == 0.0, "... and leaves the weights as they were");
    trainer.step(b);
    expect(max_diff(snapshot(*net), w0) > 0.0, "the next step trains");
}

// Dropout follows the trainer's seed, not the global generator, and the
// global generator's stream is untouched by a step.
void check_seeds(const Digits &d) {
    regopt::Batch b(d.x.slice(0, 0, 32), d.y.slice(0, 0, 32));
    std::vector<torch::Tensor> after[2];
    for (int run = 0; run < 2; run++) {
        torch::manual_seed(6);
        Net net(64, 16, 10, 0.5);
        regopt::TorchModel model = make_model(net);
        regopt::Optimizer opt(REGOPT_ADAMW);
        regopt::Trainer trainer(model, opt);
        trainer.set("trainer.seed", 11);
        torch::manual_seed(run == 0 ? 100 : 200); // a different global stream
        torch::Tensor before = torch::rand({4});
        torch::manual_seed(run == 0 ? 100 : 200);
        trainer.step(b);
        expect(torch::equal(torch::rand({4}), before), "a step leaves the global RNG stream alone");
        after[run] = snapshot(*net);
    }
    expect(max_diff(after[0], after[1]) == 0.0, "dropout follows trainer.seed: same weights");
}

int check(const std::string &data) {
    Digits d = load_digits(data);
    check_sgd_step(d);
    check_sam_step(d);
    check_exception(d);
    check_seeds(d);
    std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "all checks passed", failures);
    return failures ? 1 : 0;
}

// ---- bench -------------------------------------------------------------------------

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// SAM + AdamW steps of an MLP 784-1024-10 with batch norm and dropout, batch 128: through the
// library, and written with LibTorch alone (the loop a LibTorch user writes:
// two forward/backward, perturb and restore with torch ops, torch::optim::AdamW).
int bench(int runs, int steps) {
    torch::manual_seed(1);
    torch::Tensor x = torch::randn({128, 784}), y = torch::randint(0, 10, {128});
    auto mlp = [] { return Net(784, 1024, 10, 0.1); };
    std::vector<double> lib_ms, torch_ms;
    Net a = mlp(), b = mlp();
    regopt::TorchModel model = make_model(a);
    regopt::Optimizer opt(REGOPT_ADAMW);
    opt.set("optimizer.lr", 1e-4);
    regopt::Trainer trainer(model, opt);
    regopt::Regularizer sam(REGOPT_REG_SAM);
    sam.set("sam.rho", 0.05);
    trainer.attach(sam);
    regopt::Batch batch(x, y);
    torch::optim::AdamW topt(b->parameters(), torch::optim::AdamWOptions(1e-4).weight_decay(1e-2));
    auto torch_step = [&] {
        auto ps = b->parameters();
        topt.zero_grad();
        torch::nn::functional::cross_entropy(b->forward(x), y).backward();
        std::vector<torch::Tensor> e;
        {
            torch::NoGradGuard ng;
            torch::Tensor norm = torch::zeros({});
            for (auto &p : ps)
                norm += p.grad().pow(2).sum();
            torch::Tensor scale = 0.05 / (norm.sqrt() + 1e-12);
            for (auto &p : ps) {
                e.push_back(p.grad() * scale);
                p.add_(e.back());
            }
        }
        topt.zero_grad();
        torch::nn::functional::cross_entropy(b->forward(x), y).backward();
        {
            torch::NoGradGuard ng;
            for (size_t i = 0; i < ps.size(); i++)
                ps[i].sub_(e[i]);
        }
        topt.step();
    };
    for (int w = 0; w < 3; w++) { // warm-up
        trainer.step(batch);
        torch_step();
    }
    for (int r = 0; r < runs; r++) { // alternating, so load from elsewhere hits both
        double t0 = now();
        for (int s = 0; s < steps; s++)
            trainer.step(batch);
        lib_ms.push_back((now() - t0) * 1e3 / steps);
        t0 = now();
        for (int s = 0; s < steps; s++)
            torch_step();
        torch_ms.push_back((now() - t0) * 1e3 / steps);
    }
    double l = median(lib_ms), t = median(torch_ms);
    std::printf("# SAM + AdamW step, MLP 784-1024-10 (batch norm, dropout), batch 128, "
                "%d threads: libregopt %.2f ms, LibTorch alone %.2f ms (median of %d runs of "
                "%d steps)\n", torch::get_num_threads(), l, t, runs, steps);
    std::printf("BENCH kind=libtorch_sam lib_ms=%.4f torch_ms=%.4f ratio=%.4f threads=%d\n", l, t,
                l / t, torch::get_num_threads());
    return 0;
}

} // namespace

int main(int argc, char **argv) {
    std::string data = "data/digits.csv", mode = "train";
    int epochs = 10, runs = 7, steps = 10;
    double min_acc = 0.0;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : nullptr;
        if (a == "--check" || a == "--bench") {
            mode = a.substr(2);
        } else if (a == "--help") {
            std::printf("usage: libtorch_sam [--data PATH] [--epochs N] [--min-test-acc X]\n"
                        "                    [--check] [--bench [--runs R] [--steps S]]\n");
            return 0;
        } else if (v && a == "--data") {
            data = argv[++i];
        } else if (v && (a == "--epochs" || a == "--runs" || a == "--steps")) {
            char *end = nullptr;
            long n = std::strtol(argv[++i], &end, 10);
            if (*end || n < 1 || n > 100000) {
                std::fprintf(stderr, "libtorch_sam: bad value for %s: %s\n", a.c_str(), argv[i]);
                return 2;
            }
            (a == "--epochs" ? epochs : a == "--runs" ? runs : steps) = static_cast<int>(n);
        } else if (v && a == "--min-test-acc") {
            min_acc = std::atof(argv[++i]);
        } else {
            std::fprintf(stderr, "libtorch_sam: unknown option %s (see --help)\n", a.c_str());
            return 2;
        }
    }
    try {
        if (mode == "check")
            return check(data);
        if (mode == "bench")
            return bench(runs, steps);
        return train(data, epochs, min_acc);
    } catch (const std::exception &e) {
        std::fprintf(stderr, "libtorch_sam: %s\n", e.what());
        return 1;
    }
}
