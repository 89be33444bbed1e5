#!/bin/sh
# Build and run bench/dev/ops_kernel_bench.cpp (from the repository root): ops_kernel_bench.sh [threads] [reps]
set -e
O=${TMPDIR:-/tmp}/dk_ops_kernel_bench
mkdir -p "$O"
F="-O3 -std=c++17 -fopenmp -fno-tree-loop-distribute-patterns -Icsrc -DDK_HAVE_X86_VARIANTS=1 -DDEEPKERN_HAS_OPENMP=1"
for f in pool2d dropout activation batch_norm threading; do g++ $F -c csrc/cpu/$f.cpp -o "$O/$f.o"; done
g++ $F -c csrc/common/cpu_features.cpp -o "$O/cpu_features.o"
g++ $F -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma -mavx2 -c csrc/cpu/layers_avx512.cpp -o "$O/l512.o"
g++ $F -mavx2 -mfma -c csrc/cpu/layers_avx2.cpp -o "$O/l2.o"
g++ $F bench/dev/ops_kernel_bench.cpp "$O"/*.o -o "$O/ops_kernel_bench"
"$O/ops_kernel_bench" "$@"
