// The mixout linear layer (Lee, Cho, Kang, ICLR 2020, eq. 8) as one fused CPU operator.
//
//   y = x Phi^T + b,  Phi = u + s (w - u),  s_j = B_j / (1 - p),  B_j ~ Bernoulli(1 - p) per input column
//   dL/dw = (dL/dy)^T (x * s),  dL/dx = (dL/dy) Phi,  dL/db = sum over rows of dL/dy
//
// The mask is drawn with ATen's bernoulli_ from the caller's generator, as mixing.neuron_mask draws
// it; the mixing pass and the column scale are plain loops over contiguous memory (one read of w and
// u, one write of Phi), so a call costs one Python dispatch instead of six. Built on demand by
// mixout_theory.kernels; used only for CPU float32 / float64 tensors.
#include <torch/extension.h>

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The two loops, compiled for AVX-512, AVX2 and baseline x86-64 (the loader picks the best one the
// CPU has); plain loops elsewhere.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define MIXOUT_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MIXOUT_CLONES
#endif

#define MIXOUT_LOOPS(T)                                                                              \
  MIXOUT_CLONES void mix_rows(const T* w, const T* u, const T* s, T* phi, int64_t rows, int64_t cols) { \
    for (int64_t i = 0; i < rows; ++i) {                                                             \
      const int64_t o = i * cols;                                                                    \
      if (u != nullptr) {                                                                            \
        for (int64_t j = 0; j < cols; ++j) phi[o + j] = u[o + j] + s[j] * (w[o + j] - u[o + j]);     \
      } else {                                                                                       \
        for (int64_t j = 0; j < cols; ++j) phi[o + j] = s[j] * w[o + j];                             \
      }                                                                                              \
    }                                                                                                \
  }                                                                                                  \
  MIXOUT_CLONES void scale_rows(const T* x, const T* s, T* out, int64_t rows, int64_t cols) {        \
    for (int64_t i = 0; i < rows; ++i) {                                                             \
      const int64_t o = i * cols;                                                                    \
      for (int64_t j = 0; j < cols; ++j) out[o + j] = x[o + j] * s[j];                               \
    }                                                                                                \
  }

MIXOUT_LOOPS(float)
MIXOUT_LOOPS(double)

// Phi = u + s (w - u), or s w when u is undefined (the origin): eq. 4 with a neuron mask.
Tensor mixed_weight(const Tensor& w, const Tensor& u, const Tensor& s) {
  auto phi = torch::empty_like(w);
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "mixed_weight", [&] {
    mix_rows(w.data_ptr<scalar_t>(), u.defined() ? u.data_ptr<scalar_t>() : nullptr, s.data_ptr<scalar_t>(),
             phi.data_ptr<scalar_t>(), w.size(0), w.size(1));
  });
  return phi;
}

// x * s, s broadcast over the rows of a contiguous (n, in) matrix.
Tensor scale_columns(const Tensor& x, const Tensor& s) {
  auto out = torch::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "scale_columns", [&] {
    scale_rows(x.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), x.size(0), x.size(1));
  });
  return out;
}

struct MixoutLinear : public torch::autograd::Function<MixoutLinear> {
  // x (n, in) contiguous, w / u (out, in) contiguous (u may be absent: the origin), b (out) or absent, s (in)
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& w, const c10::optional<Tensor>& b,
                        const c10::optional<Tensor>& u, const Tensor& s) {
    const Tensor ut = u.has_value() ? *u : Tensor();
    auto phi = mixed_weight(w, ut, s);
    ctx->save_for_backward({x, w, ut, s, phi});
    return b.has_value() ? torch::addmm(*b, x, phi.t()) : torch::mm(x, phi.t());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &w = saved[1], &u = saved[2], &s = saved[3];
    const Tensor g = grads[0].contiguous();
    // differentiating twice (create_graph): differentiable ATen ops, so that Phi depends on w
    const bool twice = torch::GradMode::is_enabled();
    Tensor gx, gw, gb;
    if (ctx->needs_input_grad(0)) {
      auto phi = twice ? (u.defined() ? u + s * (w - u) : w * s) : saved[4];
      gx = g.mm(phi);
    }
    if (ctx->needs_input_grad(1)) gw = g.t().mm(twice ? x * s : scale_columns(x, s));
    if (ctx->needs_input_grad(2)) gb = g.sum(0);
    return {gx, gw, gb, Tensor(), Tensor()};
  }
};

}  // namespace

// F.linear(x, mixout(w, u, p), b) for a checked 0 < p < 1; x (..., in).
Tensor mixout_linear(const Tensor& x, const Tensor& w, const c10::optional<Tensor>& b, const c10::optional<Tensor>& u,
                     double p, c10::optional<at::Generator> generator) {
  TORCH_CHECK(w.dim() == 2 && w.device().is_cpu(), "mixout_linear (C++): weight must be a 2-D CPU tensor");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == w.size(1) && x.device().is_cpu() && x.scalar_type() == w.scalar_type(),
              "mixout_linear (C++): x must be a CPU tensor (..., ", w.size(1), ") of the weight's dtype");
  TORCH_CHECK(!u.has_value() || (u->sizes() == w.sizes() && u->device().is_cpu() && u->scalar_type() == w.scalar_type()),
              "mixout_linear (C++): target must have the weight's shape, dtype and device");
  TORCH_CHECK(0.0 < p && p < 1.0, "mixout_linear (C++): p must be in (0, 1), got ", p);
  auto s = torch::empty({w.size(1)}, w.options().requires_grad(false));
  s.bernoulli_(1.0 - p, generator);  // the mask B of mixing.neuron_mask(w, p, generator)
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "mask_scale", [&] {
    const auto c = static_cast<scalar_t>(1.0 / (1.0 - p));  // B / (1 - p), as B.mul_(1 / (1 - p))
    scalar_t* sp = s.data_ptr<scalar_t>();
    for (int64_t j = 0; j < s.numel(); ++j) sp[j] *= c;
  });
  auto contiguous = [](const Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); };
  const Tensor x2 = contiguous(x.dim() == 2 ? x : x.reshape({-1, w.size(1)}));
  const c10::optional<Tensor> uc = u.has_value() ? c10::optional<Tensor>(contiguous(*u)) : c10::nullopt;
  auto y = MixoutLinear::apply(x2, contiguous(w), b, uc, s);
  if (x.dim() == 2) return y;
  auto shape = x.sizes().vec();
  shape.back() = w.size(0);
  return y.reshape(shape);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("mixout_linear", &mixout_linear, "F.linear(x, mixout(w, u, p), b), fused (Lee, Cho, Kang, ICLR 2020, eq. 8)",
        pybind11::arg("x"), pybind11::arg("weight"), pybind11::arg("bias"), pybind11::arg("target"), pybind11::arg("p"),
        pybind11::arg("generator"));
}
