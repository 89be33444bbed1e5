// bind_fractional.cpp: fractional max pooling as _C functions (the pattern of bind_layers.cpp:
// check every array while holding the GIL, then release it and run the kernel).
//
// The Python layer (deepkern/functional.py) validates user input with friendly messages and
// allocates the outputs; the checks here keep a direct _C call from crashing: shapes, dtypes,
// region sizes, and samples in [0, 1) (a NaN sample would make the float-to-int conversion
// of the region starts undefined behaviour).
#include <cmath>
#include <vector>

#include <pybind11/stl.h>

#include "bindings/array_check.h"
#include "kernels.h"

namespace dk::py_bind {

void bind_fractional(py::module_& m) {
  m.def(
      "fractional_max_pool2d_forward",
      [](py::array y, py::array idx, py::array x, py::array samples, int64_t KH, int64_t KW) {
        DK_CHECK(x.ndim() == 4, "x must be 4-D (N, C, H, W), got shape ", shape_str(x));
        DK_CHECK(y.ndim() == 4, "y must be 4-D (N, C, OH, OW), got shape ", shape_str(y));
        const FractionalPool2dParams p{x.shape(0), x.shape(1), x.shape(2), x.shape(3),
                                       y.shape(2), y.shape(3), KH, KW};
        DK_CHECK(p.KH >= 1 && p.KW >= 1, "kernel_size must be positive, got (", KH, ", ", KW, ")");
        DK_CHECK(p.OH >= 1 && p.OW >= 1, "output size must be positive, got (", p.OH, ", ", p.OW, ")");
        DK_CHECK(p.OH + p.KH - 1 <= p.H && p.OW + p.KW - 1 <= p.W, "fractional_max_pool2d: output size (",
                 p.OH, ", ", p.OW, ") with kernel_size (", KH, ", ", KW, ") needs an input of at least (",
                 p.OH + p.KH - 1, ", ", p.OW + p.KW - 1, "), got (", p.H, ", ", p.W, ")");
        check_shape(y, "y", {p.N, p.C, p.OH, p.OW});
        check_shape(idx, "indices", {p.N, p.C, p.OH, p.OW});
        check_shape(samples, "samples", {p.N, p.C, 2});
        dispatch_float(x, "x", [&](auto tag) {
          using T = decltype(tag);
          T* yp = out_ptr<T>(y, "y");
          int64_t* ip = out_ptr<int64_t>(idx, "indices");
          const T* xp = in_ptr<T>(x, "x");
          const T* sp = in_ptr<T>(samples, "samples");
          for (int64_t i = 0; i < 2 * p.N * p.C; ++i)
            DK_CHECK(sp[i] >= T(0) && sp[i] < T(1), "samples must lie in [0, 1), got samples.flat[", i,
                     "] = ", sp[i]);
          py::gil_scoped_release nogil;
          cpu::fractional_max_pool2d_forward<T>(yp, ip, xp, sp, p);
        });
      },
      py::arg("y").noconvert(), py::arg("indices").noconvert(), py::arg("x").noconvert(),
      py::arg("samples").noconvert(), py::arg("kh"), py::arg("kw"),
      "y, indices <- fractional_max_pool2d(x) with the regions that samples place");

  m.def(
      "fractional_region_starts",
      [](double u, int64_t L, int64_t O, int64_t K, bool single) {
        DK_CHECK(u >= 0 && u < 1, "u must lie in [0, 1), got ", u);
        DK_CHECK(O >= 1 && K >= 1 && O + K - 1 <= L, "need O + K - 1 <= L, got L=", L, " O=", O, " K=", K);
        std::vector<int64_t> s(static_cast<size_t>(O));
        if (single)
          cpu::fractional_region_starts<float>(s.data(), static_cast<float>(u), L, O, K);
        else
          cpu::fractional_region_starts<double>(s.data(), u, L, O, K);
        return s;
      },
      py::arg("u"), py::arg("L"), py::arg("O"), py::arg("K"), py::arg("single") = true,
      "(for tests) the start of each of the O pooling regions along an axis of length L");
}

}  // namespace dk::py_bind
