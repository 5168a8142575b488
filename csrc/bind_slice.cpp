// Binding of the slice family: validates every argument, releases the GIL, calls the CPU or
// CUDA driver. No math here.
#include <pybind11/pybind11.h>

#include "dispatch.hpp"
#include "orbitcore/cpu/slice.hpp"
#include "tensor_arg.hpp"
#if defined(ORBITCORE_WITH_CUDA)
#include "orbitcore/cuda/slice.hpp"
#endif

namespace orbitcore {
namespace binding {
namespace {

struct VolumeInfo {
  std::int64_t V, D;
  std::string real;
  bool half;  // a half volume (V, D, D, D/2 + 1), orbitcore/slice.hpp "Half volumes"
};

// Whether a last axis of length W makes a (.., D, D, W) volume a half volume; fails if it is
// neither a full nor a half volume.
bool is_half(const std::string& op, const std::string& name, std::int64_t D, std::int64_t W,
             const std::vector<std::int64_t>& shape) {
  if (W == D) return false;
  if (D % 2 == 0 && D >= 4 && W == D / 2 + 1) return true;
  fail(op, name + " must be a cube (.., D, D, D) or a half volume (.., D, D, D/2 + 1) of even D >= 4, got " +
               shape_str(shape));
  return false;
}

VolumeInfo check_volume(const TensorArg& vol, bool allow_half = false) {
  expect_dim(vol, 4, allow_half ? "(V, D, D, D) or (V, D, D, D/2 + 1)" : "(V, D, D, D)");
  const auto D = vol.size(1);
  if (vol.size(2) != D || (!allow_half && vol.size(3) != D))
    fail(vol.op, vol.name + " must be a cube (V, D, D, D), got " + shape_str(vol.shape));
  const bool half = allow_half && is_half(vol.op, vol.name, D, vol.size(3), vol.shape);
  if (D < 2) fail(vol.op, vol.name + " side D must be at least 2, got " + std::to_string(D));
  if (vol.dtype != "complex64" && vol.dtype != "complex128")
    fail(vol.op, vol.name + " must be complex64 or complex128, got " + vol.dtype);
  expect_contiguous(vol);
  return {vol.size(0), D, real_dtype(vol.dtype), half};
}

void check_rotations(const TensorArg& rot, const std::string& real) {
  expect_dim(rot, 3, "(B, 3, 3)");
  if (rot.size(1) != 3 || rot.size(2) != 3)
    fail(rot.op, rot.name + " must have shape (B, 3, 3), got " + shape_str(rot.shape));
  expect_dtype(rot, real);
  expect_contiguous(rot);
}

void check_plane(const TensorArg& t, std::int64_t B, std::int64_t n, const std::string& dtype) {
  expect_shape(t, {B, n, n}, "(B, n, n)");
  expect_dtype(t, dtype);
  expect_contiguous(t);
}

void slice_forward(py::object volume, py::object rotations, py::object out, std::int64_t size,
                   double radius2, bool hermitian, int num_threads, std::uintptr_t stream) {
  const std::string op = "slice_forward";
  const auto vol = parse(volume, op, "volume");
  const auto rot = parse(rotations, op, "rotations");
  const auto o = parse(out, op, "out");
  const auto vi = check_volume(vol, true);
  check_rotations(rot, vi.real);
  const auto B = rot.size(0);
  if (vi.V != 1 && vi.V != B)
    fail(op, "volume batch V must be 1 or match rotations' B = " + std::to_string(B) + ", got " +
                 std::to_string(vi.V));
  if (size < 1) fail(op, "size must be >= 1, got " + std::to_string(size));
  check_plane(o, B, size, vol.dtype);
  expect_same_device(vol, rot);
  expect_same_device(vol, o);
  const int D = static_cast<int>(vi.D), n = static_cast<int>(size);
  if (vol.is_cuda()) enter_cuda(vol);
  py::gil_scoped_release nogil;
  if (vi.real == "float32") {
    if (vol.is_cuda()) {
#if defined(ORBITCORE_WITH_CUDA)
      cuda::slice_forward<float>(vol.data<float>(), vi.V, D, vi.half, rot.data<float>(), B, n,
                                 static_cast<float>(radius2), hermitian, o.data<float>(),
                                 reinterpret_cast<cuda::stream_t>(stream));
#endif
    } else {
      cpu::slice_forward<float>(vol.data<float>(), vi.V, D, vi.half, rot.data<float>(), B, n,
                                static_cast<float>(radius2), hermitian, o.data<float>(), num_threads);
    }
  } else {
    if (vol.is_cuda()) {
#if defined(ORBITCORE_WITH_CUDA)
      cuda::slice_forward<double>(vol.data<double>(), vi.V, D, vi.half, rot.data<double>(), B, n, radius2,
                                  hermitian, o.data<double>(), reinterpret_cast<cuda::stream_t>(stream));
#endif
    } else {
      cpu::slice_forward<double>(vol.data<double>(), vi.V, D, vi.half, rot.data<double>(), B, n, radius2,
                                 hermitian, o.data<double>(), num_threads);
    }
  }
}

void slice_backward(py::object grad, py::object weights, py::object volume, py::object rotations,
                    py::object grad_volume, py::object weight_volume, py::object grad_rotations,
                    std::int64_t D_, double radius2, bool hermitian, int num_threads,
                    std::uintptr_t stream) {
  const std::string op = "slice_backward";
  const auto g = parse(grad, op, "grad");
  const auto w = parse(weights, op, "weights", true);
  const auto vol = parse(volume, op, "volume", true);
  const auto rot = parse(rotations, op, "rotations");
  const auto gv = parse(grad_volume, op, "grad_volume", true);
  const auto wv = parse(weight_volume, op, "weight_volume", true);
  const auto gr = parse(grad_rotations, op, "grad_rotations", true);

  expect_dim(g, 3, "(B, n, n)");
  if (g.dtype != "complex64" && g.dtype != "complex128")
    fail(op, "grad must be complex64 or complex128, got " + g.dtype);
  const std::string real = real_dtype(g.dtype);
  check_rotations(rot, real);
  const auto B = rot.size(0), n = g.size(1);
  check_plane(g, B, n, g.dtype);
  if (w.present) check_plane(w, B, n, real);
  if (wv.present && !w.present) fail(op, "weight_volume requires weights");
  std::int64_t V = 1, Vg = 1, D = D_;
  bool half = false;
  if (vol.present) {
    const auto vi = check_volume(vol, true);
    half = vi.half;
    expect_dtype(vol, g.dtype);
    V = vi.V;
    D = vi.D;
    if (V != 1 && V != B) fail(op, "volume batch V must be 1 or B = " + std::to_string(B));
  }
  if (D < 2) fail(op, "volume side D must be at least 2, got " + std::to_string(D));
  if (gr.present) {
    if (!vol.present) fail(op, "grad_rotations requires volume");
    expect_shape(gr, {B, 3, 3}, "(B, 3, 3)");
    expect_dtype(gr, real);
    expect_contiguous(gr);
  }
  if (gv.present) {
    expect_dim(gv, 4, "(Vg, D, D, D)");
    Vg = gv.size(0);
    if (Vg != 1 && Vg != B) fail(op, "grad_volume batch must be 1 or B = " + std::to_string(B));
    if (!vol.present) half = is_half(op, "grad_volume", D, gv.size(3), gv.shape);
    const std::int64_t W = half ? D / 2 + 1 : D;
    expect_shape(gv, {Vg, D, D, W}, half ? "(Vg, D, D, D/2 + 1)" : "(Vg, D, D, D)");
    expect_dtype(gv, g.dtype);
    expect_contiguous(gv);
  }
  if (wv.present) {
    expect_shape(wv, {D, D, D}, "(D, D, D)");
    expect_dtype(wv, real);
    expect_contiguous(wv);
  }
  if (half && (w.present || wv.present)) fail(op, "weights are not supported with half volumes");
  for (const TensorArg* t : {&w, &vol, &rot, &gv, &wv, &gr}) expect_same_device(g, *t);
  const int Di = static_cast<int>(D), ni = static_cast<int>(n);
  if (g.is_cuda()) enter_cuda(g);
  py::gil_scoped_release nogil;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const T* wp = w.present ? w.data<T>() : nullptr;
    const T* vp = vol.present ? vol.data<T>() : nullptr;
    T* gvp = gv.present ? gv.data<T>() : nullptr;
    T* wvp = wv.present ? wv.data<T>() : nullptr;
    T* grp = gr.present ? gr.data<T>() : nullptr;
    if (g.is_cuda()) {
#if defined(ORBITCORE_WITH_CUDA)
      cuda::slice_backward<T>(g.data<T>(), wp, vp, V, Vg, Di, half, rot.data<T>(), B, ni,
                              static_cast<T>(radius2), hermitian, gvp, wvp, grp,
                              reinterpret_cast<cuda::stream_t>(stream));
#endif
    } else {
      cpu::slice_backward<T>(g.data<T>(), wp, vp, V, Vg, Di, half, rot.data<T>(), B, ni,
                             static_cast<T>(radius2), hermitian, gvp, wvp, grp, num_threads);
    }
  };
  if (real == "float32")
    run(float{});
  else
    run(double{});
}

void sample_forward(py::object volume, py::object coords, py::object out, int num_threads,
                    std::uintptr_t stream) {
  const std::string op = "sample_forward";
  const auto vol = parse(volume, op, "volume");
  const auto c = parse(coords, op, "coords");
  const auto o = parse(out, op, "out");
  const auto vi = check_volume(vol);
  expect_dim(c, 3, "(V, P, 3)");
  if (c.size(0) != vi.V || c.size(2) != 3)
    fail(op, "coords must have shape (V, P, 3) with V = " + std::to_string(vi.V) + ", got " +
                 shape_str(c.shape));
  expect_dtype(c, vi.real);
  expect_contiguous(c);
  const auto P = c.size(1);
  expect_shape(o, {vi.V, P}, "(V, P)");
  expect_dtype(o, vol.dtype);
  expect_contiguous(o);
  expect_same_device(vol, c);
  expect_same_device(vol, o);
  if (vol.is_cuda()) enter_cuda(vol);
  py::gil_scoped_release nogil;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    if (vol.is_cuda()) {
#if defined(ORBITCORE_WITH_CUDA)
      cuda::sample_forward<T>(vol.data<T>(), vi.V, static_cast<int>(vi.D), c.data<T>(), P,
                              o.data<T>(), reinterpret_cast<cuda::stream_t>(stream));
#endif
    } else {
      cpu::sample_forward<T>(vol.data<T>(), vi.V, static_cast<int>(vi.D), c.data<T>(), P,
                             o.data<T>(), num_threads);
    }
  };
  if (vi.real == "float32")
    run(float{});
  else
    run(double{});
}

void sample_backward(py::object grad, py::object volume, py::object coords, py::object grad_volume,
                     py::object grad_coords, int num_threads, std::uintptr_t stream) {
  const std::string op = "sample_backward";
  const auto g = parse(grad, op, "grad");
  const auto vol = parse(volume, op, "volume");
  const auto c = parse(coords, op, "coords");
  const auto gv = parse(grad_volume, op, "grad_volume", true);
  const auto gc = parse(grad_coords, op, "grad_coords", true);
  const auto vi = check_volume(vol);
  expect_dim(c, 3, "(V, P, 3)");
  if (c.size(0) != vi.V || c.size(2) != 3)
    fail(op, "coords must have shape (V, P, 3) with V = " + std::to_string(vi.V) + ", got " +
                 shape_str(c.shape));
  expect_dtype(c, vi.real);
  expect_contiguous(c);
  const auto P = c.size(1);
  expect_shape(g, {vi.V, P}, "(V, P)");
  expect_dtype(g, vol.dtype);
  expect_contiguous(g);
  if (gv.present) {
    expect_shape(gv, vol.shape, "(V, D, D, D)");
    expect_dtype(gv, vol.dtype);
    expect_contiguous(gv);
  }
  if (gc.present) {
    expect_shape(gc, c.shape, "(V, P, 3)");
    expect_dtype(gc, vi.real);
    expect_contiguous(gc);
  }
  for (const TensorArg* t : {&vol, &c, &gv, &gc}) expect_same_device(g, *t);
  if (g.is_cuda()) enter_cuda(g);
  py::gil_scoped_release nogil;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    T* gvp = gv.present ? gv.data<T>() : nullptr;
    T* gcp = gc.present ? gc.data<T>() : nullptr;
    if (g.is_cuda()) {
#if defined(ORBITCORE_WITH_CUDA)
      cuda::sample_backward<T>(g.data<T>(), vol.data<T>(), vi.V, static_cast<int>(vi.D),
                               c.data<T>(), P, gvp, gcp, reinterpret_cast<cuda::stream_t>(stream));
#endif
    } else {
      cpu::sample_backward<T>(g.data<T>(), vol.data<T>(), vi.V, static_cast<int>(vi.D),
                              c.data<T>(), P, gvp, gcp, num_threads);
    }
  };
  if (vi.real == "float32")
    run(float{});
  else
    run(double{});
}

}  // namespace

void bind_slice(py::module_& m) {
  m.def("slice_forward", &slice_forward, py::arg("volume"), py::arg("rotations"), py::arg("out"),
        py::arg("size"), py::arg("radius2"), py::arg("hermitian"), py::arg("num_threads"),
        py::arg("stream"),
        "Central slices out[b] = volume(R_b (kx, ky, 0)); see orbitcore.fourier_slice.");
  m.def("slice_backward", &slice_backward, py::arg("grad"), py::arg("weights"), py::arg("volume"),
        py::arg("rotations"), py::arg("grad_volume"), py::arg("weight_volume"),
        py::arg("grad_rotations"), py::arg("D"), py::arg("radius2"), py::arg("hermitian"),
        py::arg("num_threads"), py::arg("stream"),
        "Adjoint of slice_forward (scatter-add) and the rotation gradient.");
  m.def("sample_forward", &sample_forward, py::arg("volume"), py::arg("coords"), py::arg("out"),
        py::arg("num_threads"), py::arg("stream"), "Trilinear samples at arbitrary points.");
  m.def("sample_backward", &sample_backward, py::arg("grad"), py::arg("volume"), py::arg("coords"),
        py::arg("grad_volume"), py::arg("grad_coords"), py::arg("num_threads"), py::arg("stream"),
        "Adjoint of sample_forward and the coordinate gradient.");
}

}  // namespace binding
}  // namespace orbitcore
