#!/usr/bin/env bash
# Check that no symbol compiled with -mavx512*/-mavx2 can be picked by the linker for baseline
# code (the ODR / COMDAT hazard of per-file ISA flags).
#
#   .ci/check_isa_symbols.sh [OBJECT_DIR...]     (default: build/*/CMakeFiles/_C.dir/csrc/cpu)
#
# The *_avx2.cpp and *_avx512.cpp files are compiled with their own -m flags. Every inline
# function or template they instantiate is emitted as a weak (COMDAT) symbol, and when another
# object file (a baseline one, or the other ISA's) emits the same symbol, the linker keeps ONE
# copy for the whole library: if it keeps the AVX-512 one, baseline code calls AVX-512
# instructions and dies with SIGILL on a CPU without them. std::vector<float>'s constructor,
# std::mutex::lock or an inline helper of a shared header are the usual culprits.
#
# Rule enforced: every global or weak *code* symbol an ISA object defines must carry that ISA's
# namespace (dk::cpu::avx512 / dk::cpu::avx2) somewhere in its mangled name, either as its own
# namespace or in a template argument (std::vector<T, dk::cpu::avx512::Allocator<T>>): such a
# symbol cannot be defined by any other object file. Data symbols (a guard variable, the lock
# word of an OpenMP critical section) hold no instructions and may be shared. Exit status 1
# lists the offenders.
set -euo pipefail
cd "$(dirname "$0")/.."

dirs=("$@")
if [ ${#dirs[@]} -eq 0 ]; then
  shopt -s nullglob
  dirs=(build/*/CMakeFiles/_C.dir/csrc/cpu)
fi
[ ${#dirs[@]} -gt 0 ] || { echo "check_isa_symbols: no build directory found (build deepkern first)" >&2; exit 2; }

NM=${NM:-nm}
# objects built with -flto hold GIMPLE: nm reads their symbols through the LTO plugin
command -v gcc-nm >/dev/null 2>&1 && NM=${NM_LTO:-gcc-nm}

checked=0
bad=0
for d in "${dirs[@]}"; do
  for obj in "$d"/*_avx512.cpp.o "$d"/*_avx2.cpp.o; do
    [ -f "$obj" ] || continue
    case "$obj" in
      *_avx512.cpp.o) token=3cpu6avx512; ns=dk::cpu::avx512 ;;
      *_avx2.cpp.o) token=3cpu4avx2; ns=dk::cpu::avx2 ;;
    esac
    checked=$((checked + 1))
    # defined code symbols with global binding: T (global), W/w (weak), i (indirect function)
    offenders=$("$NM" --defined-only "$obj" | awk '$2 ~ /^[TWwi]$/ {print $3}' | grep -v -- "$token" || true)
    if [ -n "$offenders" ]; then
      bad=$((bad + 1))
      echo "FAIL $obj: global/weak code symbols outside $ns:"
      echo "$offenders" | c++filt | sed 's/^/    /'
    fi
  done
done
[ "$checked" -gt 0 ] || { echo "check_isa_symbols: no *_avx2/*_avx512 objects in ${dirs[*]}" >&2; exit 2; }
if [ "$bad" -gt 0 ]; then
  echo "check_isa_symbols: $bad of $checked ISA object files define symbols the linker may share with baseline code"
  exit 1
fi
echo "check_isa_symbols: $checked ISA object files, every global/weak code symbol in its ISA namespace"
