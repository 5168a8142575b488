// Instruction-set variants of the CPU kernels that come in several builds (moments SYRK, EM
// patch likelihoods), chosen at run time. Definitions in moments.cpp.
#pragma once

#include <string>

namespace orbitcore {
namespace cpu {

enum class SimdLevel { generic = 0, avx2 = 1, avx512 = 2 };

// Best level this CPU supports, and its name ("generic", "avx2", "avx512").
SimdLevel detect_simd();
const char* simd_name(SimdLevel level);
// Parse "auto" | "generic" | "avx2" | "avx512"; throws std::invalid_argument for an unknown
// name or a level this CPU (or build) does not support.
SimdLevel parse_simd(const std::string& name);

}  // namespace cpu
}  // namespace orbitcore
