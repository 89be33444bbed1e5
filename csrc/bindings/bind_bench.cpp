// bind_bench.cpp: the machine-limit measurements of cpu/calibrate.h as _C functions, used by
// deepkern/bench.py (`deepkern bench --calibrate`). Each returns a dict of raw timings; the
// Python side turns them into GB/s and GFLOP/s and keeps the best and the median.
#include <string>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings/array_check.h"
#include "common/check.h"
#include "cpu/calibrate.h"

namespace py = pybind11;

namespace dk::py_bind {

namespace {

py::dict to_dict(const cpu::TimedRuns& r, const char* work_name, const char* units_name) {
  py::dict d;
  d[work_name] = r.work;
  d[units_name] = r.units_per_run;
  d["seconds"] = r.seconds;
  d["threads"] = r.threads;
  d["isa"] = isa_name(r.isa);
  return d;
}

Isa parse_isa(const std::string& name) {
  if (name == "avx512") return Isa::avx512;
  if (name == "avx2") return Isa::avx2;
  if (name == "scalar") return Isa::scalar;
  DK_CHECK(false, "isa must be 'scalar', 'avx2' or 'avx512', got '", name, "'");
  return Isa::scalar;
}

}  // namespace

void bind_bench(py::module_& m) {
  m.def(
      "calibrate_triad",
      [](int64_t n, double min_seconds, int repeats) {
        cpu::TimedRuns r;
        {
          py::gil_scoped_release nogil;
          r = cpu::triad(n, min_seconds, repeats);
        }
        py::dict d = to_dict(r, "passes", "bytes_per_run");
        d["n"] = n;
        return d;
      },
      py::arg("n"), py::arg("min_seconds") = 0.02, py::arg("repeats") = 5,
      R"pbdoc(STREAM-like triad a = b + s*c over n float32 elements per array (12*n bytes
per pass counted), on get_num_threads() threads with the SIMD level in use. Returns a dict:
n, passes (per run), bytes_per_run, seconds (one per run), threads, isa.)pbdoc");

  m.def(
      "triad_pass",
      [](py::array a, py::array b, py::array c, double s) {
        DK_CHECK(a.ndim() == 1, "a must be 1-D, got ", shape_str(a));
        const int64_t n = a.shape(0);
        check_shape(b, "b", {n});
        check_shape(c, "c", {n});
        float* ap = out_ptr<float>(a, "a");
        const float* bp = in_ptr<float>(b, "b");
        const float* cp = in_ptr<float>(c, "c");
        auto apart = [&](const float* q) { return ap + n <= q || q + n <= ap; };
        DK_CHECK(n == 0 || (apart(bp) && apart(cp)), "a must not share memory with b or c");
        py::gil_scoped_release nogil;
        cpu::triad_once(ap, bp, cp, static_cast<float>(s), n);
      },
      py::arg("a").noconvert(), py::arg("b").noconvert(), py::arg("c").noconvert(), py::arg("s"),
      "One triad pass a = b + s*c over three float32 arrays of one length (12 bytes per element "
      "counted), on get_num_threads() threads: the side-by-side bandwidth reference of deepkern "
      "bench's memory-bound rows.");

  m.def(
      "calibrate_fma",
      [](const std::string& isa, double min_seconds, int repeats) {
        const Isa want = isa.empty() ? active_isa() : parse_isa(isa);
        cpu::TimedRuns r;
        {
          py::gil_scoped_release nogil;
          r = cpu::fma_peak(want, min_seconds, repeats);
        }
        return to_dict(r, "iters", "flops_per_run");
      },
      py::arg("isa") = "", py::arg("min_seconds") = 0.05, py::arg("repeats") = 5,
      R"pbdoc(Peak multiply-add rate: independent FMA chains in registers on every thread.
isa: 'scalar', 'avx2', 'avx512' or '' for the level in use (clamped to what the CPU has).
Returns a dict: iters (per run), flops_per_run (all threads), seconds, threads, isa.)pbdoc");
}

}  // namespace dk::py_bind
