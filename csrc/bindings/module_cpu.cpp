// module_cpu.cpp: PYBIND11_MODULE(_C), deepkern's CPU backend.
//
// This file holds the module-wide facts (build info, threads, ISA); each op family binds its
// kernels in its own bind_*.cpp file.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common/cpu_features.h"
#include "common/parallel.h"

#ifndef DEEPKERN_VERSION
#define DEEPKERN_VERSION "0.0.0"
#endif
#ifndef DK_COMPILER
#define DK_COMPILER "unknown"
#endif

namespace py = pybind11;

namespace dk::py_bind {
void bind_layers(py::module_& m);
void bind_testing(py::module_& m);
void bind_bench(py::module_& m);
void bind_optim(py::module_& m);
void bind_loss(py::module_& m);
void bind_fractional(py::module_& m);
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "deepkern CPU backend (C++17, OpenMP, run-time SIMD dispatch)";

  m.def("build_info", [] {
    const dk::CpuInfo& ci = dk::cpu_info();
    py::dict d;
    d["version"] = DEEPKERN_VERSION;
    d["compiler"] = DK_COMPILER;
    d["openmp"] = dk::has_openmp();
    d["num_threads"] = dk::get_num_threads();
    d["simd"] = dk::isa_name(dk::active_isa());
    d["cpu"] = ci.model;
    d["cpu_avx2"] = ci.avx2_fma;
    d["cpu_avx512"] = ci.avx512;
    d["l1d_bytes"] = ci.l1d;
    d["l2_bytes"] = ci.l2;
    d["l3_bytes"] = ci.l3;
#ifdef DK_HAVE_X86_VARIANTS
    d["simd_variants"] = std::vector<std::string>{"scalar", "avx2", "avx512"};
#else
    d["simd_variants"] = std::vector<std::string>{"scalar"};
#endif
    return d;
  });
  m.def("get_num_threads", &dk::get_num_threads);
  m.def("set_num_threads", [](int n) {
    if (n < 1) throw std::invalid_argument("set_num_threads: n must be >= 1");
    dk::set_num_threads(n);
  });
  m.def("get_isa", [] { return std::string(dk::isa_name(dk::active_isa())); });
  m.def(
      "set_isa",
      [](const std::string& name) {
        if (name == "avx512") dk::set_active_isa(dk::Isa::avx512);
        else if (name == "avx2") dk::set_active_isa(dk::Isa::avx2);
        else if (name == "scalar") dk::set_active_isa(dk::Isa::scalar);
        else throw std::invalid_argument("set_isa: expected 'scalar', 'avx2' or 'avx512', got '" + name + "'");
        return std::string(dk::isa_name(dk::active_isa()));
      },
      "Lower (never raise beyond the CPU) the SIMD level used by the kernels; returns the level in use.");

  dk::py_bind::bind_layers(m);
  dk::py_bind::bind_testing(m);
  dk::py_bind::bind_bench(m);
  dk::py_bind::bind_optim(m);
  dk::py_bind::bind_loss(m);
  dk::py_bind::bind_fractional(m);
}
