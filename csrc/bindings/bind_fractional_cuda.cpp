// bind_fractional_cuda.cpp: fractional max pooling on CUDA arrays (the pattern of
// bind_layers_cuda.cpp: read the arrays' __cuda_array_interface__, check, queue the kernel).
//
// The samples live on the device, so their values cannot be checked here without a copy and a
// synchronization: deepkern.functional validates them on the host before it uploads them,
// and the kernel clamps every region start into the plane (common/fractional.h), so even a
// direct _cuda call with bad samples never reads outside the input.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bindings/cuda_array_check.h"
#include "cuda/kernels_cuda.h"

namespace dk::py_cuda {

void bind_fractional(py::module_& m) {
  m.def(
      "fractional_max_pool2d_forward",
      [](py::object y_, py::object idx_, py::object x_, py::object s_, int64_t KH, int64_t KW,
         uintptr_t stream) {
        const DevArray y = read_cai(y_, "y"), idx = read_cai(idx_, "indices"), x = read_cai(x_, "x"),
                       s = read_cai(s_, "samples");
        DK_CHECK(x.shape.size() == 4 && y.shape.size() == 4, "x and y must be 4-D (N, C, H, W)");
        const FractionalPool2dParams p{x.shape[0], x.shape[1], x.shape[2], x.shape[3],
                                       y.shape[2], y.shape[3], KH, KW};
        DK_CHECK(p.KH >= 1 && p.KW >= 1 && p.OH >= 1 && p.OW >= 1 && p.OH + p.KH - 1 <= p.H &&
                     p.OW + p.KW - 1 <= p.W,
                 "fractional_max_pool2d: output (", p.OH, ", ", p.OW, ") with kernel_size (", KH, ", ",
                 KW, ") does not fit an input of (", p.H, ", ", p.W, ")");
        check_shape(y, {p.N, p.C, p.OH, p.OW});
        check_shape(idx, {p.N, p.C, p.OH, p.OW});
        check_shape(s, {p.N, p.C, 2});
        float* yp = out_ptr<float>(y);
        int64_t* ip = out_ptr<int64_t>(idx);
        const float* xp = in_ptr<float>(x);
        const float* sp = in_ptr<float>(s);
        run_on(device_of({&y, &idx, &x, &s}),
               [&] { cuda::fractional_max_pool2d_forward(yp, ip, xp, sp, p, as_stream(stream)); });
      },
      py::arg("y"), py::arg("indices"), py::arg("x"), py::arg("samples"), py::arg("kh"), py::arg("kw"),
      py::arg("stream"));
}

}  // namespace dk::py_cuda
