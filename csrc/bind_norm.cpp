// Binding of the norm family (batch normalisation fused with ReLU, optionally with 2×2 max
// pooling): validates every argument, releases the GIL, calls the CPU or CUDA driver. No math.
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "dispatch.hpp"
#include "orbitcore/cpu/norm.hpp"
#include "tensor_arg.hpp"
#if defined(ORBITCORE_WITH_CUDA)
#include "orbitcore/cuda/norm.hpp"
#endif

namespace orbitcore {
namespace binding {
namespace {

// The activations' geometry: (M, C) rows, or with 2×2 pooling an (N, H, W, C) grid of rows.
struct Layout {
  index_t M, C;
  bool pooled;
  norm::Pool2 pool;
  const norm::Pool2* pool_ptr() const { return pooled ? &pool : nullptr; }
  // The shape of y and dy: x's, or the pooled (N, H/2, W/2, C).
  std::vector<std::int64_t> out_shape(const TensorArg& x) const {
    if (!pooled) return x.shape;
    return {pool.N, pool.H / 2, pool.W / 2, C};
  }
};

// x: (M, C) (or (N, H, W, C) with H, W >= 2 when pooled), real and contiguous, with more than
// one row (a variance needs two values).
Layout check_activations(const TensorArg& x, bool pooled) {
  expect_dim(x, pooled ? 4 : 2, pooled ? "(N, H, W, C)" : "(M, C)");
  expect_real(x);
  expect_contiguous(x);
  Layout g{};
  g.pooled = pooled;
  g.C = x.size(-1);
  g.M = x.numel() / (g.C > 0 ? g.C : 1);
  if (g.C < 1) fail(x.op, x.name + " must have at least one channel, got shape " + shape_str(x.shape));
  if (pooled) {
    g.pool = norm::Pool2{x.size(0), x.size(1), x.size(2)};
    if (g.pool.H < 2 || g.pool.W < 2)
      fail(x.op, x.name + " must be at least 2 x 2 for 2 x 2 pooling, got shape " + shape_str(x.shape));
  }
  if (g.M < 2)
    fail(x.op, x.name + " needs more than one value per channel in training mode, got shape " + shape_str(x.shape));
  return g;
}

void check_channel(const TensorArg& t, const TensorArg& x, index_t C) {
  expect_shape(t, {C}, "(C,)");
  expect_dtype(t, x.dtype);
  expect_contiguous(t);
  expect_same_device(x, t);
}

void check_like(const TensorArg& t, const TensorArg& x, const std::vector<std::int64_t>& shape, const char* layout) {
  expect_shape(t, shape, layout);
  expect_dtype(t, x.dtype);
  expect_contiguous(t);
  expect_same_device(x, t);
}

void check_eps(const std::string& op, double eps) {
  if (!(eps > 0.0) || !std::isfinite(eps)) fail(op, "eps must be a positive finite number, got " + std::to_string(eps));
}

// CUDA calls need a float64 workspace of at least 8 C values on the same device.
void check_workspace(const TensorArg& ws, const TensorArg& x, index_t C) {
  if (!x.is_cuda()) return;
  if (!ws.present) fail(x.op, "CUDA calls need a workspace (see orbitcore.ops.norm)");
  expect_dtype(ws, "float64");
  expect_contiguous(ws);
  expect_same_device(x, ws);
  if (ws.numel() < 8 * C)
    fail(x.op, "workspace too small: it needs at least 8 * C = " + std::to_string(8 * C) + " values, got " +
                   std::to_string(ws.numel()));
}

void forward_impl(const std::string& op, bool pooled, py::object x_, py::object gamma_, py::object beta_, double eps,
                  py::object y_, py::object mean_, py::object var_, py::object ws_, int num_threads,
                  const std::string& simd, std::uintptr_t stream) {
  const auto x = parse(x_, op, "x");
  const auto gamma = parse(gamma_, op, "weight");
  const auto beta = parse(beta_, op, "bias");
  const auto y = parse(y_, op, "out");
  const auto mean = parse(mean_, op, "mean");
  const auto var = parse(var_, op, "var");
  const auto ws = parse(ws_, op, "workspace", true);
  const Layout g = check_activations(x, pooled);
  check_eps(op, eps);
  for (const TensorArg* t : {&gamma, &beta, &mean, &var}) check_channel(*t, x, g.C);
  check_like(y, x, g.out_shape(x), pooled ? "(N, H/2, W/2, C)" : "(M, C)");
  check_workspace(ws, x, g.C);
  const cpu::SimdLevel level = simd_level(op, simd, x.is_cuda());
  if (x.is_cuda()) enter_cuda(x);
  py::gil_scoped_release nogil;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    if (x.is_cuda()) {
#if defined(ORBITCORE_WITH_CUDA)
      cuda::batch_norm_relu_forward<T>(x.data<T>(), g.M, g.C, gamma.data<T>(), beta.data<T>(), eps, y.data<T>(),
                                       mean.data<T>(), var.data<T>(), ws.data<double>(),
                                       reinterpret_cast<cuda::stream_t>(stream), g.pool_ptr());
#endif
    } else {
      cpu::batch_norm_relu_forward<T>(x.data<T>(), g.M, g.C, gamma.data<T>(), beta.data<T>(), eps, y.data<T>(),
                                      mean.data<T>(), var.data<T>(), num_threads, g.pool_ptr(), level);
    }
  };
  if (x.dtype == "float32")
    run(float{});
  else
    run(double{});
}

void backward_impl(const std::string& op, bool pooled, py::object dy_, py::object x_, py::object gamma_,
                   py::object beta_, py::object mean_, py::object var_, double eps, py::object dx_,
                   py::object dgamma_, py::object dbeta_, py::object ws_, int num_threads, const std::string& simd,
                   std::uintptr_t stream) {
  const auto dy = parse(dy_, op, "grad");
  const auto x = parse(x_, op, "x");
  const auto gamma = parse(gamma_, op, "weight");
  const auto beta = parse(beta_, op, "bias");
  const auto mean = parse(mean_, op, "mean");
  const auto var = parse(var_, op, "var");
  const auto dx = parse(dx_, op, "grad_x", true);
  const auto dgamma = parse(dgamma_, op, "grad_weight");
  const auto dbeta = parse(dbeta_, op, "grad_bias");
  const auto ws = parse(ws_, op, "workspace", true);
  const Layout g = check_activations(x, pooled);
  check_eps(op, eps);
  check_like(dy, x, g.out_shape(x), pooled ? "(N, H/2, W/2, C)" : "(M, C)");
  if (dx.present) check_like(dx, x, x.shape, pooled ? "(N, H, W, C)" : "(M, C)");
  for (const TensorArg* t : {&gamma, &beta, &mean, &var, &dgamma, &dbeta}) check_channel(*t, x, g.C);
  check_workspace(ws, x, g.C);
  const cpu::SimdLevel level = simd_level(op, simd, x.is_cuda());
  if (x.is_cuda()) enter_cuda(x);
  py::gil_scoped_release nogil;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    T* dxp = dx.present ? dx.data<T>() : nullptr;
    if (x.is_cuda()) {
#if defined(ORBITCORE_WITH_CUDA)
      cuda::batch_norm_relu_backward<T>(dy.data<T>(), x.data<T>(), g.M, g.C, gamma.data<T>(), beta.data<T>(),
                                        mean.data<T>(), var.data<T>(), eps, dxp, dgamma.data<T>(), dbeta.data<T>(),
                                        ws.data<double>(), reinterpret_cast<cuda::stream_t>(stream), g.pool_ptr());
#endif
    } else {
      cpu::batch_norm_relu_backward<T>(dy.data<T>(), x.data<T>(), g.M, g.C, gamma.data<T>(), beta.data<T>(),
                                       mean.data<T>(), var.data<T>(), eps, dxp, dgamma.data<T>(), dbeta.data<T>(),
                                       num_threads, g.pool_ptr(), level);
    }
  };
  if (x.dtype == "float32")
    run(float{});
  else
    run(double{});
}

// One binding per entry point and layout: (M, C), and (N, H, W, C) with 2×2 pooling.
template <bool Pooled>
void forward_entry(py::object x, py::object gamma, py::object beta, double eps, py::object y, py::object mean,
                   py::object var, py::object ws, int num_threads, const std::string& simd, std::uintptr_t stream) {
  forward_impl(Pooled ? "batch_norm_relu_pool2_forward" : "batch_norm_relu_forward", Pooled, x, gamma, beta, eps, y,
               mean, var, ws, num_threads, simd, stream);
}

template <bool Pooled>
void backward_entry(py::object dy, py::object x, py::object gamma, py::object beta, py::object mean, py::object var,
                    double eps, py::object dx, py::object dgamma, py::object dbeta, py::object ws, int num_threads,
                    const std::string& simd, std::uintptr_t stream) {
  backward_impl(Pooled ? "batch_norm_relu_pool2_backward" : "batch_norm_relu_backward", Pooled, dy, x, gamma, beta,
                mean, var, eps, dx, dgamma, dbeta, ws, num_threads, simd, stream);
}

}  // namespace

void bind_norm(py::module_& m) {
  const char* fwd_doc[2] = {
      "Training-mode batch norm + ReLU of (M, C) activations: out, and the batch mean and biased variance.",
      "Training-mode batch norm + ReLU + 2x2 max pooling of (N, H, W, C) activations: out (N, H/2, W/2, C), "
      "and the batch mean and biased variance."};
  const char* bwd_doc[2] = {"Backward of batch_norm_relu_forward (grad_x may be None when not wanted).",
                            "Backward of batch_norm_relu_pool2_forward from the pooled gradient (N, H/2, W/2, C) "
                            "(grad_x may be None when not wanted)."};
  auto def_pair = [&](const char* fwd, const char* bwd, auto f, auto b, int d) {
    m.def(fwd, f, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("eps"), py::arg("out"), py::arg("mean"),
          py::arg("var"), py::arg("workspace"), py::arg("num_threads"), py::arg("simd"), py::arg("stream"), fwd_doc[d]);
    m.def(bwd, b, py::arg("grad"), py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("mean"), py::arg("var"),
          py::arg("eps"), py::arg("grad_x"), py::arg("grad_weight"), py::arg("grad_bias"), py::arg("workspace"),
          py::arg("num_threads"), py::arg("simd"), py::arg("stream"), bwd_doc[d]);
  };
  def_pair("batch_norm_relu_forward", "batch_norm_relu_backward", &forward_entry<false>, &backward_entry<false>, 0);
  def_pair("batch_norm_relu_pool2_forward", "batch_norm_relu_pool2_backward", &forward_entry<true>,
           &backward_entry<true>, 1);
}

}  // namespace binding
}  // namespace orbitcore
