// Binding of the sine family (the SIREN activation y = sin(w0 · a) and its backward): validates
// every argument, releases the GIL, calls the CPU or CUDA driver. No math.
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "dispatch.hpp"
#include "orbitcore/cpu/sine.hpp"
#include "tensor_arg.hpp"
#if defined(ORBITCORE_WITH_CUDA)
#include "orbitcore/cuda/sine.hpp"
#endif

namespace orbitcore {
namespace binding {
namespace {

void check_w0(const std::string& op, double w0) {
  if (!std::isfinite(w0)) fail(op, "w0 must be a finite number, got " + std::to_string(w0));
}

// t: the same shape, dtype and device as a, contiguous.
void check_like(const TensorArg& t, const TensorArg& a) {
  expect_shape(t, a.shape, shape_str(a.shape));
  expect_dtype(t, a.dtype);
  expect_contiguous(t);
  expect_same_device(a, t);
}

void check_input(const TensorArg& a) {
  expect_real(a);
  expect_contiguous(a);
}

// Runs body(T{}, level) with the GIL released, T the storage type of `a` (float or double) and
// `level` the CPU variant (after the CUDA device of `a` is entered, when it is on one).
template <typename Body>
void run_typed(const std::string& op, const TensorArg& a, const std::string& simd, Body body) {
  const cpu::SimdLevel level = simd_level(op, simd, a.is_cuda());
  if (a.is_cuda()) enter_cuda(a);
  py::gil_scoped_release nogil;
  if (a.dtype == "float32")
    body(float{}, level);
  else
    body(double{}, level);
}

void forward_entry(py::object a_, double w0, py::object y_, int num_threads, const std::string& simd,
                   std::uintptr_t stream) {
  const std::string op = "sine_forward";
  const auto a = parse(a_, op, "x");
  const auto y = parse(y_, op, "out");
  check_input(a);
  check_like(y, a);
  check_w0(op, w0);
  run_typed(op, a, simd, [&](auto tag, cpu::SimdLevel level) {
    using T = decltype(tag);
    if (a.is_cuda()) {
#if defined(ORBITCORE_WITH_CUDA)
      cuda::sine_forward<T>(a.data<T>(), a.numel(), w0, y.data<T>(), reinterpret_cast<cuda::stream_t>(stream));
#endif
    } else {
      cpu::sine_forward<T>(a.data<T>(), a.numel(), w0, y.data<T>(), num_threads, level);
    }
  });
}

void backward_entry(py::object dy_, py::object a_, double w0, py::object da_, int num_threads,
                    const std::string& simd, std::uintptr_t stream) {
  const std::string op = "sine_backward";
  const auto dy = parse(dy_, op, "grad");
  const auto a = parse(a_, op, "x");
  const auto da = parse(da_, op, "grad_x");
  check_input(a);
  check_like(dy, a);
  check_like(da, a);
  check_w0(op, w0);
  run_typed(op, a, simd, [&](auto tag, cpu::SimdLevel level) {
    using T = decltype(tag);
    if (a.is_cuda()) {
#if defined(ORBITCORE_WITH_CUDA)
      cuda::sine_backward<T>(dy.data<T>(), a.data<T>(), a.numel(), w0, da.data<T>(),
                             reinterpret_cast<cuda::stream_t>(stream));
#endif
    } else {
      cpu::sine_backward<T>(dy.data<T>(), a.data<T>(), a.numel(), w0, da.data<T>(), num_threads, level);
    }
  });
}

}  // namespace

void bind_sine(py::module_& m) {
  m.def("sine_forward", &forward_entry, py::arg("x"), py::arg("w0"), py::arg("out"), py::arg("num_threads"),
        py::arg("simd"), py::arg("stream"), "SIREN activation: out = sin(w0 * x), elementwise (real, contiguous).");
  m.def("sine_backward", &backward_entry, py::arg("grad"), py::arg("x"), py::arg("w0"), py::arg("grad_x"),
        py::arg("num_threads"), py::arg("simd"), py::arg("stream"),
        "Backward of sine_forward: grad_x = grad * w0 * cos(w0 * x).");
}

}  // namespace binding
}  // namespace orbitcore
