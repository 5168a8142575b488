// Binding of the EM family: validates every argument (shapes, dtypes, devices and, for CPU tensors,
// the k-lists' values), releases the GIL, calls the CPU or CUDA driver. No math here.
#include <pybind11/pybind11.h>

#include <cmath>
#include <string>

#include "dispatch.hpp"
#include "orbitcore/cpu/em.hpp"
#include "orbitcore/em.hpp"
#include "tensor_arg.hpp"
#if defined(ORBITCORE_WITH_CUDA)
#include "orbitcore/cuda/em.hpp"
#endif

namespace orbitcore {
namespace binding {
namespace {

void expect_vec(const TensorArg& t, std::int64_t n, const std::string& layout, const std::string& dtype) {
  expect_shape(t, {n}, layout);
  expect_dtype(t, dtype);
  expect_contiguous(t);
}

// The k-lists (see ../src/orbitcore/em.hpp): on the CPU every entry is checked, so that the
// drivers never read outside a patch or a projection.
void check_lists(const TensorArg& klist, const TensorArg& kstart, int L) {
  const int D = em::shift_count(L);
  expect_dim(klist, 1, "(N,)");
  expect_dtype(klist, "int32");
  expect_contiguous(klist);
  expect_vec(kstart, D + 1, "(D + 1,)", "int32");
  if (klist.size(0) > std::int64_t(D) * L * L)
    fail(klist.op, "klist has " + std::to_string(klist.size(0)) + " entries, more than D * L^2 = " +
                       std::to_string(std::int64_t(D) * L * L));
  if (klist.is_cuda()) return;
  const int* ks = kstart.data<int>();
  const int* kl = klist.data<int>();
  if (ks[0] != 0) fail(kstart.op, "kstart[0] must be 0, got " + std::to_string(ks[0]));
  if (ks[D] != klist.size(0))
    fail(kstart.op, "kstart[D] must equal len(klist) = " + std::to_string(klist.size(0)) + ", got " +
                        std::to_string(ks[D]));
  for (int k = 0; k < D; ++k) {
    if (ks[k + 1] < ks[k] || ks[k + 1] - ks[k] > L * L)
      fail(kstart.op, "kstart must be non-decreasing with at most L^2 entries per displacement (k = " +
                          std::to_string(k) + ")");
    int d0, d1;
    em::displacement(k, L, d0, d1);
    int r0, r1, c0, c1;
    em::overlap(d0, L, r0, r1);
    em::overlap(d1, L, c0, c1);
    for (int t = ks[k]; t < ks[k + 1]; ++t) {
      const int pix = kl[t];
      const int i = pix / L, j = pix % L;
      if (pix < 0 || pix >= L * L || i < r0 || i >= r1 || j < c0 || j >= c1)
        fail(klist.op, "klist[" + std::to_string(t) + "] = " + std::to_string(pix) +
                           " is not a patch pixel that meets the projection under displacement (" +
                           std::to_string(d0) + ", " + std::to_string(d1) + ")");
    }
  }
}

void em_estep(py::object patches_, py::object projections_, py::object norms_, py::object log_prior_,
              py::object patch_weights_, py::object klist_, py::object kstart_, double inv2s2,
              py::object log_evidence_, py::object empty_posterior_, py::object shift_weights_,
              py::object backprojection_, py::object shift_posterior_, py::object workspace_,
              py::object workspace64_, int num_threads, const std::string& simd, std::uintptr_t stream) {
  const std::string op = "em_estep";
  const auto patches = parse(patches_, op, "patches");
  const auto proj = parse(projections_, op, "projections");
  const auto norms = parse(norms_, op, "norms");
  const auto lp = parse(log_prior_, op, "log_prior");
  const auto cw = parse(patch_weights_, op, "patch_weights", true);
  const auto klist = parse(klist_, op, "klist");
  const auto kstart = parse(kstart_, op, "kstart");
  const auto le = parse(log_evidence_, op, "log_evidence");
  const auto ep = parse(empty_posterior_, op, "empty_posterior");
  const auto sw = parse(shift_weights_, op, "shift_weights");
  const auto bp = parse(backprojection_, op, "backprojection");
  const auto sp = parse(shift_posterior_, op, "shift_posterior", true);
  const auto ws = parse(workspace_, op, "workspace", true);
  const auto ws64 = parse(workspace64_, op, "workspace64", true);

  expect_dim(patches, 3, "(P, L, L)");
  if (patches.dtype != "float32" && patches.dtype != "float64")
    fail(op, "patches must be float32 or float64, got " + patches.dtype);
  expect_contiguous(patches);
  const auto P = patches.size(0);
  const auto L64 = patches.size(1);
  if (patches.size(2) != L64) fail(op, "patches must be square (P, L, L), got " + shape_str(patches.shape));
  if (L64 < 2 || L64 > 256) fail(op, "patch side L must be in [2, 256], got " + std::to_string(L64));
  const int L = static_cast<int>(L64);
  const int D = em::shift_count(L);
  expect_dim(proj, 3, "(K, L, L)");
  const auto K = proj.size(0);
  if (K < 1) fail(op, "projections must hold at least one rotation, got " + shape_str(proj.shape));
  expect_shape(proj, {K, L64, L64}, "(K, L, L)");
  expect_dtype(proj, patches.dtype);
  expect_contiguous(proj);
  expect_shape(norms, {K, D}, "(K, D) with D = (2L - 1)^2");
  expect_dtype(norms, patches.dtype);
  expect_contiguous(norms);
  expect_vec(lp, D + 1, "(D + 1,)", patches.dtype);
  if (cw.present) expect_vec(cw, P, "(P,)", patches.dtype);
  check_lists(klist, kstart, L);
  expect_vec(le, P, "(P,)", "float64");
  expect_vec(ep, P, "(P,)", "float64");
  expect_shape(sw, {K, D}, "(K, D)");
  expect_dtype(sw, "float64");
  expect_contiguous(sw);
  expect_shape(bp, {K, L64, L64}, "(K, L, L)");
  expect_dtype(bp, "float64");
  expect_contiguous(bp);
  if (sp.present) {
    expect_shape(sp, {P, D}, "(P, D)");
    expect_dtype(sp, "float64");
    expect_contiguous(sp);
  }
  if (!(inv2s2 > 0.0) || !std::isfinite(inv2s2))
    fail(op, "inv_two_sigma2 must be a positive finite number, got " + std::to_string(inv2s2));
  for (const TensorArg* t : {&proj, &norms, &lp, &cw, &klist, &kstart, &le, &ep, &sw, &bp, &sp, &ws, &ws64})
    expect_same_device(patches, *t);

  auto fill = [&](auto tag) {
    using T = decltype(tag);
    em::EStepArgs<T> a{};
    a.patches = patches.data<T>();
    a.P = P;
    a.L = L;
    a.projections = proj.data<T>();
    a.K = K;
    a.norms = norms.data<T>();
    a.log_prior = lp.data<T>();
    a.patch_weights = cw.present ? cw.data<T>() : nullptr;
    a.inv2s2 = inv2s2;
    a.klist = klist.data<int>();
    a.kstart = kstart.data<int>();
    a.log_evidence = le.data<double>();
    a.empty_posterior = ep.data<double>();
    a.shift_weights = sw.data<double>();
    a.backprojection = bp.data<double>();
    a.shift_posterior = sp.present ? sp.data<double>() : nullptr;
    return a;
  };

  std::int64_t chunk = 0;
  if (patches.is_cuda()) {
    if (!ws.present || !ws64.present)
      fail(op, "CUDA calls need workspace and workspace64 (see orbitcore.ops.em)");
    expect_dim(ws, 1, "(n,)");
    expect_dtype(ws, patches.dtype);
    expect_contiguous(ws);
    expect_dim(ws64, 1, "(n,)");
    expect_dtype(ws64, "float64");
    expect_contiguous(ws64);
    const std::int64_t per = std::int64_t(D) * K + D;
    chunk = (ws.size(0) - std::int64_t(L) * L) / per;
    if (chunk > ws64.size(0) / 2) chunk = ws64.size(0) / 2;
    if (chunk < 1)
      fail(op, "workspace too small: it needs at least D * K + D + L^2 = " + std::to_string(per + L * L) +
                   " values and workspace64 at least 2");
    enter_cuda(patches);
  }
  const cpu::SimdLevel level = simd_level(op, simd, patches.is_cuda());
  py::gil_scoped_release nogil;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const auto a = fill(tag);
    if (patches.is_cuda()) {
#if defined(ORBITCORE_WITH_CUDA)
      cuda::em_estep<T>(a, ws.data<T>(), chunk, ws64.data<double>(), reinterpret_cast<cuda::stream_t>(stream));
#endif
    } else {
      cpu::em_estep<T>(a, num_threads, level);
    }
  };
  if (patches.dtype == "float32")
    run(float{});
  else
    run(double{});
}

}  // namespace

void bind_em(py::module_& m) {
  m.def("em_estep", &em_estep, py::arg("patches"), py::arg("projections"), py::arg("norms"), py::arg("log_prior"),
        py::arg("patch_weights"), py::arg("klist"), py::arg("kstart"), py::arg("inv_two_sigma2"),
        py::arg("log_evidence"), py::arg("empty_posterior"), py::arg("shift_weights"), py::arg("backprojection"),
        py::arg("shift_posterior"), py::arg("workspace"), py::arg("workspace64"), py::arg("num_threads"),
        py::arg("simd"), py::arg("stream"),
        "EM E-step over patches (seeds/002 eq. 23-25): log-evidence, posteriors and sufficient statistics "
        "(see orbitcore.ops.em).");
}

}  // namespace binding
}  // namespace orbitcore
