// CUDA drivers of the EM family. Same contract as ../cpu/em.hpp (em::EStepArgs, device
// pointers, contiguous); every launch goes to `stream`. The score buffer lives in a caller-owned
// workspace: `ws` holds chunk * (D * K + D) values of T and `ws64` 2 * chunk doubles, and the
// patches are processed `chunk` at a time.
#pragma once

#include "../common.hpp"
#include "../em.hpp"
#include "runtime.hpp"

namespace orbitcore {
namespace cuda {

template <typename T>
void em_estep(const em::EStepArgs<T>& args, T* ws, index_t chunk, double* ws64, stream_t stream);

}  // namespace cuda
}  // namespace orbitcore
