// module_cuda.cpp: PYBIND11_MODULE(_cuda), deepkern's CUDA backend.
//
// Device arrays cross as integer pointers (from __cuda_array_interface__) plus a stream
// handle; outputs are allocated by the caller's array library (deepkern/_cuda_backend.py).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "cuda/cuda_common.cuh"

namespace py = pybind11;

#ifndef DEEPKERN_VERSION
#define DEEPKERN_VERSION "0.0.0"
#endif

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "deepkern CUDA backend";
  m.def("device_count", &dk::cuda::device_count);
  m.def("build_info", [] {
    py::dict d;
    d["version"] = std::to_string(CUDART_VERSION / 1000) + "." + std::to_string((CUDART_VERSION % 1000) / 10);
    std::vector<int> archs;
    std::string s = DK_CUDA_ARCHS;
    size_t pos = 0;
    while (pos < s.size()) {
      size_t next = s.find(',', pos);
      if (next == std::string::npos) next = s.size();
      archs.push_back(std::stoi(s.substr(pos, next - pos)));
      pos = next + 1;
    }
    d["archs"] = archs;
    return d;
  });
}
