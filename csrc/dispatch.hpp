// Device dispatch shared by the bindings: run the CPU or CUDA driver with the GIL released.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>

#include "tensor_arg.hpp"

#if defined(ORBITCORE_WITH_CUDA)
#include "orbitcore/cuda/runtime.hpp"
#endif

namespace orbitcore {
namespace binding {

inline bool built_with_cuda() {
#if defined(ORBITCORE_WITH_CUDA)
  return true;
#else
  return false;
#endif
}

// Prepare a CUDA launch on the device of `t` (or fail clearly when CUDA was not built).
inline void enter_cuda(const TensorArg& t) {
#if defined(ORBITCORE_WITH_CUDA)
  cuda::set_device(t.device_index);
#else
  fail(t.op, t.name + " is on a CUDA device, but this orbitcore build has no CUDA kernels "
                      "(rebuild with nvcc on PATH, or ORBITCORE_CUDA=ON)");
#endif
}

}  // namespace binding
}  // namespace orbitcore
