#!/bin/sh
# Build and run bench/dev/small_kernel_bench.cpp (from the repository root):
#   small_kernel_bench.sh [threads] [C1] [C2] [N] [only-op] [iters]
# Objects are built with the flags of CMakeLists.txt (AVX-512 / AVX2 files with their -m flags)
# into $TMPDIR/dk_small_kernel_bench; only changed sources are rebuilt.
set -e
O=${TMPDIR:-/tmp}/dk_small_kernel_bench
mkdir -p "$O"
F="-O3 -g -std=c++17 -fopenmp -fno-math-errno -fopenmp-simd -Icsrc -DDK_HAVE_X86_VARIANTS=1 -DDEEPKERN_HAS_OPENMP=1"
NOIDIOM=-fno-tree-loop-distribute-patterns
A512="-mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma -mavx2 $NOIDIOM"
A2="-mavx2 -mfma $NOIDIOM"
build() {  # build SRC FLAGS...: compile when the object is older than any source or header
  src=$1; shift
  obj="$O/$(basename "$src" .cpp).o"
  if [ ! -f "$obj" ] || [ -n "$(find csrc -newer "$obj" -name '*.[ch]*' | head -1)" ]; then
    g++ $F "$@" -c "$src" -o "$obj"
  fi
}
for f in pool2d dropout activation batch_norm conv2d gemm threading; do build csrc/cpu/$f.cpp; done
build csrc/common/cpu_features.cpp
for f in layers conv2d gemm; do build csrc/cpu/${f}_avx512.cpp $A512; build csrc/cpu/${f}_avx2.cpp $A2; done
g++ $F bench/dev/small_kernel_bench.cpp "$O"/*.o -o "$O/small_kernel_bench"
"$O/small_kernel_bench" "$@"
