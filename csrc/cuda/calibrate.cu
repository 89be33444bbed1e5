// calibrate.cu: the two limits a GPU row of `deepkern bench` is measured against (the CPU's are
// in csrc/cpu/calibrate.cpp).
//
//   copy bandwidth  device-to-device cudaMemcpyAsync of a buffer far larger than the L2 cache:
//                   the memory bandwidth a streaming kernel can hope for (bytes read + written)
//   FMA rate        float32 fused multiply-adds in registers on every SM: 8 independent chains
//                   per thread (more than the FMA latency in flight), 2048 threads per SM
//
// Both are timed with CUDA events on a stream of their own; the caller has made the device
// current. Each call synchronizes (it is a measurement).
#if defined(__CUDACC__)
#include <vector>

#include "cuda/cuda_common.cuh"
#include "cuda/kernels_cuda.h"

namespace dk::cuda {

namespace {

constexpr int kChains = 8;
constexpr int kFmaIters = 1 << 16;

__global__ void __launch_bounds__(256) fma_kernel(float* out, float seed) {
  float a[kChains];
#pragma unroll
  for (int j = 0; j < kChains; ++j) a[j] = seed + static_cast<float>(threadIdx.x + j);
  for (int i = 0; i < kFmaIters; ++i) {
#pragma unroll
    for (int j = 0; j < kChains; ++j) a[j] = fmaf(a[j], 0.999999f, 1e-7f);
  }
  float s = 0.0f;
#pragma unroll
  for (int j = 0; j < kChains; ++j) s += a[j];
  if (s == -1.0f) out[blockIdx.x * blockDim.x + threadIdx.x] = s;  // never true: keeps the work
}

// Events and a stream, released on scope exit.
class EventTimer {
 public:
  EventTimer() {
    DK_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    DK_CUDA_CHECK(cudaEventCreate(&start_));
    DK_CUDA_CHECK(cudaEventCreate(&stop_));
  }
  ~EventTimer() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
    cudaStreamDestroy(stream_);
  }
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;
  cudaStream_t stream() const { return stream_; }
  template <class F>
  double seconds(F&& work) {
    DK_CUDA_CHECK(cudaEventRecord(start_, stream_));
    work();
    DK_CUDA_CHECK(cudaEventRecord(stop_, stream_));
    DK_CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0.0f;
    DK_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    return ms * 1e-3;
  }

 private:
  cudaStream_t stream_{};
  cudaEvent_t start_{}, stop_{};
};

struct DeviceBuffer {
  explicit DeviceBuffer(size_t bytes) { DK_CUDA_CHECK(cudaMalloc(&ptr, bytes)); }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* ptr = nullptr;
};

}  // namespace

std::vector<double> copy_times(int64_t bytes, int repeats) {
  DeviceBuffer a(static_cast<size_t>(bytes)), b(static_cast<size_t>(bytes));
  DK_CUDA_CHECK(cudaMemset(a.ptr, 0, static_cast<size_t>(bytes)));
  EventTimer timer;
  auto copy = [&] {
    DK_CUDA_CHECK(cudaMemcpyAsync(b.ptr, a.ptr, static_cast<size_t>(bytes), cudaMemcpyDeviceToDevice,
                                  timer.stream()));
  };
  timer.seconds(copy);  // warm-up
  std::vector<double> out;
  for (int r = 0; r < repeats; ++r) out.push_back(timer.seconds(copy));
  return out;
}

std::vector<double> fma_times(int repeats, double* flops_out) {
  int device = 0, sms = 0;
  DK_CUDA_CHECK(cudaGetDevice(&device));
  DK_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int threads = 256, blocks = sms * 8;  // 2048 threads per SM
  DeviceBuffer out(sizeof(float) * static_cast<size_t>(blocks) * threads);
  EventTimer timer;
  auto run = [&] {
    fma_kernel<<<blocks, threads, 0, timer.stream()>>>(static_cast<float*>(out.ptr), 1.0f);
    DK_CUDA_CHECK_LAUNCH();
  };
  timer.seconds(run);  // warm-up (clocks ramp up)
  std::vector<double> times;
  for (int r = 0; r < repeats; ++r) times.push_back(timer.seconds(run));
  *flops_out = 2.0 * kChains * double(kFmaIters) * blocks * threads;
  return times;
}

}  // namespace dk::cuda
#endif  // __CUDACC__
