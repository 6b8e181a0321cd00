/* regopt_torch.hpp — libregopt for LibTorch (C++17), header-only.
 *
 * Outside the C ABI: this header only calls the functions of regopt.h, so it
 * works with any libregopt 1.x, and needs LibTorch (Debian: libtorch-dev;
 * -I/usr/include/torch/csrc/api/include -ltorch -ltorch_cpu -lc10).
 *
 *   auto net = std::make_shared<Net>();               // a torch::nn::Module
 *   regopt::TorchModel model(net, 10,                 // output width (classes)
 *       [&](const torch::Tensor &x, const torch::Tensor &delta) {
 *           return net->forward(x, delta);            // delta: SMART's, or undefined
 *       });
 *   regopt::Optimizer opt(REGOPT_ADAMW);
 *   opt.set("optimizer.lr", 1e-3).set_group(1, "group.weight_decay", 0.0);
 *   regopt::Trainer trainer(model, opt);
 *   regopt::Regularizer sam(REGOPT_REG_SAM);
 *   sam.set("sam.rho", 0.05);
 *   trainer.attach(sam);
 *   regopt::Batch batch(x, y);                        // y: int64 class indices
 *   double loss = trainer.step(batch);
 *
 * What TorchModel does for the host (what a C++ user would otherwise write):
 *  - registers every parameter zero-copy, creating its .grad first (the
 *    library zeroes and reads it; backward accumulates into it in place),
 *    biases and other tensors of fewer than 2 dimensions in group 1 (so
 *    group 1's weight decay can be 0) unless a group function says else;
 *  - forward: train() or eval() by REGOPT_PASS_TRAIN, no autograd for
 *    NO_GRAD passes, dropout seeded from the pass's full 64-bit seed on the
 *    default CPU generator, whose state is put back after the pass (so the
 *    host's own random stream is untouched), batch-norm running statistics
 *    frozen for PERTURBED_WEIGHTS, TEACHER and input-perturbed passes
 *    (momentum 0 during the pass and num_batches_tracked restored: copying
 *    the statistics back instead would break the backward), one autograd
 *    graph kept per activation slot;
 *  - backward: accumulates into the registered .grad, or for
 *    NO_PARAM_GRAD passes computes only d(input) through torch::autograd::grad;
 *  - exceptions never cross the library: a callback catches them, returns
 *    nonzero and keeps their text, which the Trainer's regopt::Error carries;
 *  - labels: Batch converts int64 (or int32) class indices to the int32 the
 *    library reads, and keeps them alive with the inputs.
 * Handles are RAII and move-only; declare the model and the optimizer
 * before the trainer (the trainer borrows them). A Regularizer destroyed
 * while attached is detached first.
 *
 * Threads: a TorchModel serves one trainer at a time, from the thread that
 * calls step (the library calls the callbacks on that thread). */
#ifndef REGOPT_TORCH_HPP
#define REGOPT_TORCH_HPP

#include <regopt.h>

#include <torch/torch.h>

#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace regopt {

/* A failed library call: the status and the handle's message. */
class Error : public std::runtime_error {
  public:
    Error(regopt_status status, const std::string &what)
        : std::runtime_error(what), status_(status) {}
    regopt_status status() const noexcept { return status_; }

  private:
    regopt_status status_;
};

namespace detail {
inline void check(regopt_status st, const char *call, const std::string &detail) {
    if (st != REGOPT_OK)
        throw Error(st, std::string(call) + ": " + regopt_status_string(st) +
                            (detail.empty() ? "" : ": " + detail));
}
} // namespace detail

/* A key by its name ("sam.rho"); throws regopt::Error if unknown. */
inline regopt_key key(const char *name) {
    regopt_key k = 0;
    detail::check(regopt_key_from_name(name, &k), "regopt_key_from_name",
                  std::string("unknown key \"") + name + "\"");
    return k;
}

class Optimizer {
  public:
    explicit Optimizer(regopt_optimizer_kind kind) {
        regopt_status st = REGOPT_OK;
        h_ = regopt_optimizer_create(kind, nullptr, &st);
        if (!h_)
            detail::check(st, "regopt_optimizer_create", regopt_last_error_message());
    }
    ~Optimizer() { regopt_optimizer_free(h_); }
    Optimizer(Optimizer &&o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
    Optimizer &operator=(Optimizer &&) = delete;
    Optimizer(const Optimizer &) = delete;
    Optimizer &operator=(const Optimizer &) = delete;

    Optimizer &set(const char *name, double v) {
        detail::check(regopt_optimizer_set_double(h_, key(name), v), name,
                      regopt_optimizer_message(h_));
        return *this;
    }
    Optimizer &set_group(int32_t group, const char *name, double v) {
        detail::check(regopt_optimizer_set_group(h_, group, key(name), v), name,
                      regopt_optimizer_message(h_));
        return *this;
    }
    regopt_optimizer *get() const noexcept { return h_; }

  private:
    regopt_optimizer *h_ = nullptr;
};

class Regularizer {
  public:
    explicit Regularizer(regopt_regularizer_kind kind) {
        regopt_status st = REGOPT_OK;
        h_ = regopt_regularizer_create(kind, nullptr, &st);
        if (!h_)
            detail::check(st, "regopt_regularizer_create", regopt_last_error_message());
    }
    ~Regularizer() {
        if (h_ && regopt_regularizer_get_trainer(h_))
            regopt_trainer_detach(regopt_regularizer_get_trainer(h_), h_);
        regopt_regularizer_free(h_);
    }
    Regularizer(Regularizer &&o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
    Regularizer &operator=(Regularizer &&) = delete;
    Regularizer(const Regularizer &) = delete;
    Regularizer &operator=(const Regularizer &) = delete;

    Regularizer &set(const char *name, double v) {
        detail::check(regopt_regularizer_set_double(h_, key(name), v), name,
                      regopt_regularizer_message(h_));
        return *this;
    }
    Regularizer &set_group(int32_t group, const char *name, double v) {
        detail::check(regopt_regularizer_set_group(h_, group, key(name), v), name,
                      regopt_regularizer_message(h_));
        return *this;
    }
    /* An option or a statistic of the last step ("sam.sharpness"). */
    double get(const char *name) const {
        double v = 0.0;
        detail::check(regopt_regularizer_get_double(h_, key(name), &v), name,
                      regopt_regularizer_message(h_));
        return v;
    }
    regopt_regularizer *get() const noexcept { return h_; }

  private:
    regopt_regularizer *h_ = nullptr;
};

/* A batch as the library reads it: inputs x (first dimension: rows) and
 * class indices y (int64 or int32, converted to int32 and kept here). The
 * forward receives x's rows of each pass. */
class Batch {
  public:
    Batch(torch::Tensor x, torch::Tensor y) : x_(std::move(x)) {
        if (!x_.defined() || x_.dim() < 1 || x_.size(0) < 1)
            throw std::invalid_argument("regopt::Batch: x needs at least one row");
        if (y.defined()) {
            if (y.dim() != 1 || y.size(0) != x_.size(0))
                throw std::invalid_argument("regopt::Batch: y must hold one class index per "
                                            "row of x (" + std::to_string(x_.size(0)) + ")");
            if (y.scalar_type() != torch::kLong && y.scalar_type() != torch::kInt)
                throw std::invalid_argument("regopt::Batch: y must be int64 or int32 class "
                                            "indices");
            torch::Tensor y32 = y.to(torch::kInt).contiguous();
            labels_.assign(y32.data_ptr<int32_t>(), y32.data_ptr<int32_t>() + y32.numel());
        }
        regopt_batch_init(&b_);
        b_.data = &x_;
        b_.rows = static_cast<size_t>(x_.size(0));
        b_.labels = labels_.empty() ? nullptr : labels_.data();
    }
    Batch(const Batch &) = delete; /* b_ points into this object */
    Batch &operator=(const Batch &) = delete;
    const regopt_batch *get() const noexcept { return &b_; }
    regopt_batch *get() noexcept { return &b_; }
    const torch::Tensor &x() const noexcept { return x_; }

  private:
    torch::Tensor x_;
    std::vector<int32_t> labels_;
    regopt_batch b_;
};

/* The network's forward: x (the pass's rows of Batch::x) and delta, the
 * perturbation to add to the embedding output (SMART's passes; undefined
 * otherwise). Returns rows x output_width values (any float type). */
using ForwardFn = std::function<torch::Tensor(const torch::Tensor &x, const torch::Tensor &delta)>;
/* Parameter group of a tensor by its name and value. */
using GroupFn = std::function<int32_t(const std::string &name, const torch::Tensor &p)>;

inline int32_t default_group(const std::string &, const torch::Tensor &p) {
    return p.dim() < 2 ? 1 : 0;
}

struct TorchModelOptions {
    int32_t slots = 3;       /* activation slots (3: R-Drop and SMART) */
    size_t input_width = 0;  /* floats per embedding row (SMART), 0: none */
    GroupFn group = default_group;
};

class TorchModel {
  public:
    using Options = TorchModelOptions;

    TorchModel(std::shared_ptr<torch::nn::Module> module, size_t output_width, ForwardFn forward,
               Options options = Options())
        : module_(std::move(module)), forward_(std::move(forward)), width_(output_width),
          input_width_(options.input_width) {
        regopt_status st = REGOPT_OK;
        if (!module_ || !forward_)
            throw std::invalid_argument("regopt::TorchModel: a module and a forward are needed");
        h_ = regopt_model_create(nullptr, &st);
        if (!h_)
            detail::check(st, "regopt_model_create", regopt_last_error_message());
        try {
            check(regopt_model_set_output_width(h_, output_width), "set_output_width");
            check(regopt_model_set_slots(h_, options.slots), "set_slots");
            if (input_width_)
                check(regopt_model_set_input_width(h_, input_width_), "set_input_width");
            slots_.resize(static_cast<size_t>(options.slots));
            register_params(options.group);
            find_batch_norms();
            check(regopt_model_set_callbacks(h_, &TorchModel::forward_cb,
                                             &TorchModel::backward_cb, this, nullptr),
                  "set_callbacks");
        } catch (...) {
            regopt_model_free(h_);
            throw;
        }
    }
    ~TorchModel() { regopt_model_free(h_); }
    TorchModel(const TorchModel &) = delete; /* the library holds `this` */
    TorchModel &operator=(const TorchModel &) = delete;

    regopt_model *get() const noexcept { return h_; }
    torch::nn::Module &module() const noexcept { return *module_; }
    size_t output_width() const noexcept { return width_; }
    /* The text of the last exception a callback caught ("" if none). */
    const std::string &callback_error() const noexcept { return error_; }
    void clear_callback_error() { error_.clear(); }

    /* Before a step: each parameter's .grad must still be the registered
     * buffer; one set to an undefined tensor (zero_grad) is put back. */
    void restore_grads() {
        for (auto &r : params_) {
            torch::Tensor &g = r.param.mutable_grad();
            if (!g.defined())
                g = r.grad;
            else if (g.data_ptr() != r.grad.data_ptr())
                throw Error(REGOPT_ERR_STATE, "regopt::TorchModel: the .grad of \"" + r.name +
                                                  "\" was replaced after registration");
        }
    }

  private:
    struct Param {
        std::string name;
        torch::Tensor param, grad;
    };
    struct Slot {
        torch::Tensor out, delta;
    };
    struct Norm { /* a batch-norm module's momentum and counter */
        torch::nn::BatchNormOptions *options;
        torch::Tensor tracked;
    };

    void check(regopt_status st, const char *what) {
        detail::check(st, what, regopt_model_message(h_));
    }

    void register_params(const GroupFn &group) {
        for (auto &item : module_->named_parameters(true)) {
            torch::Tensor p = item.value();
            if (p.scalar_type() != torch::kFloat || !p.device().is_cpu() || !p.is_contiguous())
                throw std::invalid_argument("regopt::TorchModel: parameter \"" + item.key() +
                                            "\" must be a contiguous float32 CPU tensor");
            torch::Tensor g;
            if (p.requires_grad()) {
                if (!p.grad().defined())
                    p.mutable_grad() = torch::zeros_like(p, torch::MemoryFormat::Contiguous);
                g = p.grad();
            }
            check(regopt_model_add_param(h_, item.key().c_str(), p.data_ptr(),
                                         g.defined() ? g.data_ptr() : nullptr,
                                         static_cast<size_t>(p.numel()), REGOPT_DTYPE_FLOAT32,
                                         group(item.key(), p)),
                  "add_param");
            if (g.defined())
                params_.push_back({item.key(), p, g});
        }
    }

    template <class Impl> bool add_norm(const std::shared_ptr<torch::nn::Module> &m) {
        auto *bn = dynamic_cast<Impl *>(m.get());
        if (bn && bn->options.track_running_stats())
            norms_.push_back({&bn->options, bn->num_batches_tracked});
        return bn != nullptr;
    }
    void find_batch_norms() {
        for (auto &m : module_->modules(true))
            add_norm<torch::nn::BatchNorm1dImpl>(m) || add_norm<torch::nn::BatchNorm2dImpl>(m) ||
                add_norm<torch::nn::BatchNorm3dImpl>(m);
    }

    /* Momentum 0 (the running statistics stay as they are) and the
     * counters restored, for the passes that must not update them. */
    class FrozenNorms {
      public:
        FrozenNorms(std::vector<Norm> &norms, bool on) : norms_(norms), on_(on) {
            if (!on_)
                return;
            for (auto &n : norms_) {
                momenta_.push_back(n.options->momentum());
                counts_.push_back(n.tracked.clone());
                n.options->momentum(0.0);
            }
        }
        ~FrozenNorms() {
            if (!on_)
                return;
            torch::NoGradGuard no_grad;
            for (size_t i = 0; i < norms_.size(); i++) {
                norms_[i].options->momentum(momenta_[i]);
                norms_[i].tracked.copy_(counts_[i]);
            }
        }

      private:
        std::vector<Norm> &norms_;
        bool on_;
        std::vector<c10::optional<double>> momenta_;
        std::vector<torch::Tensor> counts_;
    };

    /* The default CPU generator seeded with the pass's 64-bit seed for the
     * pass, its state put back afterwards (torch::manual_seed keeps 32
     * bits). The lock is held only to switch states: dropout takes it too. */
    class SeededRng {
      public:
        SeededRng(bool on, uint64_t seed) : on_(on) {
            if (!on_)
                return;
            auto gen = at::detail::getDefaultCPUGenerator();
            std::lock_guard<std::mutex> lock(gen.mutex());
            saved_ = gen.get_state();
            gen.set_current_seed(seed);
        }
        ~SeededRng() {
            if (!on_)
                return;
            auto gen = at::detail::getDefaultCPUGenerator();
            std::lock_guard<std::mutex> lock(gen.mutex());
            gen.set_state(saved_);
        }

      private:
        bool on_;
        torch::Tensor saved_;
    };

    static int forward_cb(const regopt_pass *p, void *user) {
        return static_cast<TorchModel *>(user)->guarded([&] { static_cast<TorchModel *>(user)->forward(p); });
    }
    static int backward_cb(const regopt_pass *p, void *user) {
        return static_cast<TorchModel *>(user)->guarded([&] { static_cast<TorchModel *>(user)->backward(p); });
    }
    template <class F> int guarded(F &&f) noexcept {
        try {
            f();
            return 0;
        } catch (const std::exception &e) {
            try {
                error_ = e.what();
            } catch (...) {
            }
        } catch (...) {
            try {
                error_ = "an exception that is not a std::exception";
            } catch (...) {
            }
        }
        return 1;
    }

    Slot &slot(const regopt_pass *p) {
        if (p->slot < 0 || static_cast<size_t>(p->slot) >= slots_.size())
            throw std::out_of_range("regopt::TorchModel: slot " + std::to_string(p->slot));
        return slots_[static_cast<size_t>(p->slot)];
    }

    void forward(const regopt_pass *p) {
        const torch::Tensor &x = *static_cast<const torch::Tensor *>(p->batch);
        const bool train = p->flags & REGOPT_PASS_TRAIN;
        const bool grad = !(p->flags & REGOPT_PASS_NO_GRAD);
        const bool perturbed = p->input_perturbation != nullptr;
        const int64_t rows = static_cast<int64_t>(p->rows), width = static_cast<int64_t>(width_);
        Slot &s = slot(p);
        s = Slot();
        module_->train(train);
        FrozenNorms frozen(norms_, train && (perturbed || (p->flags & (REGOPT_PASS_PERTURBED_WEIGHTS |
                                                                       REGOPT_PASS_TEACHER))));
        torch::Tensor delta;
        if (perturbed) {
            delta = torch::from_blob(const_cast<float *>(p->input_perturbation),
                                     {static_cast<int64_t>(p->input_rows),
                                      static_cast<int64_t>(p->input_width)})
                        .clone();
            if (grad)
                delta.requires_grad_(true);
        }
        SeededRng rng(train, p->seed);
        torch::AutoGradMode mode(grad);
        torch::Tensor out = forward_(x.narrow(0, static_cast<int64_t>(p->row_offset), rows), delta);
        if (!out.defined() || out.numel() != rows * width)
            throw std::runtime_error("regopt::TorchModel: the forward returned " +
                                     std::to_string(out.defined() ? out.numel() : 0) +
                                     " values for " + std::to_string(rows) + " rows of width " +
                                     std::to_string(width));
        out = out.reshape({rows, width});
        torch::Tensor host = out.detach().to(torch::kFloat).contiguous();
        std::memcpy(p->outputs, host.data_ptr<float>(), sizeof(float) * static_cast<size_t>(rows * width));
        if (grad)
            s = Slot{out, delta};
    }

    void backward(const regopt_pass *p) {
        Slot &s = slot(p);
        Slot held = std::move(s); /* the graph is used once */
        s = Slot();
        if (!held.out.defined())
            throw std::runtime_error("regopt::TorchModel: a backward in slot " +
                                     std::to_string(p->slot) + " without its forward");
        torch::Tensor d = torch::from_blob(const_cast<float *>(p->d_outputs), held.out.sizes(),
                                           torch::kFloat)
                              .to(held.out.scalar_type());
        torch::Tensor d_input;
        if (p->flags & REGOPT_PASS_NO_PARAM_GRAD) {
            if (!held.delta.defined())
                throw std::runtime_error("regopt::TorchModel: a d(input) backward without a "
                                         "perturbed forward");
            d_input = torch::autograd::grad({held.out}, {held.delta}, {d})[0];
        } else {
            held.out.backward(d);
            if (held.delta.defined())
                d_input = held.delta.grad();
        }
        if (p->d_input) {
            if (!d_input.defined())
                throw std::runtime_error("regopt::TorchModel: d(input) was asked for, but the "
                                         "forward did not use delta");
            torch::Tensor c = d_input.to(torch::kFloat).contiguous();
            std::memcpy(p->d_input, c.data_ptr<float>(), sizeof(float) * static_cast<size_t>(c.numel()));
        }
    }

    std::shared_ptr<torch::nn::Module> module_;
    ForwardFn forward_;
    size_t width_, input_width_;
    regopt_model *h_ = nullptr;
    std::vector<Param> params_;
    std::vector<Slot> slots_;
    std::vector<Norm> norms_;
    std::string error_;
};

class Trainer {
  public:
    Trainer(TorchModel &model, Optimizer &opt) : model_(model) {
        regopt_status st = REGOPT_OK;
        h_ = regopt_trainer_create(model.get(), opt.get(), &st);
        if (!h_)
            detail::check(st, "regopt_trainer_create", regopt_last_error_message());
    }
    ~Trainer() { regopt_trainer_free(h_); }
    Trainer(const Trainer &) = delete;
    Trainer &operator=(const Trainer &) = delete;

    Trainer &set(const char *name, double v) {
        detail::check(regopt_trainer_set_double(h_, key(name), v), name,
                      regopt_trainer_message(h_));
        return *this;
    }
    Trainer &attach(Regularizer &r) {
        detail::check(regopt_trainer_attach(h_, r.get()), "regopt_trainer_attach",
                      regopt_trainer_message(h_));
        return *this;
    }
    /* One step over one batch; returns the step's loss ("trainer.loss" of
     * the last step). A failure changed nothing and throws regopt::Error
     * with the library's message and the callback's exception text. */
    double step(Batch &batch) { return step(batch.get(), 1); }
    double step(const regopt_batch *batches, size_t count) {
        model_.restore_grads();
        model_.clear_callback_error();
        fail(regopt_trainer_step(h_, batches, count), "regopt_trainer_step");
        return stat("stat.loss");
    }
    /* The outputs of an evaluation (dropout off, no gradients), rows x width. */
    torch::Tensor evaluate(Batch &batch) {
        torch::Tensor out = torch::empty({static_cast<int64_t>(batch.get()->rows),
                                          static_cast<int64_t>(model_.output_width())});
        model_.clear_callback_error();
        fail(regopt_trainer_evaluate(h_, batch.get(), nullptr, out.data_ptr<float>()),
             "regopt_trainer_evaluate");
        return out;
    }
    double stat(const char *name) const {
        double v = 0.0;
        detail::check(regopt_trainer_get_double(h_, key(name), &v), name,
                      regopt_trainer_message(h_));
        return v;
    }
    regopt_trainer *get() const noexcept { return h_; }

  private:
    void fail(regopt_status st, const char *call) {
        if (st == REGOPT_OK)
            return;
        std::string msg = regopt_trainer_message(h_);
        if (!model_.callback_error().empty())
            msg += " (callback: " + model_.callback_error() + ")";
        throw Error(st, std::string(call) + ": " + regopt_status_string(st) + ": " + msg);
    }
    TorchModel &model_;
    regopt_trainer *h_ = nullptr;
};

} // namespace regopt

#endif
