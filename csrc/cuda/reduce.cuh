// reduce.cuh: the one block-wide reduction the CUDA kernels use, written for determinism.
//
// Every thread contributes one value; the values are added in a fixed binary tree (thread t
// adds thread t + s for s = 128, 64, ..., 1). The tree depends only on the block size, so the
// sum has the same bits in every run. (atomicAdd on floats would add in arrival order, which
// changes from run to run.)
#pragma once

#if defined(__CUDACC__)

namespace dk::cuda {

// All kThreads threads of the block must call it; every thread gets the result of folding the
// values with combine(a, b) (thread t's value, thread t + s's value) in the tree above. `smem`
// holds kThreads values of T. kThreads is a power of two.
template <int kThreads, class T, class Combine>
__device__ __forceinline__ T block_reduce(T v, T* smem, Combine combine) {
  static_assert((kThreads & (kThreads - 1)) == 0, "block_reduce needs a power-of-two block");
  smem[threadIdx.x] = v;
  __syncthreads();
#pragma unroll
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (static_cast<int>(threadIdx.x) < s) smem[threadIdx.x] = combine(smem[threadIdx.x], smem[threadIdx.x + s]);
    __syncthreads();
  }
  const T total = smem[0];
  __syncthreads();  // smem may be reused by the caller right away
  return total;
}

template <int kThreads, class T>
__device__ __forceinline__ T block_sum(T v, T* smem) {
  return block_reduce<kThreads>(v, smem, [](T a, T b) { return a + b; });
}

}  // namespace dk::cuda

#endif
