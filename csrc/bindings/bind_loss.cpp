// bind_loss.cpp: the fused cross-entropy of kernels.h as a _C function (pattern: bind_layers.cpp).
#include <cmath>

#include "bindings/array_check.h"
#include "kernels.h"

namespace dk::py_bind {

void bind_loss(py::module_& m) {
  m.def(
      "cross_entropy_indices",
      [](py::array grad, py::array logits, py::array targets, double eps, double scale) -> py::object {
        DK_CHECK(logits.ndim() == 2, "logits must have shape (N, C), got ", shape_str(logits));
        const int64_t N = logits.shape(0), C = logits.shape(1);
        DK_CHECK(N > 0 && C > 0, "logits must not be empty, got ", shape_str(logits));
        check_shape(grad, "grad", {N, C});
        check_shape(targets, "targets", {N});
        DK_CHECK(std::isfinite(eps) && std::isfinite(scale), "eps and scale must be finite");
        const int64_t* yp = in_ptr<int64_t>(targets, "targets");
        double loss = 0.0;
        const bool ok = dispatch_float(logits, "logits", [&](auto tag) {
          using T = decltype(tag);
          T* gp = out_ptr<T>(grad, "grad");
          const T* zp = in_ptr<T>(logits, "logits");
          py::gil_scoped_release nogil;
          return cpu::cross_entropy_indices<T>(gp, &loss, zp, yp, N, C, eps, scale);
        });
        if (!ok) return py::none();
        return py::float_(loss);
      },
      py::arg("grad").noconvert(), py::arg("logits").noconvert(), py::arg("targets").noconvert(),
      py::arg("eps"), py::arg("scale"),
      "grad <- d loss / d logits; returns the loss (mean with scale=1/N, sum with scale=1), or "
      "None, writing nothing, when a target is outside [0, C)");
}

}  // namespace dk::py_bind
