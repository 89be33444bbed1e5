// bind_layers.cpp: the layer kernels of kernels.h as _C functions.
//
// Each binding: check every array (dtype, contiguity, writeability, shape) while holding the
// GIL, take the raw pointers, release the GIL, run the kernel. Outputs are allocated by the
// Python caller (deepkern/functional.py) and passed first. The Python layer validates user
// input with friendly messages first; these checks keep direct _C calls from crashing.
#include <optional>

#include <pybind11/stl.h>

#include "bindings/array_check.h"
#include "bindings/op_params.h"
#include "common/parallel.h"
#include "kernels.h"

namespace dk::py_bind {

namespace {

using bind::Pair;
using bind::Shape;

// Shapes of NumPy arrays as op_params.h's plain vectors.
Shape shape_of(const py::array& a) { return Shape(a.shape(), a.shape() + a.ndim()); }

Conv2dParams conv_params(const py::array& x, const py::array& w, const py::array& y, Pair stride,
                         Pair padding, Pair dilation, int64_t groups) {
  return bind::conv_params(shape_of(x), shape_of(w), shape_of(y), stride, padding, dilation, groups);
}

Pool2dParams pool_params(const py::array& x, const py::array& y, Pair k, Pair s, Pair pad, Pair d,
                         bool ceil_mode, bool count_include_pad) {
  return bind::pool_params(shape_of(x), shape_of(y), k, s, pad, d, ceil_mode, count_include_pad);
}

BatchNormParams bn_params(const py::array& x, double momentum, double eps) {
  return bind::bn_params(shape_of(x), momentum, eps);
}

template <class T>
const T* opt_in(const std::optional<py::array>& a, const char* name, int64_t n) {
  if (!a) return nullptr;
  check_size(*a, name, n);
  return in_ptr<T>(*a, name);
}

template <class T>
T* opt_out(std::optional<py::array>& a, const char* name, int64_t n) {
  if (!a) return nullptr;
  check_size(*a, name, n);
  return out_ptr<T>(*a, name);
}

}  // namespace

void bind_layers(py::module_& m) {
  m.def(
      "conv2d_forward",
      [](py::array y, py::array x, py::array w, std::optional<py::array> b, Pair stride,
         Pair padding, Pair dilation, int64_t groups, bool relu) {
        const Conv2dParams p = conv_params(x, w, y, stride, padding, dilation, groups);
        check_shape(w, "weight", {p.OC, p.C / p.G, p.KH, p.KW});
        dispatch_float(x, "x", [&](auto tag) {
          using T = decltype(tag);
          T* yp = out_ptr<T>(y, "y");
          const T* xp = in_ptr<T>(x, "x");
          const T* wp = in_ptr<T>(w, "weight");
          const T* bp = opt_in<T>(b, "bias", p.OC);
          py::gil_scoped_release nogil;
          if (relu)
            cpu::conv2d_relu_forward<T>(yp, xp, wp, bp, p);
          else
            cpu::conv2d_forward<T>(yp, xp, wp, bp, p);
        });
      },
      py::arg("y").noconvert(), py::arg("x").noconvert(), py::arg("weight").noconvert(),
      py::arg("bias").noconvert(), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
      py::arg("groups"), py::kw_only(), py::arg("relu") = false,
      "y <- conv2d(x, weight, bias), then ReLU when relu=True (fused)");

  m.def(
      "conv2d_backward_input",
      [](py::array dx, py::array dy, py::array w, Pair stride, Pair padding, Pair dilation,
         int64_t groups) {
        const Conv2dParams p = conv_params(dx, w, dy, stride, padding, dilation, groups);
        dispatch_float(dy, "grad_out", [&](auto tag) {
          using T = decltype(tag);
          T* dxp = out_ptr<T>(dx, "grad_x");
          const T* dyp = in_ptr<T>(dy, "grad_out");
          const T* wp = in_ptr<T>(w, "weight");
          py::gil_scoped_release nogil;
          cpu::conv2d_backward_input<T>(dxp, dyp, wp, p);
        });
      },
      py::arg("grad_x").noconvert(), py::arg("grad_out").noconvert(),
      py::arg("weight").noconvert(), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
      py::arg("groups"), "grad_x <- conv2d backward w.r.t. the input");

  m.def(
      "conv2d_backward_weight",
      [](py::array dw, std::optional<py::array> db, py::array dy, py::array x, Pair stride,
         Pair padding, Pair dilation, int64_t groups) {
        const Conv2dParams p = conv_params(x, dw, dy, stride, padding, dilation, groups);
        dispatch_float(dy, "grad_out", [&](auto tag) {
          using T = decltype(tag);
          T* dwp = out_ptr<T>(dw, "grad_weight");
          T* dbp = opt_out<T>(db, "grad_bias", p.OC);
          const T* dyp = in_ptr<T>(dy, "grad_out");
          const T* xp = in_ptr<T>(x, "x");
          py::gil_scoped_release nogil;
          cpu::conv2d_backward_weight<T>(dwp, dbp, dyp, xp, p);
        });
      },
      py::arg("grad_weight").noconvert(), py::arg("grad_bias").noconvert(),
      py::arg("grad_out").noconvert(), py::arg("x").noconvert(), py::arg("stride"),
      py::arg("padding"), py::arg("dilation"), py::arg("groups"),
      "grad_weight, grad_bias <- conv2d backward w.r.t. the parameters");

  m.def(
      "max_pool2d_forward",
      [](py::array y, py::array idx, py::array x, Pair k, Pair s, Pair pad, Pair d, bool ceil_mode) {
        const Pool2dParams p = pool_params(x, y, k, s, pad, d, ceil_mode, true);
        check_shape(idx, "indices", {p.N, p.C, p.OH, p.OW});
        dispatch_float(x, "x", [&](auto tag) {
          using T = decltype(tag);
          T* yp = out_ptr<T>(y, "y");
          int64_t* ip = out_ptr<int64_t>(idx, "indices");
          const T* xp = in_ptr<T>(x, "x");
          py::gil_scoped_release nogil;
          cpu::max_pool2d_forward<T>(yp, ip, xp, p);
        });
      },
      py::arg("y").noconvert(), py::arg("indices").noconvert(), py::arg("x").noconvert(),
      py::arg("kernel_size"), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
      py::arg("ceil_mode"));

  m.def(
      "max_pool2d_backward",
      [](py::array dx, py::array dy, py::array idx) {
        const Pool2dParams p = bind::pool_backward_sizes(shape_of(dx), shape_of(dy));
        check_shape(idx, "indices", {p.N, p.C, p.OH, p.OW});
        dispatch_float(dy, "grad_out", [&](auto tag) {
          using T = decltype(tag);
          T* dxp = out_ptr<T>(dx, "grad_x");
          const T* dyp = in_ptr<T>(dy, "grad_out");
          const int64_t* ip = in_ptr<int64_t>(idx, "indices");
          py::gil_scoped_release nogil;
          cpu::max_pool2d_backward<T>(dxp, dyp, ip, p);
        });
      },
      py::arg("grad_x").noconvert(), py::arg("grad_out").noconvert(),
      py::arg("indices").noconvert());

  m.def(
      "avg_pool2d_forward",
      [](py::array y, py::array x, Pair k, Pair s, Pair pad, bool ceil_mode, bool count_include_pad) {
        const Pool2dParams p = pool_params(x, y, k, s, pad, {1, 1}, ceil_mode, count_include_pad);
        dispatch_float(x, "x", [&](auto tag) {
          using T = decltype(tag);
          T* yp = out_ptr<T>(y, "y");
          const T* xp = in_ptr<T>(x, "x");
          py::gil_scoped_release nogil;
          cpu::avg_pool2d_forward<T>(yp, xp, p);
        });
      },
      py::arg("y").noconvert(), py::arg("x").noconvert(), py::arg("kernel_size"),
      py::arg("stride"), py::arg("padding"), py::arg("ceil_mode"), py::arg("count_include_pad"));

  m.def(
      "avg_pool2d_backward",
      [](py::array dx, py::array dy, Pair k, Pair s, Pair pad, bool ceil_mode, bool count_include_pad) {
        const Pool2dParams p = pool_params(dx, dy, k, s, pad, {1, 1}, ceil_mode, count_include_pad);
        dispatch_float(dy, "grad_out", [&](auto tag) {
          using T = decltype(tag);
          T* dxp = out_ptr<T>(dx, "grad_x");
          const T* dyp = in_ptr<T>(dy, "grad_out");
          py::gil_scoped_release nogil;
          cpu::avg_pool2d_backward<T>(dxp, dyp, p);
        });
      },
      py::arg("grad_x").noconvert(), py::arg("grad_out").noconvert(), py::arg("kernel_size"),
      py::arg("stride"), py::arg("padding"), py::arg("ceil_mode"), py::arg("count_include_pad"));

  m.def(
      "batch_norm_forward",
      [](py::array y, py::array save_mean, py::array save_invstd, py::array x,
         std::optional<py::array> w, std::optional<py::array> b,
         std::optional<py::array> running_mean, std::optional<py::array> running_var,
         bool training, double momentum, double eps, bool relu) {
        BatchNormParams p = bn_params(x, momentum, eps);
        p.relu = relu;
        DK_CHECK(y.ndim() == x.ndim() && y.size() == x.size(), "batch_norm: y has the wrong shape");
        DK_CHECK(running_mean.has_value() == running_var.has_value(),
                 "batch_norm: running_mean and running_var go together");
        DK_CHECK(training || running_mean.has_value(), "batch_norm: eval needs running stats");
        DK_CHECK(!training || p.N * p.HW > 1,
                 "Expected more than 1 value per channel when training");
        dispatch_float(x, "x", [&](auto tag) {
          using T = decltype(tag);
          check_size(save_mean, "save_mean", p.C);
          check_size(save_invstd, "save_invstd", p.C);
          T* yp = out_ptr<T>(y, "y");
          T* smp = out_ptr<T>(save_mean, "save_mean");
          T* sip = out_ptr<T>(save_invstd, "save_invstd");
          const T* xp = in_ptr<T>(x, "x");
          const T* wp = opt_in<T>(w, "weight", p.C);
          const T* bp = opt_in<T>(b, "bias", p.C);
          if (training) {
            T* rmp = opt_out<T>(running_mean, "running_mean", p.C);
            T* rvp = opt_out<T>(running_var, "running_var", p.C);
            py::gil_scoped_release nogil;
            cpu::batch_norm_forward_train<T>(yp, smp, sip, rmp, rvp, xp, wp, bp, p);
          } else {
            const T* rmp = opt_in<T>(running_mean, "running_mean", p.C);
            const T* rvp = opt_in<T>(running_var, "running_var", p.C);
            py::gil_scoped_release nogil;
            cpu::batch_norm_forward_eval<T>(yp, smp, sip, xp, wp, bp, rmp, rvp, p);
          }
        });
      },
      py::arg("y").noconvert(), py::arg("save_mean").noconvert(),
      py::arg("save_invstd").noconvert(), py::arg("x").noconvert(), py::arg("weight").noconvert(),
      py::arg("bias").noconvert(), py::arg("running_mean").noconvert(),
      py::arg("running_var").noconvert(), py::arg("training"), py::arg("momentum"),
      py::arg("eps"), py::arg("relu") = false,
      "y, save_mean, save_invstd <- batch_norm (relu: y = relu(batch_norm), batch_norm_relu)");

  m.def(
      "batch_norm_backward",
      [](py::array dx, std::optional<py::array> dw, std::optional<py::array> db, py::array dy,
         py::array x, std::optional<py::array> w, py::array save_mean, py::array save_invstd,
         bool training, std::optional<py::array> relu_y) {
        const BatchNormParams p = bn_params(x, 0.0, 1.0);
        DK_CHECK(dy.ndim() == x.ndim() && dy.size() == x.size() && dx.size() == x.size(),
                 "batch_norm_backward: grad_out, grad_x and x must have the same shape");
        for (py::ssize_t i = 0; i < x.ndim(); ++i)
          DK_CHECK(dy.shape(i) == x.shape(i), "batch_norm_backward: grad_out has the wrong shape");
        dispatch_float(x, "x", [&](auto tag) {
          using T = decltype(tag);
          T* dxp = out_ptr<T>(dx, "grad_x");
          T* dwp = opt_out<T>(dw, "grad_weight", p.C);
          T* dbp = opt_out<T>(db, "grad_bias", p.C);
          const T* dyp = in_ptr<T>(dy, "grad_out");
          const T* xp = in_ptr<T>(x, "x");
          const T* wp = opt_in<T>(w, "weight", p.C);
          check_size(save_mean, "save_mean", p.C);
          check_size(save_invstd, "save_invstd", p.C);
          const T* smp = in_ptr<T>(save_mean, "save_mean");
          const T* sip = in_ptr<T>(save_invstd, "save_invstd");
          const T* ryp = nullptr;
          if (relu_y) {
            DK_CHECK(relu_y->ndim() == x.ndim(), "batch_norm_backward: y has the wrong shape");
            for (py::ssize_t i = 0; i < x.ndim(); ++i)
              DK_CHECK(relu_y->shape(i) == x.shape(i), "batch_norm_backward: y has the wrong shape");
            ryp = in_ptr<T>(*relu_y, "y");
          }
          py::gil_scoped_release nogil;
          cpu::batch_norm_backward<T>(dxp, dwp, dbp, dyp, xp, wp, smp, sip, training, p, ryp);
        });
      },
      py::arg("grad_x").noconvert(), py::arg("grad_weight").noconvert(),
      py::arg("grad_bias").noconvert(), py::arg("grad_out").noconvert(), py::arg("x").noconvert(),
      py::arg("weight").noconvert(), py::arg("save_mean").noconvert(),
      py::arg("save_invstd").noconvert(), py::arg("training"), py::arg("relu_y").noconvert() = py::none(),
      "grad_x, grad_weight, grad_bias <- batch_norm backward (relu_y: of batch_norm_relu, whose output it is)");

  m.def(
      "dropout_forward",
      [](py::array y, py::array mask, py::array x, double p, uint64_t seed) {
        DK_CHECK(p >= 0.0 && p <= 1.0, "dropout probability has to be between 0 and 1, but got ", p);
        check_size(y, "y", x.size());
        check_size(mask, "mask", x.size());
        dispatch_float(x, "x", [&](auto tag) {
          using T = decltype(tag);
          T* yp = out_ptr<T>(y, "y");
          uint8_t* mp = out_ptr<uint8_t>(mask, "mask");
          const T* xp = in_ptr<T>(x, "x");
          const int64_t n = x.size();
          py::gil_scoped_release nogil;
          cpu::dropout_forward<T>(yp, mp, xp, n, p, seed);
        });
      },
      py::arg("y").noconvert(), py::arg("mask").noconvert(), py::arg("x").noconvert(),
      py::arg("p"), py::arg("seed"));

  m.def(
      "dropout_backward",
      [](py::array dx, py::array dy, py::array mask, double p) {
        DK_CHECK(p >= 0.0 && p <= 1.0, "dropout probability has to be between 0 and 1, but got ", p);
        check_size(dx, "grad_x", dy.size());
        check_size(mask, "mask", dy.size());
        dispatch_float(dy, "grad_out", [&](auto tag) {
          using T = decltype(tag);
          T* dxp = out_ptr<T>(dx, "grad_x");
          const T* dyp = in_ptr<T>(dy, "grad_out");
          const uint8_t* mp = in_ptr<uint8_t>(mask, "mask");
          const int64_t n = dy.size();
          py::gil_scoped_release nogil;
          cpu::dropout_backward<T>(dxp, dyp, mp, n, p);
        });
      },
      py::arg("grad_x").noconvert(), py::arg("grad_out").noconvert(), py::arg("mask").noconvert(),
      py::arg("p"));

  m.def(
      "dropout_mask",
      [](py::array mask, double p, uint64_t seed) {
        DK_CHECK(p >= 0.0 && p <= 1.0, "dropout probability has to be between 0 and 1, but got ", p);
        uint8_t* mp = out_ptr<uint8_t>(mask, "mask");
        const int64_t n = mask.size();
        py::gil_scoped_release nogil;
        cpu::dropout_mask(mp, n, p, seed);
      },
      py::arg("mask").noconvert(), py::arg("p"), py::arg("seed"),
      "mask <- the dropout keep-mask of (seed, p) alone");

  m.def(
      "relu_forward",
      [](py::array y, py::array x) {
        check_size(y, "y", x.size());
        dispatch_float(x, "x", [&](auto tag) {
          using T = decltype(tag);
          T* yp = out_ptr<T>(y, "y");
          const T* xp = in_ptr<T>(x, "x");
          const int64_t n = x.size();
          py::gil_scoped_release nogil;
          cpu::relu_forward<T>(yp, xp, n);
        });
      },
      py::arg("y").noconvert(), py::arg("x").noconvert());

  m.def(
      "relu_backward",
      [](py::array dx, py::array dy, py::array y) {
        check_size(dx, "grad_x", dy.size());
        check_size(y, "y", dy.size());
        dispatch_float(dy, "grad_out", [&](auto tag) {
          using T = decltype(tag);
          T* dxp = out_ptr<T>(dx, "grad_x");
          const T* dyp = in_ptr<T>(dy, "grad_out");
          const T* yp = in_ptr<T>(y, "y");
          const int64_t n = dy.size();
          py::gil_scoped_release nogil;
          cpu::relu_backward<T>(dxp, dyp, yp, n);
        });
      },
      py::arg("grad_x").noconvert(), py::arg("grad_out").noconvert(), py::arg("y").noconvert());
}

}  // namespace dk::py_bind
