// module_cuda.cpp: PYBIND11_MODULE(_cuda), deepkern's CUDA backend.
//
// Device arrays cross as the array objects themselves (CuPy arrays, PyTorch CUDA tensors, any
// object exposing __cuda_array_interface__), plus a stream handle (an integer cudaStream_t).
// This file holds the module-wide facts (build, driver, devices); each op family binds its
// kernels in its own bind_*_cuda.cpp file (cuda_array_check.h: the argument checks they share).
// Kernel launch errors become RuntimeError (cuda_common.cuh); nothing calls exit().
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "cuda/cuda_common.cuh"

namespace py = pybind11;

#ifndef DK_CUDA_ARCHS
#define DK_CUDA_ARCHS ""
#endif

namespace dk::py_cuda {

void bind_layers(py::module_& m);
void bind_optim(py::module_& m);
void bind_fractional(py::module_& m);

namespace {

std::vector<int> archs() {
  std::vector<int> out;
  const std::string s = DK_CUDA_ARCHS;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t next = s.find(',', pos);
    if (next == std::string::npos) next = s.size();
    const std::string item = s.substr(pos, next - pos);
    if (!item.empty() && item.find_first_not_of("0123456789") == std::string::npos)
      out.push_back(std::stoi(item));
    pos = next + 1;
  }
  return out;
}

}  // namespace

}  // namespace dk::py_cuda

PYBIND11_MODULE(_cuda, m) {
  namespace dc = dk::cuda;
  m.doc() = "deepkern CUDA backend (hand-written kernels, float32, arrays via __cuda_array_interface__)";
  m.def("device_count", &dc::device_count, "number of visible CUDA devices (0 without a driver)");
  m.def("probe_error", &dc::probe_error, "'' when a CUDA device is usable, else the reason");
  m.def("driver_version", &dc::driver_version, "the driver's CUDA version (e.g. 13000), 0 if none");
  m.def("build_info", [] {
    py::dict d;
    d["version"] = std::to_string(CUDART_VERSION / 1000) + "." + std::to_string((CUDART_VERSION % 1000) / 10);
    d["archs"] = dk::py_cuda::archs();
    d["tf32"] = false;  // FP32 FMAs only; no tensor-core path in this build
    return d;
  });
  m.def(
      "device_properties",
      [](int device) {
        cudaDeviceProp prop{};
        DK_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
        py::dict d;
        d["name"] = std::string(prop.name);
        d["compute_capability"] = std::to_string(prop.major) + "." + std::to_string(prop.minor);
        d["multiprocessors"] = prop.multiProcessorCount;
        d["memory_bytes"] = static_cast<uint64_t>(prop.totalGlobalMem);
        return d;
      },
      py::arg("device"));
  dk::py_cuda::bind_layers(m);
  dk::py_cuda::bind_optim(m);
  dk::py_cuda::bind_fractional(m);
}
