// Host-side view of the CUDA drivers: no CUDA headers needed to call them (the binding is
// compiled by the C++ compiler). cudaStream_t is `CUstream_st*`; we name the same type.
#pragma once

struct CUstream_st;

namespace orbitcore {
namespace cuda {

using stream_t = CUstream_st*;

// Number of CUDA devices visible to the runtime (0 without a driver or GPU; never throws).
int device_count();
// Compute capability major*10+minor of a device, -1 if unavailable.
int compute_capability(int device);
// Make `device` current for the calling host thread (throws std::runtime_error on failure).
void set_device(int device);

}  // namespace cuda
}  // namespace orbitcore
