// Binding of the norm family (batch normalisation fused with ReLU): validates every argument,
// releases the GIL, calls the CPU or CUDA driver. No math.
#include <pybind11/pybind11.h>

#include <cmath>

#include "dispatch.hpp"
#include "orbitcore/cpu/norm.hpp"
#include "tensor_arg.hpp"
#if defined(ORBITCORE_WITH_CUDA)
#include "orbitcore/cuda/norm.hpp"
#endif

namespace orbitcore {
namespace binding {
namespace {

// (M, C) activations, real and contiguous, with M >= 2 (a variance needs two values).
void check_activations(const TensorArg& x) {
  expect_dim(x, 2, "(M, C)");
  expect_real(x);
  expect_contiguous(x);
  if (x.size(1) < 1) fail(x.op, x.name + " must have at least one channel, got shape " + shape_str(x.shape));
  if (x.size(0) < 2)
    fail(x.op, x.name + " needs more than one value per channel in training mode, got shape " + shape_str(x.shape));
}

void check_channel(const TensorArg& t, const TensorArg& x) {
  expect_shape(t, {x.size(1)}, "(C,)");
  expect_dtype(t, x.dtype);
  expect_contiguous(t);
  expect_same_device(x, t);
}

void check_like(const TensorArg& t, const TensorArg& x) {
  expect_shape(t, x.shape, "(M, C)");
  expect_dtype(t, x.dtype);
  expect_contiguous(t);
  expect_same_device(x, t);
}

void check_eps(const std::string& op, double eps) {
  if (!(eps > 0.0) || !std::isfinite(eps)) fail(op, "eps must be a positive finite number, got " + std::to_string(eps));
}

// CUDA calls need a float64 workspace of at least 8 C values on the same device.
void check_workspace(const TensorArg& ws, const TensorArg& x) {
  if (!x.is_cuda()) return;
  if (!ws.present) fail(x.op, "CUDA calls need a workspace (see orbitcore.ops.norm)");
  expect_dtype(ws, "float64");
  expect_contiguous(ws);
  expect_same_device(x, ws);
  if (ws.numel() < 8 * x.size(1))
    fail(x.op, "workspace too small: it needs at least 8 * C = " + std::to_string(8 * x.size(1)) + " values, got " +
                   std::to_string(ws.numel()));
}

void batch_norm_relu_forward(py::object x_, py::object gamma_, py::object beta_, double eps, py::object y_,
                             py::object mean_, py::object var_, py::object ws_, int num_threads,
                             std::uintptr_t stream) {
  const std::string op = "batch_norm_relu_forward";
  const auto x = parse(x_, op, "x");
  const auto gamma = parse(gamma_, op, "weight");
  const auto beta = parse(beta_, op, "bias");
  const auto y = parse(y_, op, "out");
  const auto mean = parse(mean_, op, "mean");
  const auto var = parse(var_, op, "var");
  const auto ws = parse(ws_, op, "workspace", true);
  check_activations(x);
  check_eps(op, eps);
  for (const TensorArg* t : {&gamma, &beta, &mean, &var}) check_channel(*t, x);
  check_like(y, x);
  check_workspace(ws, x);
  const auto M = x.size(0), C = x.size(1);
  if (x.is_cuda()) enter_cuda(x);
  py::gil_scoped_release nogil;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    if (x.is_cuda()) {
#if defined(ORBITCORE_WITH_CUDA)
      cuda::batch_norm_relu_forward<T>(x.data<T>(), M, C, gamma.data<T>(), beta.data<T>(), eps, y.data<T>(),
                                       mean.data<T>(), var.data<T>(), ws.data<double>(),
                                       reinterpret_cast<cuda::stream_t>(stream));
#endif
    } else {
      cpu::batch_norm_relu_forward<T>(x.data<T>(), M, C, gamma.data<T>(), beta.data<T>(), eps, y.data<T>(),
                                      mean.data<T>(), var.data<T>(), num_threads);
    }
  };
  if (x.dtype == "float32")
    run(float{});
  else
    run(double{});
}

void batch_norm_relu_backward(py::object dy_, py::object x_, py::object gamma_, py::object beta_, py::object mean_,
                              py::object var_, double eps, py::object dx_, py::object dgamma_, py::object dbeta_,
                              py::object ws_, int num_threads, std::uintptr_t stream) {
  const std::string op = "batch_norm_relu_backward";
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
  check_activations(x);
  check_eps(op, eps);
  check_like(dy, x);
  if (dx.present) check_like(dx, x);
  for (const TensorArg* t : {&gamma, &beta, &mean, &var, &dgamma, &dbeta}) check_channel(*t, x);
  check_workspace(ws, x);
  const auto M = x.size(0), C = x.size(1);
  if (x.is_cuda()) enter_cuda(x);
  py::gil_scoped_release nogil;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    T* dxp = dx.present ? dx.data<T>() : nullptr;
    if (x.is_cuda()) {
#if defined(ORBITCORE_WITH_CUDA)
      cuda::batch_norm_relu_backward<T>(dy.data<T>(), x.data<T>(), M, C, gamma.data<T>(), beta.data<T>(),
                                        mean.data<T>(), var.data<T>(), eps, dxp, dgamma.data<T>(), dbeta.data<T>(),
                                        ws.data<double>(), reinterpret_cast<cuda::stream_t>(stream));
#endif
    } else {
      cpu::batch_norm_relu_backward<T>(dy.data<T>(), x.data<T>(), M, C, gamma.data<T>(), beta.data<T>(),
                                       mean.data<T>(), var.data<T>(), eps, dxp, dgamma.data<T>(), dbeta.data<T>(),
                                       num_threads);
    }
  };
  if (x.dtype == "float32")
    run(float{});
  else
    run(double{});
}

}  // namespace

void bind_norm(py::module_& m) {
  m.def("batch_norm_relu_forward", &batch_norm_relu_forward, py::arg("x"), py::arg("weight"), py::arg("bias"),
        py::arg("eps"), py::arg("out"), py::arg("mean"), py::arg("var"), py::arg("workspace"),
        py::arg("num_threads"), py::arg("stream"),
        "Training-mode batch norm + ReLU of (M, C) activations: out, and the batch mean and biased variance.");
  m.def("batch_norm_relu_backward", &batch_norm_relu_backward, py::arg("grad"), py::arg("x"), py::arg("weight"),
        py::arg("bias"), py::arg("mean"), py::arg("var"), py::arg("eps"), py::arg("grad_x"), py::arg("grad_weight"),
        py::arg("grad_bias"), py::arg("workspace"), py::arg("num_threads"), py::arg("stream"),
        "Backward of batch_norm_relu_forward (grad_x may be None when not wanted).");
}

}  // namespace binding
}  // namespace orbitcore
