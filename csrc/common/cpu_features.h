// cpu_features.h: what the CPU we run on can do, found at run time (cpuid / sysfs),
// never assumed from the machine that compiled us.
#pragma once
#include <cstdint>
#include <string>

namespace dk {

enum class Isa { scalar = 0, avx2 = 1, avx512 = 2 };

struct CpuInfo {
  std::string model;      // e.g. "AMD EPYC 9R45"
  bool avx2_fma = false;  // AVX2 + FMA3 (and the OS saves YMM state)
  bool avx512 = false;    // AVX-512 F/BW/DQ/VL (and the OS saves ZMM state)
  int64_t l1d = 0, l2 = 0, l3 = 0;  // data cache sizes in bytes (0 when unknown)
};

const CpuInfo& cpu_info();
// The best ISA this CPU supports that this build has variants for; DEEPKERN_ISA
// (scalar|avx2|avx512) in the environment may lower it (for tests and benchmarks).
Isa active_isa();
void set_active_isa(Isa isa);  // clamps to what the CPU supports
const char* isa_name(Isa isa);

}  // namespace dk
