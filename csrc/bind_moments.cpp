// Binding of the moments family: validates every argument, releases the GIL, calls the CPU or
// CUDA driver. No math here.
#include <pybind11/pybind11.h>

#include <string>

#include "dispatch.hpp"
#include "orbitcore/cpu/moments.hpp"
#include "tensor_arg.hpp"
#if defined(ORBITCORE_WITH_CUDA)
#include "orbitcore/cuda/moments.hpp"
#endif

namespace orbitcore {
namespace binding {
namespace {

bool is_real(const std::string& dt) { return dt == "float32" || dt == "float64"; }

void moments_accumulate(py::object data, py::object columns, py::object gram, py::object sums,
                        int num_threads, const std::string& simd, std::uintptr_t stream) {
  const std::string op = "moments_accumulate";
  const auto x = parse(data, op, "data");
  const auto c = parse(columns, op, "columns");
  const auto g = parse(gram, op, "gram");
  const auto s = parse(sums, op, "sums");
  expect_dim(x, 2, "(B, L)");
  if (!is_real(x.dtype)) fail(op, "data must be float32 or float64, got " + x.dtype);
  expect_contiguous(x);
  expect_dim(c, 1, "(p,)");
  expect_dtype(c, "int64");
  expect_contiguous(c);
  const auto p = c.size(0);
  expect_shape(g, {p, p}, "(p, p)");
  if (!is_real(g.dtype)) fail(op, "gram must be float32 or float64, got " + g.dtype);
  if (x.dtype == "float64" && g.dtype == "float32")
    fail(op, "gram must be float64 for float64 data (the accumulator may not be narrower), got float32");
  expect_contiguous(g);
  expect_shape(s, {p}, "(p,)");
  expect_dtype(s, g.dtype);
  expect_contiguous(s);
  for (const TensorArg* t : {&c, &g, &s}) expect_same_device(x, *t);
  const auto B = x.size(0), L = x.size(1);
  // Bounds of the gather: every column index must address a column of data.
  if (p > 0 && !x.is_cuda()) {
    const auto* cp = c.data<std::int64_t>();
    for (std::int64_t i = 0; i < p; ++i)
      if (cp[i] < 0 || cp[i] >= L)
        fail(op, "columns[" + std::to_string(i) + "] = " + std::to_string(cp[i]) +
                     " is out of range for data with L = " + std::to_string(L) + " columns");
  }
  if (x.is_cuda()) {
    enter_cuda(x);
  }
  const cpu::SimdLevel level = simd_level(op, simd, x.is_cuda());
  py::gil_scoped_release nogil;
  const auto* cols = c.data<std::int64_t>();
  if (x.is_cuda()) {
#if defined(ORBITCORE_WITH_CUDA)
    auto st = reinterpret_cast<cuda::stream_t>(stream);
    if (x.dtype == "float32" && g.dtype == "float32")
      cuda::moments_accumulate<float, float>(x.data<float>(), B, L, cols, p, g.data<float>(), s.data<float>(), st);
    else if (x.dtype == "float32")
      cuda::moments_accumulate<float, double>(x.data<float>(), B, L, cols, p, g.data<double>(), s.data<double>(), st);
    else
      cuda::moments_accumulate<double, double>(x.data<double>(), B, L, cols, p, g.data<double>(), s.data<double>(), st);
#endif
    return;
  }
  if (x.dtype == "float32" && g.dtype == "float32")
    cpu::moments_accumulate<float, float>(x.data<float>(), B, L, cols, p, g.data<float>(), s.data<float>(),
                                          num_threads, level);
  else if (x.dtype == "float32")
    cpu::moments_accumulate<float, double>(x.data<float>(), B, L, cols, p, g.data<double>(),
                                           s.data<double>(), num_threads, level);
  else
    cpu::moments_accumulate<double, double>(x.data<double>(), B, L, cols, p, g.data<double>(),
                                            s.data<double>(), num_threads, level);
}

void moments_finalize(py::object gram, py::object sums, py::object slots, py::object phase,
                      double count, double noise, py::object m1, py::object m2, int num_threads,
                      std::uintptr_t stream) {
  const std::string op = "moments_finalize";
  const auto g = parse(gram, op, "gram");
  const auto s = parse(sums, op, "sums");
  const auto sl = parse(slots, op, "slots");
  const auto ph = parse(phase, op, "phase");
  const auto o1 = parse(m1, op, "m1");
  const auto o2 = parse(m2, op, "m2");
  expect_dim(g, 2, "(p, p)");
  const auto p = g.size(0);
  expect_shape(g, {p, p}, "(p, p)");
  if (!is_real(g.dtype)) fail(op, "gram must be float32 or float64, got " + g.dtype);
  expect_contiguous(g);
  expect_shape(s, {p}, "(p,)");
  expect_dtype(s, g.dtype);
  expect_contiguous(s);
  expect_dim(sl, 2, "(m, 3)");
  if (sl.size(1) != 3) fail(op, "slots must have shape (m, 3), got " + shape_str(sl.shape));
  expect_dtype(sl, "int32");
  expect_contiguous(sl);
  const auto m = sl.size(0);
  expect_shape(ph, {m, 2}, "(m, 2)");
  expect_dtype(ph, g.dtype);
  expect_contiguous(ph);
  const std::string cdt = complex_dtype(g.dtype);
  expect_shape(o1, {m}, "(m,)");
  expect_dtype(o1, cdt);
  expect_contiguous(o1);
  expect_shape(o2, {m, m}, "(m, m)");
  expect_dtype(o2, cdt);
  expect_contiguous(o2);
  for (const TensorArg* t : {&s, &sl, &ph, &o1, &o2}) expect_same_device(g, *t);
  if (!(count >= 0)) fail(op, "count must be >= 0, got " + std::to_string(count));
  if (!g.is_cuda()) {
    // Bounds of every slot (the element math indexes G with them).
    const auto* t = sl.data<std::int32_t>();
    for (std::int64_t u = 0; u < m; ++u) {
      const int re = t[3 * u], im = t[3 * u + 1], sg = t[3 * u + 2];
      if (re < 0 || re >= p || im < -1 || im >= p || (sg != 1 && sg != -1))
        fail(op, "slots[" + std::to_string(u) + "] = (" + std::to_string(re) + ", " + std::to_string(im) +
                     ", " + std::to_string(sg) + ") is invalid for p = " + std::to_string(p) +
                     " (need 0 <= re < p, -1 <= im < p, sign = +-1)");
    }
  }
  if (g.is_cuda()) enter_cuda(g);
  py::gil_scoped_release nogil;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    if (g.is_cuda()) {
#if defined(ORBITCORE_WITH_CUDA)
      cuda::moments_finalize<T>(g.data<T>(), s.data<T>(), p, sl.data<std::int32_t>(), ph.data<T>(), m,
                                count, noise, o1.data<T>(), o2.data<T>(),
                                reinterpret_cast<cuda::stream_t>(stream));
#endif
    } else {
      cpu::moments_finalize<T>(g.data<T>(), s.data<T>(), p, sl.data<std::int32_t>(), ph.data<T>(), m,
                               count, noise, o1.data<T>(), o2.data<T>(), num_threads);
    }
  };
  if (g.dtype == "float32")
    run(float{});
  else
    run(double{});
}

void moments_real_target(py::object matrix, py::object index, py::object coefficients, py::object out,
                         int num_threads, std::uintptr_t stream) {
  const std::string op = "moments_real_target";
  const auto a = parse(matrix, op, "matrix");
  const auto ix = parse(index, op, "index");
  const auto cf = parse(coefficients, op, "coefficients");
  const auto o = parse(out, op, "out");
  expect_dim(a, 2, "(m, m)");
  const auto m = a.size(0);
  expect_shape(a, {m, m}, "(m, m)");
  if (a.dtype != "complex64" && a.dtype != "complex128")
    fail(op, "matrix must be complex64 or complex128, got " + a.dtype);
  expect_contiguous(a);
  const std::string real = real_dtype(a.dtype);
  expect_dim(ix, 2, "(p, 2)");
  const auto p = ix.size(0);
  expect_shape(ix, {p, 2}, "(p, 2)");
  expect_dtype(ix, "int64");
  expect_contiguous(ix);
  expect_shape(cf, {p, 2, 2}, "(p, 2, 2)");
  expect_dtype(cf, real);
  expect_contiguous(cf);
  expect_shape(o, {p, p}, "(p, p)");
  expect_dtype(o, real);
  expect_contiguous(o);
  for (const TensorArg* t : {&ix, &cf, &o}) expect_same_device(a, *t);
  if (!a.is_cuda()) {
    const auto* ip = ix.data<std::int64_t>();
    for (std::int64_t i = 0; i < 2 * p; ++i)
      if (ip[i] < 0 || ip[i] >= m)
        fail(op, "index[" + std::to_string(i / 2) + ", " + std::to_string(i % 2) + "] = " + std::to_string(ip[i]) +
                     " is out of range for m = " + std::to_string(m));
  }
  if (a.is_cuda()) enter_cuda(a);
  py::gil_scoped_release nogil;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    if (a.is_cuda()) {
#if defined(ORBITCORE_WITH_CUDA)
      cuda::moments_real_target<T>(a.data<T>(), m, ix.data<std::int64_t>(), cf.data<T>(), p, o.data<T>(),
                                   reinterpret_cast<cuda::stream_t>(stream));
#endif
    } else {
      cpu::moments_real_target<T>(a.data<T>(), m, ix.data<std::int64_t>(), cf.data<T>(), p, o.data<T>(),
                                  num_threads);
    }
  };
  if (real == "float32")
    run(float{});
  else
    run(double{});
}

}  // namespace

void bind_moments(py::module_& m) {
  m.def("moments_real_target", &moments_real_target, py::arg("matrix"), py::arg("index"),
        py::arg("coefficients"), py::arg("out"), py::arg("num_threads"), py::arg("stream"),
        "out[r, t] = Re sum conj(c_a[r]) c_b[t] Ah[i_a[r], i_b[t]] (Ah the Hermitian part of matrix): "
        "the data matrix in the real basis of Hermitian-symmetric slices; see orbitcore.moment_loss.");
  m.def("moments_accumulate", &moments_accumulate, py::arg("data"), py::arg("columns"), py::arg("gram"),
        py::arg("sums"), py::arg("num_threads"), py::arg("simd"), py::arg("stream"),
        "gram[r, c] += sum_b data[b, columns[r]] * data[b, columns[c]] (lower triangle), "
        "sums[i] += sum_b data[b, columns[i]]; see orbitcore.MomentAccumulator.");
  m.def("moments_finalize", &moments_finalize, py::arg("gram"), py::arg("sums"), py::arg("slots"),
        py::arg("phase"), py::arg("count"), py::arg("noise"), py::arg("m1"), py::arg("m2"),
        py::arg("num_threads"), py::arg("stream"),
        "Fourier moments M1 (m,), M2 (m, m) from the real-basis sums (fills gram's upper triangle with "
        "the mirror of its lower one); see orbitcore.MomentAccumulator.");
  m.def(
      "cpu_simd", [](const std::string& name) { return std::string(cpu::simd_name(cpu::parse_simd(name))); },
      py::arg("name") = "auto",
      "The SIMD variant of the CPU moments kernel that `name` resolves to on this CPU "
      "(auto -> the best available); raises ValueError for an unsupported one.");
}

}  // namespace binding
}  // namespace orbitcore
