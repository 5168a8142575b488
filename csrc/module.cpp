// orbitcore._C: the pybind11 module. One bind_<family>() per kernel family.
#include <omp.h>
#include <pybind11/pybind11.h>

#include "dispatch.hpp"

#ifndef ORBITCORE_VERSION
#define ORBITCORE_VERSION "dev"
#endif

namespace py = pybind11;

namespace orbitcore {
namespace binding {
void bind_slice(py::module_& m);
void bind_moments(py::module_& m);
void bind_pswf(py::module_& m);
void bind_em(py::module_& m);
void bind_norm(py::module_& m);
void bind_sine(py::module_& m);
}  // namespace binding
}  // namespace orbitcore

PYBIND11_MODULE(_C, m) {
  using namespace orbitcore::binding;
  m.doc() = "orbitcore compiled kernels (torch-free core; see python/orbitcore/ops for the API)";
  m.attr("__version__") = ORBITCORE_VERSION;
  m.def("built_with_cuda", &built_with_cuda, "Whether the CUDA drivers were compiled in.");
  m.def(
      "cuda_device_count",
      []() {
#if defined(ORBITCORE_WITH_CUDA)
        return orbitcore::cuda::device_count();
#else
        return 0;
#endif
      },
      "Number of CUDA devices the static CUDA runtime sees (0 without driver or GPU).");
  m.def("openmp_max_threads", []() { return omp_get_max_threads(); });
  bind_slice(m);
  bind_moments(m);
  bind_pswf(m);
  bind_em(m);
  bind_norm(m);
  bind_sine(m);
}
