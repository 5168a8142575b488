// Device dispatch shared by the bindings: run the CPU or CUDA driver with the GIL released.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "orbitcore/cpu/simd.hpp"
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

// The CPU kernels' instruction-set variant named by `simd` ("auto", "generic", "avx2",
// "avx512"; ORBITCORE_CPU_SIMD on the Python side), or a clear error naming `op`. For CUDA
// calls it is not used and not parsed.
inline cpu::SimdLevel simd_level(const std::string& op, const std::string& simd, bool on_cuda) {
  if (on_cuda) return cpu::SimdLevel::generic;
  try {
    return cpu::parse_simd(simd);
  } catch (const std::invalid_argument& e) {
    fail(op, std::string("simd: ") + e.what());
  }
  return cpu::SimdLevel::generic;  // not reached: fail() throws
}

}  // namespace binding
}  // namespace orbitcore
