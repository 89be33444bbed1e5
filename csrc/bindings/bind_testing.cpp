// bind_testing.cpp: _C._testing, hooks for tests that cannot reach a code path through the
// public API without tens of gigabytes of memory. Not part of deepkern's API.
//
//   philox4x32(counter, seed)   the generator behind every dropout mask, for any 64-bit counter:
//                               element i of a mask uses counter i/4, so counters >= 2**32
//                               (the high word in use) need masks of >= 2**34 elements.
//   dropout_mask_from(first, n, p, seed)
//                               the keep bits of elements first .. first + n - 1 (first a
//                               multiple of 4) from the active SIMD level's generator: its
//                               counter high word is otherwise in use only past 2**34 elements.
//   dropout_threshold(p)        the keep threshold of a probability.
//   window_out_size(...)        the output-size formula every window op and binding uses, for
//                               sizes and arguments near 2**31 and 2**32.
//   pool_backward_geometry(dx_shape, dy_shape)
//                               the (kh, kw, sh, sw, dh, dw) max_pool2d_backward's bindings pass
//                               to the kernels: the 2x2/s2 hint that opens the fast paths.
#include <pybind11/pybind11.h>

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "bindings/op_params.h"
#include "common/params.h"
#include "common/check.h"
#include "common/philox.h"
#include "kernels.h"

namespace py = pybind11;

namespace dk::py_bind {

void bind_testing(py::module_& m) {
  py::module_ t = m.def_submodule("_testing", "test hooks (not part of deepkern's API)");
  t.def("philox4x32", [](uint64_t counter, uint64_t seed) {
    const Philox4 r = philox4x32_10(counter, seed);
    return py::make_tuple(r.v[0], r.v[1], r.v[2], r.v[3]);
  });
  t.def("dropout_mask_from", [](uint64_t first, int64_t n, double p, uint64_t seed) {
    DK_CHECK(first % 4 == 0 && n >= 0 && p >= 0.0 && p <= 1.0, "dropout_mask_from: bad arguments");
    py::array_t<uint8_t> mask(n);
    cpu::dropout_mask(mask.mutable_data(), n, p, seed, first);
    return mask;
  });
  t.def("dropout_threshold", [](double p) { return dropout_threshold(p); });
  t.def("window_out_size", &window_out_size, py::arg("size"), py::arg("k"), py::arg("s"),
        py::arg("p"), py::arg("d"), py::arg("ceil_mode"));
  t.def("pool_backward_geometry", [](const std::vector<int64_t>& dx, const std::vector<int64_t>& dy) {
    const Pool2dParams p = bind::pool_backward_sizes(dx, dy);
    return py::make_tuple(p.kh, p.kw, p.sh, p.sw, p.dh, p.dw);
  });
}

}  // namespace dk::py_bind
