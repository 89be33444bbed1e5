// cuda_common.cuh: error checking, launch sizes, device and scratch helpers shared by the
// CUDA kernels (host side only; the device-side math lives in each op's .cu file).
//
// Errors: DK_CUDA_CHECK throws std::runtime_error with file:line (never exit(): we live
// inside a Python process; pybind11 turns it into RuntimeError). Every kernel launch is
// followed by DK_CUDA_CHECK_LAUNCH(), which catches a bad launch configuration at once;
// faults inside a kernel surface at the next synchronizing call, as usual in CUDA.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#define DK_CUDA_CHECK(expr)                                                                  \
  do {                                                                                       \
    cudaError_t dk_err_ = (expr);                                                            \
    if (dk_err_ != cudaSuccess)                                                              \
      throw std::runtime_error(std::string("CUDA error at ") + __FILE__ + ":" +              \
                               std::to_string(__LINE__) + ": " + cudaGetErrorString(dk_err_) + \
                               " (" #expr ")");                                             \
  } while (0)

// After every <<<...>>>: launch errors (bad grid, too much shared memory, no kernel image for
// this GPU's architecture) are reported here, synchronously.
#define DK_CUDA_CHECK_LAUNCH() DK_CUDA_CHECK(cudaGetLastError())

namespace dk::cuda {

constexpr int kThreads = 256;  // threads per block for the element-wise and reduction kernels

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for a grid-stride loop over n items, kThreads items per block per pass. Capped: the
// loop inside the kernel covers the rest, so any n >= 1 works (and n = 0 launches nothing).
inline unsigned grid_for(int64_t n, int64_t per_block = kThreads) {
  return static_cast<unsigned>(std::clamp<int64_t>(ceil_div(n, per_block), 1, int64_t(1) << 20));
}

// Facts for build_info() and backends() (device.cu).
int device_count();       // 0 when there is no driver or no device
int runtime_version();    // e.g. 13000
int driver_version();     // 0 when no driver is installed
std::string probe_error();  // "" when a device is usable, else why not

// Makes `device` current for the lifetime of the guard and restores the previous one. Kernels
// launch on the current device, which must be the device that holds the arrays.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    DK_CUDA_CHECK(cudaGetDevice(&prev_));
    if (device != prev_) {
      DK_CUDA_CHECK(cudaSetDevice(device));
      changed_ = true;
    }
  }
  ~DeviceGuard() {
    if (changed_) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
  bool changed_ = false;
};

// Stream-ordered scratch memory (partial sums of the deterministic reductions): allocated on
// `stream` and freed on `stream` when the object goes out of scope, so the memory is released
// only after the kernels queued before the free have run. No host synchronization. Where the
// device or driver has no stream-ordered allocator (cudaErrorNotSupported), plain cudaMalloc,
// and the free waits for the stream first.
class Scratch {
 public:
  Scratch(size_t bytes, cudaStream_t stream) : stream_(stream) {
    if (!bytes) return;
    const cudaError_t err = cudaMallocAsync(&ptr_, bytes, stream);
    if (err == cudaErrorNotSupported) {
      cudaGetLastError();
      async_ = false;
      DK_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
      return;
    }
    DK_CUDA_CHECK(err);
  }
  ~Scratch() {
    if (!ptr_) return;
    if (async_) {
      cudaFreeAsync(ptr_, stream_);
    } else {
      cudaStreamSynchronize(stream_);
      cudaFree(ptr_);
    }
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
  bool async_ = true;
};

}  // namespace dk::cuda
