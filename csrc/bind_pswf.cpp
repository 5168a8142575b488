// Binding of the PSWF family: validates every argument (shapes, dtypes, devices and, for CPU
// tensors, the index tables' values), releases the GIL, calls the CPU or CUDA driver. No math.
#include <pybind11/pybind11.h>

#include "dispatch.hpp"
#include "orbitcore/cpu/pswf.hpp"
#include "orbitcore/pswf.hpp"
#include "tensor_arg.hpp"
#if defined(ORBITCORE_WITH_CUDA)
#include "orbitcore/cuda/pswf.hpp"
#endif

namespace orbitcore {
namespace binding {
namespace {

void expect_vector(const TensorArg& t, std::int64_t n, const std::string& layout) {
  expect_shape(t, {n}, layout);
  expect_dtype(t, "int32");
  expect_contiguous(t);
}

// The orbit tables (pix, Q, size, feat); on the CPU also their values.
std::int64_t check_orbits(const TensorArg& pix, const TensorArg& Q, const TensorArg& size,
                          const TensorArg& feat, const std::string& real, std::int64_t npix,
                          std::int64_t F) {
  expect_dim(pix, 2, "(O, 8)");
  const auto O = pix.size(0);
  expect_shape(pix, {O, pswf::kOrbit}, "(O, 8)");
  expect_dtype(pix, "int32");
  expect_contiguous(pix);
  expect_shape(feat, {O, pswf::kOrbit}, "(O, 8)");
  expect_dtype(feat, "int32");
  expect_contiguous(feat);
  expect_shape(Q, {O, pswf::kOrbit, pswf::kOrbit}, "(O, 8, 8)");
  expect_dtype(Q, real);
  expect_contiguous(Q);
  expect_vector(size, O, "(O,)");
  if (!pix.is_cuda()) {
    const int* p = pix.data<int>();
    const int* f = feat.data<int>();
    const int* s = size.data<int>();
    for (std::int64_t o = 0; o < O; ++o) {
      if (s[o] != 1 && s[o] != 2 && s[o] != 4 && s[o] != 8)
        fail(pix.op, "size[" + std::to_string(o) + "] must be an orbit size 1, 2, 4 or 8, got " +
                         std::to_string(s[o]));
      for (int j = 0; j < s[o]; ++j) {
        const int pj = p[o * pswf::kOrbit + j], fj = f[o * pswf::kOrbit + j];
        if (pj < 0 || pj >= npix)
          fail(pix.op, "pix[" + std::to_string(o) + ", " + std::to_string(j) + "] = " + std::to_string(pj) +
                           " is outside the image (" + std::to_string(npix) + " pixels)");
        if (fj < 0 || fj >= F)
          fail(pix.op, "feat[" + std::to_string(o) + ", " + std::to_string(j) + "] = " + std::to_string(fj) +
                           " is outside the feature range [0, " + std::to_string(F) + ")");
      }
    }
  }
  return O;
}

void pswf_fold(py::object images, py::object pix_, py::object Q_, py::object size_, py::object feat_,
               py::object out, int num_threads, std::uintptr_t stream) {
  const std::string op = "pswf_fold";
  const auto img = parse(images, op, "images");
  const auto pix = parse(pix_, op, "pix");
  const auto Q = parse(Q_, op, "Q");
  const auto size = parse(size_, op, "size");
  const auto feat = parse(feat_, op, "feat");
  const auto y = parse(out, op, "out");
  expect_dim(img, 2, "(B, npix)");
  expect_real(img);
  expect_contiguous(img);
  expect_dim(y, 2, "(B, F)");
  const auto B = img.size(0), npix = img.size(1), F = y.size(1);
  expect_shape(y, {B, F}, "(B, F)");
  expect_dtype(y, img.dtype);
  expect_contiguous(y);
  for (const TensorArg* t : {&pix, &Q, &size, &feat, &y}) expect_same_device(img, *t);
  const auto O = check_orbits(pix, Q, size, feat, img.dtype, npix, F);
  if (img.is_cuda()) enter_cuda(img);
  py::gil_scoped_release nogil;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    if (img.is_cuda()) {
#if defined(ORBITCORE_WITH_CUDA)
      cuda::pswf_fold<T>(img.data<T>(), B, npix, pix.data<int>(), Q.data<T>(), size.data<int>(),
                         feat.data<int>(), O, y.data<T>(), F, reinterpret_cast<cuda::stream_t>(stream));
#endif
    } else {
      cpu::pswf_fold<T>(img.data<T>(), B, npix, pix.data<int>(), Q.data<T>(), size.data<int>(),
                        feat.data<int>(), O, y.data<T>(), F, num_threads);
    }
  };
  if (img.dtype == "float32")
    run(float{});
  else
    run(double{});
}

void pswf_unfold(py::object features, py::object pix_, py::object Q_, py::object size_, py::object feat_,
                 py::object out, int num_threads, std::uintptr_t stream) {
  const std::string op = "pswf_unfold";
  const auto y = parse(features, op, "features");
  const auto pix = parse(pix_, op, "pix");
  const auto Q = parse(Q_, op, "Q");
  const auto size = parse(size_, op, "size");
  const auto feat = parse(feat_, op, "feat");
  const auto img = parse(out, op, "out");
  expect_dim(y, 2, "(B, F)");
  expect_real(y);
  expect_contiguous(y);
  expect_dim(img, 2, "(B, npix)");
  const auto B = y.size(0), F = y.size(1), npix = img.size(1);
  expect_shape(img, {B, npix}, "(B, npix)");
  expect_dtype(img, y.dtype);
  expect_contiguous(img);
  for (const TensorArg* t : {&pix, &Q, &size, &feat, &img}) expect_same_device(y, *t);
  const auto O = check_orbits(pix, Q, size, feat, y.dtype, npix, F);
  if (y.is_cuda()) enter_cuda(y);
  py::gil_scoped_release nogil;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    if (y.is_cuda()) {
#if defined(ORBITCORE_WITH_CUDA)
      cuda::pswf_unfold<T>(y.data<T>(), B, F, pix.data<int>(), Q.data<T>(), size.data<int>(),
                           feat.data<int>(), O, img.data<T>(), npix, reinterpret_cast<cuda::stream_t>(stream));
#endif
    } else {
      cpu::pswf_unfold<T>(y.data<T>(), B, F, pix.data<int>(), Q.data<T>(), size.data<int>(),
                          feat.data<int>(), O, img.data<T>(), npix, num_threads);
    }
  };
  if (y.dtype == "float32")
    run(float{});
  else
    run(double{});
}

void pswf_eval_points(py::object points_, py::object gN_, py::object gK_, py::object goff_,
                      py::object item_group_, py::object item_row_, py::object d_, py::object col_cos_,
                      py::object col_sin_, py::object out, int num_threads, std::uintptr_t stream) {
  const std::string op = "pswf_eval_points";
  const auto pts = parse(points_, op, "points");
  const auto gN = parse(gN_, op, "group_N");
  const auto gK = parse(gK_, op, "group_K");
  const auto goff = parse(goff_, op, "group_offsets");
  const auto ig = parse(item_group_, op, "item_group");
  const auto ir = parse(item_row_, op, "item_row");
  const auto d = parse(d_, op, "coefficients");
  const auto cc = parse(col_cos_, op, "col_cos");
  const auto cs = parse(col_sin_, op, "col_sin");
  const auto o = parse(out, op, "out");
  expect_dim(pts, 2, "(P, 2)");
  if (pts.size(1) != 2) fail(op, "points must have shape (P, 2), got " + shape_str(pts.shape));
  expect_real(pts);
  expect_contiguous(pts);
  const auto P = pts.size(0);
  expect_dim(gN, 1, "(G,)");
  const auto G = gN.size(0);
  expect_vector(gN, G, "(G,)");
  expect_vector(gK, G, "(G,)");
  expect_vector(goff, G + 1, "(G + 1,)");
  expect_dim(ig, 1, "(I,)");
  const auto I = ig.size(0);
  expect_vector(ig, I, "(I,)");
  expect_vector(ir, I, "(I,)");
  expect_dim(d, 2, "(F, ld)");
  expect_dtype(d, pts.dtype);
  expect_contiguous(d);
  const auto F = d.size(0), ld = d.size(1);
  expect_vector(cc, F, "(F,)");
  expect_vector(cs, F, "(F,)");
  expect_dim(o, 2, "(P, M)");
  const auto M = o.size(1);
  expect_shape(o, {P, M}, "(P, M)");
  expect_dtype(o, pts.dtype);
  expect_contiguous(o);
  for (const TensorArg* t : {&gN, &gK, &goff, &ig, &ir, &d, &cc, &cs, &o}) expect_same_device(pts, *t);
  if (!pts.is_cuda()) {
    const int *N = gN.data<int>(), *K = gK.data<int>(), *off = goff.data<int>();
    if (G > 0 && off[0] != 0) fail(op, "group_offsets[0] must be 0");
    for (std::int64_t g = 0; g < G; ++g) {
      if (N[g] < 0) fail(op, "group_N[" + std::to_string(g) + "] must be >= 0, got " + std::to_string(N[g]));
      if (K[g] < 1 || K[g] > ld)
        fail(op, "group_K[" + std::to_string(g) + "] must be in [1, " + std::to_string(ld) + "], got " +
                     std::to_string(K[g]));
      if (off[g + 1] < off[g] || off[g + 1] > F)
        fail(op, "group_offsets must be non-decreasing and <= F = " + std::to_string(F));
    }
    const int *igp = ig.data<int>(), *irp = ir.data<int>();
    for (std::int64_t q = 0; q < I; ++q) {
      if (igp[q] < 0 || igp[q] >= G) fail(op, "item_group[" + std::to_string(q) + "] out of range");
      if (irp[q] < off[igp[q]] || irp[q] >= off[igp[q] + 1])
        fail(op, "item_row[" + std::to_string(q) + "] is not a row of its group");
    }
    const int *c1 = cc.data<int>(), *c2 = cs.data<int>();
    for (std::int64_t f = 0; f < F; ++f)
      if (c1[f] < -1 || c1[f] >= M || c2[f] < -1 || c2[f] >= M)
        fail(op, "col_cos / col_sin[" + std::to_string(f) + "] must be -1 or a column in [0, " +
                     std::to_string(M) + ")");
  }
  if (pts.is_cuda()) enter_cuda(pts);
  py::gil_scoped_release nogil;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    if (pts.is_cuda()) {
#if defined(ORBITCORE_WITH_CUDA)
      cuda::pswf_eval_points<T>(pts.data<T>(), P, gN.data<int>(), gK.data<int>(), goff.data<int>(),
                                static_cast<int>(G), ig.data<int>(), ir.data<int>(), I, d.data<T>(), ld,
                                cc.data<int>(), cs.data<int>(), o.data<T>(), M,
                                reinterpret_cast<cuda::stream_t>(stream));
#endif
    } else {
      cpu::pswf_eval_points<T>(pts.data<T>(), P, gN.data<int>(), gK.data<int>(), goff.data<int>(),
                               static_cast<int>(G), ig.data<int>(), ir.data<int>(), I, d.data<T>(), ld,
                               cc.data<int>(), cs.data<int>(), o.data<T>(), M, num_threads);
    }
  };
  if (pts.dtype == "float32")
    run(float{});
  else
    run(double{});
}

void pswf_gemm(py::object A_, py::object B_, py::object C_, int num_threads) {
  const std::string op = "pswf_gemm";
  const auto A = parse(A_, op, "A");
  const auto Bm = parse(B_, op, "B");
  const auto C = parse(C_, op, "out");
  expect_dim(A, 2, "(m, k)");
  expect_real(A);
  expect_contiguous(A);
  const auto m = A.size(0), k = A.size(1);
  expect_dim(Bm, 2, "(k, n)");
  const auto n = Bm.size(1);
  expect_shape(Bm, {k, n}, "(k, n)");
  expect_dtype(Bm, A.dtype);
  expect_contiguous(Bm);
  expect_shape(C, {m, n}, "(m, n)");
  expect_dtype(C, A.dtype);
  expect_contiguous(C);
  for (const TensorArg* t : {&A, &Bm, &C})
    if (t->is_cuda()) fail(op, t->name + " must be on the CPU (the CUDA path uses cuBLAS), got cuda");
  py::gil_scoped_release nogil;
  if (A.dtype == "float32")
    cpu::pswf_gemm<float>(A.data<float>(), Bm.data<float>(), C.data<float>(), m, k, n, num_threads);
  else
    cpu::pswf_gemm<double>(A.data<double>(), Bm.data<double>(), C.data<double>(), m, k, n, num_threads);
}

}  // namespace

void bind_pswf(py::module_& m) {
  m.def("pswf_fold", &pswf_fold, py::arg("images"), py::arg("pix"), py::arg("Q"), py::arg("size"),
        py::arg("feat"), py::arg("out"), py::arg("num_threads"), py::arg("stream"),
        "Orbit fold: symmetry-adapted features of flattened images (see orbitcore.basis.PSWF2D).");
  m.def("pswf_unfold", &pswf_unfold, py::arg("features"), py::arg("pix"), py::arg("Q"), py::arg("size"),
        py::arg("feat"), py::arg("out"), py::arg("num_threads"), py::arg("stream"),
        "Adjoint of pswf_fold (pixels of no orbit are 0).");
  m.def("pswf_eval_points", &pswf_eval_points, py::arg("points"), py::arg("group_N"), py::arg("group_K"),
        py::arg("group_offsets"), py::arg("item_group"), py::arg("item_row"), py::arg("coefficients"),
        py::arg("col_cos"), py::arg("col_sin"), py::arg("out"), py::arg("num_threads"), py::arg("stream"),
        "PSWF basis values (real convention) at points of the unit disk.");
  m.def("pswf_gemm", &pswf_gemm, py::arg("A"), py::arg("B"), py::arg("out"), py::arg("num_threads"),
        "Blocked CPU product out = A @ B (row-major), benchmarked against BLAS.");
}

}  // namespace binding
}  // namespace orbitcore
