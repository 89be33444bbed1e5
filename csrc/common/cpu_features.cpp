// cpu_features.cpp: run-time CPU detection and the process-wide thread count.
#include "common/cpu_features.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>

#include <unistd.h>

#include "common/parallel.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define DK_X86_64 1
#endif

namespace dk {

// ---- threads

static int default_threads() {
#ifdef DEEPKERN_HAS_OPENMP
  return std::max(1, omp_get_max_threads());
#else
  return 1;
#endif
}

static std::atomic<int> g_num_threads{default_threads()};

int get_num_threads() { return g_num_threads.load(std::memory_order_relaxed); }
void set_num_threads(int n) { g_num_threads.store(std::max(1, n), std::memory_order_relaxed); }
bool has_openmp() {
#ifdef DEEPKERN_HAS_OPENMP
  return true;
#else
  return false;
#endif
}

// ---- CPU detection

#ifdef DK_X86_64
static uint64_t xgetbv0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (uint64_t(edx) << 32) | eax;
}
#endif

static int64_t sysfs_cache_size(int level, const char* type) {
  for (int idx = 0; idx < 8; ++idx) {
    std::string base = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(idx) + "/";
    std::ifstream flevel(base + "level"), ftype(base + "type"), fsize(base + "size");
    if (!flevel || !ftype || !fsize) continue;
    int lv = 0;
    std::string ty, sz;
    flevel >> lv;
    ftype >> ty;
    fsize >> sz;
    if (lv != level || (ty != type && ty != "Unified")) continue;
    int64_t v = std::atoll(sz.c_str());
    if (!sz.empty() && (sz.back() == 'K')) v *= 1024;
    if (!sz.empty() && (sz.back() == 'M')) v *= 1024 * 1024;
    return v;
  }
  return 0;
}

static CpuInfo detect() {
  CpuInfo info;
#ifdef DK_X86_64
  unsigned a, b, c, d;
  char brand[49] = {0};
  if (__get_cpuid_max(0x80000000, nullptr) >= 0x80000004) {
    for (unsigned i = 0; i < 3; ++i) {
      __cpuid(0x80000002 + i, a, b, c, d);
      std::memcpy(brand + 16 * i + 0, &a, 4);
      std::memcpy(brand + 16 * i + 4, &b, 4);
      std::memcpy(brand + 16 * i + 8, &c, 4);
      std::memcpy(brand + 16 * i + 12, &d, 4);
    }
  }
  info.model = brand;
  while (!info.model.empty() && info.model.back() == ' ') info.model.pop_back();
  while (!info.model.empty() && info.model.front() == ' ') info.model.erase(0, 1);

  __cpuid(1, a, b, c, d);
  const bool osxsave = (c >> 27) & 1, fma = (c >> 12) & 1;
  uint64_t xcr0 = osxsave ? xgetbv0() : 0;
  const bool ymm_ok = (xcr0 & 0x6) == 0x6;
  const bool zmm_ok = (xcr0 & 0xE6) == 0xE6;
  if (__get_cpuid_max(0, nullptr) >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    const bool avx2 = (b >> 5) & 1;
    const bool f = (b >> 16) & 1, dq = (b >> 17) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1;
    info.avx2_fma = avx2 && fma && ymm_ok;
    info.avx512 = info.avx2_fma && f && dq && bw && vl && zmm_ok;
  }
#endif
  if (info.model.empty()) info.model = "unknown CPU";
  info.l1d = sysfs_cache_size(1, "Data");
  info.l2 = sysfs_cache_size(2, "Unified");
  info.l3 = sysfs_cache_size(3, "Unified");
#ifdef _SC_LEVEL1_DCACHE_SIZE
  if (info.l1d <= 0) info.l1d = sysconf(_SC_LEVEL1_DCACHE_SIZE);
  if (info.l2 <= 0) info.l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
  if (info.l3 <= 0) info.l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
  if (info.l1d <= 0) info.l1d = 32 * 1024;   // conservative guesses, only when
  if (info.l2 <= 0) info.l2 = 256 * 1024;    // the OS tells us nothing
  if (info.l3 < 0) info.l3 = 0;
  return info;
}

const CpuInfo& cpu_info() {
  static const CpuInfo info = detect();
  return info;
}

static Isa best_supported() {
#ifdef DK_HAVE_X86_VARIANTS
  const CpuInfo& ci = cpu_info();
  if (ci.avx512) return Isa::avx512;
  if (ci.avx2_fma) return Isa::avx2;
#endif
  return Isa::scalar;
}

static Isa initial_isa() {
  Isa best = best_supported();
  if (const char* env = std::getenv("DEEPKERN_ISA")) {
    Isa want = best;
    if (!std::strcmp(env, "scalar")) want = Isa::scalar;
    else if (!std::strcmp(env, "avx2")) want = Isa::avx2;
    else if (!std::strcmp(env, "avx512")) want = Isa::avx512;
    if (static_cast<int>(want) < static_cast<int>(best)) best = want;
  }
  return best;
}

static std::atomic<int> g_isa{static_cast<int>(initial_isa())};

Isa active_isa() { return static_cast<Isa>(g_isa.load(std::memory_order_relaxed)); }

void set_active_isa(Isa isa) {
  int v = std::min(static_cast<int>(isa), static_cast<int>(best_supported()));
  g_isa.store(v, std::memory_order_relaxed);
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "scalar";
  }
}

}  // namespace dk
