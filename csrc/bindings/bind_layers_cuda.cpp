// bind_layers_cuda.cpp: the layer kernels of cuda/kernels_cuda.h as _cuda functions.
//
// Mirrors bind_layers.cpp: outputs first, allocated by the Python caller
// (deepkern/_cuda_backend.py), then the inputs, the op's arguments and the stream. Each
// binding reads and checks every array (cuda_array_check.h) and the op parameters
// (op_params.h, shared with _C) while holding the GIL, checks the device of every pointer,
// then queues the kernels without the GIL.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>

#include "bindings/cuda_array_check.h"
#include "bindings/op_params.h"
#include "cuda/kernels_cuda.h"

namespace dk::py_cuda {

namespace {
using bind::Pair;
using bind::bn_params;
using bind::conv_params;
using bind::pool_params;
}  // namespace

void bind_layers(py::module_& m) {
  m.def(
      "conv2d_forward",
      [](py::object y_, py::object x_, py::object w_, py::object b_, Pair stride, Pair padding,
         Pair dilation, int64_t groups, uintptr_t stream) {
        const DevArray y = read_cai(y_, "y"), x = read_cai(x_, "x"), w = read_cai(w_, "weight");
        const auto b = read_opt(b_, "bias");
        const Conv2dParams p =
            conv_params(x.shape, w.shape, y.shape, stride, padding, dilation, groups);
        check_shape(w, {p.OC, p.C / p.G, p.KH, p.KW});
        float* yp = out_ptr<float>(y);
        const float* xp = in_ptr<float>(x);
        const float* wp = in_ptr<float>(w);
        const float* bp = nullptr;
        if (b) {
          check_size(*b, p.OC);
          bp = in_ptr<float>(*b);
        }
        run_on(device_of({&y, &x, &w, opt(b)}),
               [&] { cuda::conv2d_forward(yp, xp, wp, bp, p, as_stream(stream)); });
      },
      py::arg("y"), py::arg("x"), py::arg("weight"), py::arg("bias").none(true), py::arg("stride"),
      py::arg("padding"), py::arg("dilation"), py::arg("groups"), py::arg("stream"),
      "y <- conv2d(x, weight, bias)");

  m.def(
      "conv2d_backward_input",
      [](py::object dx_, py::object dy_, py::object w_, Pair stride, Pair padding, Pair dilation,
         int64_t groups, uintptr_t stream) {
        const DevArray dx = read_cai(dx_, "grad_x"), dy = read_cai(dy_, "grad_out"),
                       w = read_cai(w_, "weight");
        const Conv2dParams p =
            conv_params(dx.shape, w.shape, dy.shape, stride, padding, dilation, groups);
        check_shape(w, {p.OC, p.C / p.G, p.KH, p.KW});
        float* dxp = out_ptr<float>(dx);
        const float* dyp = in_ptr<float>(dy);
        const float* wp = in_ptr<float>(w);
        run_on(device_of({&dx, &dy, &w}),
               [&] { cuda::conv2d_backward_input(dxp, dyp, wp, p, as_stream(stream)); });
      },
      py::arg("grad_x"), py::arg("grad_out"), py::arg("weight"), py::arg("stride"),
      py::arg("padding"), py::arg("dilation"), py::arg("groups"), py::arg("stream"),
      "grad_x <- conv2d backward w.r.t. the input");

  m.def(
      "conv2d_backward_weight",
      [](py::object dw_, py::object db_, py::object dy_, py::object x_, Pair stride, Pair padding,
         Pair dilation, int64_t groups, uintptr_t stream) {
        const DevArray dw = read_cai(dw_, "grad_weight"), dy = read_cai(dy_, "grad_out"),
                       x = read_cai(x_, "x");
        const auto db = read_opt(db_, "grad_bias");
        const Conv2dParams p =
            conv_params(x.shape, dw.shape, dy.shape, stride, padding, dilation, groups);
        check_shape(dw, {p.OC, p.C / p.G, p.KH, p.KW});
        float* dwp = out_ptr<float>(dw);
        float* dbp = nullptr;
        if (db) {
          check_size(*db, p.OC);
          dbp = out_ptr<float>(*db);
        }
        const float* dyp = in_ptr<float>(dy);
        const float* xp = in_ptr<float>(x);
        run_on(device_of({&dw, opt(db), &dy, &x}),
               [&] { cuda::conv2d_backward_weight(dwp, dbp, dyp, xp, p, as_stream(stream)); });
      },
      py::arg("grad_weight"), py::arg("grad_bias").none(true), py::arg("grad_out"), py::arg("x"),
      py::arg("stride"), py::arg("padding"), py::arg("dilation"), py::arg("groups"),
      py::arg("stream"), "grad_weight, grad_bias <- conv2d backward w.r.t. the parameters");

  m.def(
      "max_pool2d_forward",
      [](py::object y_, py::object idx_, py::object x_, Pair k, Pair s, Pair pad, Pair d,
         bool ceil_mode, uintptr_t stream) {
        const DevArray y = read_cai(y_, "y"), idx = read_cai(idx_, "indices"), x = read_cai(x_, "x");
        const Pool2dParams p = pool_params(x.shape, y.shape, k, s, pad, d, ceil_mode, true);
        check_shape(idx, {p.N, p.C, p.OH, p.OW});
        float* yp = out_ptr<float>(y);
        int64_t* ip = out_ptr<int64_t>(idx);
        const float* xp = in_ptr<float>(x);
        run_on(device_of({&y, &idx, &x}),
               [&] { cuda::max_pool2d_forward(yp, ip, xp, p, as_stream(stream)); });
      },
      py::arg("y"), py::arg("indices"), py::arg("x"), py::arg("kernel_size"), py::arg("stride"),
      py::arg("padding"), py::arg("dilation"), py::arg("ceil_mode"), py::arg("stream"));

  m.def(
      "max_pool2d_backward",
      [](py::object dx_, py::object dy_, py::object idx_, uintptr_t stream) {
        const DevArray dx = read_cai(dx_, "grad_x"), dy = read_cai(dy_, "grad_out"),
                       idx = read_cai(idx_, "indices");
        const Pool2dParams p = bind::pool_backward_sizes(dx.shape, dy.shape);
        check_shape(idx, {p.N, p.C, p.OH, p.OW});
        float* dxp = out_ptr<float>(dx);
        const float* dyp = in_ptr<float>(dy);
        const int64_t* ip = in_ptr<int64_t>(idx);
        run_on(device_of({&dx, &dy, &idx}),
               [&] { cuda::max_pool2d_backward(dxp, dyp, ip, p, as_stream(stream)); });
      },
      py::arg("grad_x"), py::arg("grad_out"), py::arg("indices"), py::arg("stream"));

  m.def(
      "avg_pool2d_forward",
      [](py::object y_, py::object x_, Pair k, Pair s, Pair pad, bool ceil_mode,
         bool count_include_pad, uintptr_t stream) {
        const DevArray y = read_cai(y_, "y"), x = read_cai(x_, "x");
        const Pool2dParams p =
            pool_params(x.shape, y.shape, k, s, pad, {1, 1}, ceil_mode, count_include_pad);
        float* yp = out_ptr<float>(y);
        const float* xp = in_ptr<float>(x);
        run_on(device_of({&y, &x}), [&] { cuda::avg_pool2d_forward(yp, xp, p, as_stream(stream)); });
      },
      py::arg("y"), py::arg("x"), py::arg("kernel_size"), py::arg("stride"), py::arg("padding"),
      py::arg("ceil_mode"), py::arg("count_include_pad"), py::arg("stream"));

  m.def(
      "avg_pool2d_backward",
      [](py::object dx_, py::object dy_, Pair k, Pair s, Pair pad, bool ceil_mode,
         bool count_include_pad, uintptr_t stream) {
        const DevArray dx = read_cai(dx_, "grad_x"), dy = read_cai(dy_, "grad_out");
        const Pool2dParams p =
            pool_params(dx.shape, dy.shape, k, s, pad, {1, 1}, ceil_mode, count_include_pad);
        float* dxp = out_ptr<float>(dx);
        const float* dyp = in_ptr<float>(dy);
        run_on(device_of({&dx, &dy}),
               [&] { cuda::avg_pool2d_backward(dxp, dyp, p, as_stream(stream)); });
      },
      py::arg("grad_x"), py::arg("grad_out"), py::arg("kernel_size"), py::arg("stride"),
      py::arg("padding"), py::arg("ceil_mode"), py::arg("count_include_pad"), py::arg("stream"));

  m.def(
      "batch_norm_forward",
      [](py::object y_, py::object sm_, py::object si_, py::object x_, py::object w_, py::object b_,
         py::object rm_, py::object rv_, bool training, double momentum, double eps,
         uintptr_t stream, bool relu) {
        const DevArray y = read_cai(y_, "y"), sm = read_cai(sm_, "save_mean"),
                       si = read_cai(si_, "save_invstd"), x = read_cai(x_, "x");
        const auto w = read_opt(w_, "weight"), b = read_opt(b_, "bias");
        const auto rm = read_opt(rm_, "running_mean"), rv = read_opt(rv_, "running_var");
        BatchNormParams p = bn_params(x.shape, momentum, eps);
        p.relu = relu;
        check_same_shape(y, x);
        DK_CHECK(rm.has_value() == rv.has_value(),
                 "batch_norm: running_mean and running_var go together");
        DK_CHECK(training || rm.has_value(), "batch_norm: eval needs running stats");
        DK_CHECK(!training || p.N * p.HW > 1, "Expected more than 1 value per channel when training");
        check_size(sm, p.C);
        check_size(si, p.C);
        float* yp = out_ptr<float>(y);
        float* smp = out_ptr<float>(sm);
        float* sip = out_ptr<float>(si);
        const float* xp = in_ptr<float>(x);
        const float* wp = nullptr;
        const float* bp = nullptr;
        if (w) { check_size(*w, p.C); wp = in_ptr<float>(*w); }
        if (b) { check_size(*b, p.C); bp = in_ptr<float>(*b); }
        if (rm) {
          check_size(*rm, p.C);
          check_size(*rv, p.C);
        }
        float* rmp = nullptr;
        float* rvp = nullptr;
        if (training && rm) {  // updated in place: must be writable and alias nothing
          rmp = out_ptr<float>(*rm);
          rvp = out_ptr<float>(*rv);
          for (const DevArray* other : {&x, &y, &sm, &si, opt(w), opt(b)}) {
            if (!other) continue;
            check_disjoint(*rm, *other, 4);
            check_disjoint(*rv, *other, 4);
          }
          check_disjoint(*rm, *rv, 4);
        }
        const float* rm_in = !training ? in_ptr<float>(*rm) : nullptr;  // eval: read only
        const float* rv_in = !training ? in_ptr<float>(*rv) : nullptr;
        const int dev = device_of({&y, &sm, &si, &x, opt(w), opt(b), opt(rm), opt(rv)});
        const cudaStream_t st = as_stream(stream);
        if (training) {
          run_on(dev, [&] {
            cuda::batch_norm_forward_train(yp, smp, sip, rmp, rvp, xp, wp, bp, p, st);
          });
        } else {
          run_on(dev, [&] {
            cuda::batch_norm_forward_eval(yp, smp, sip, xp, wp, bp, rm_in, rv_in, p, st);
          });
        }
      },
      py::arg("y"), py::arg("save_mean"), py::arg("save_invstd"), py::arg("x"),
      py::arg("weight").none(true), py::arg("bias").none(true), py::arg("running_mean").none(true),
      py::arg("running_var").none(true), py::arg("training"), py::arg("momentum"), py::arg("eps"),
      py::arg("stream"), py::arg("relu") = false);

  m.def(
      "batch_norm_backward",
      [](py::object dx_, py::object dw_, py::object db_, py::object dy_, py::object x_,
         py::object w_, py::object sm_, py::object si_, bool training, uintptr_t stream,
         py::object ry_) {
        const DevArray dx = read_cai(dx_, "grad_x"), dy = read_cai(dy_, "grad_out"),
                       x = read_cai(x_, "x"), sm = read_cai(sm_, "save_mean"),
                       si = read_cai(si_, "save_invstd");
        const auto dw = read_opt(dw_, "grad_weight"), db = read_opt(db_, "grad_bias");
        const auto w = read_opt(w_, "weight");
        const BatchNormParams p = bn_params(x.shape, 0.0, 1.0);
        check_same_shape(dy, x);
        check_same_shape(dx, x);
        check_size(sm, p.C);
        check_size(si, p.C);
        float* dxp = out_ptr<float>(dx);
        float* dwp = nullptr;
        float* dbp = nullptr;
        const float* wp = nullptr;
        if (dw) { check_size(*dw, p.C); dwp = out_ptr<float>(*dw); }
        if (db) { check_size(*db, p.C); dbp = out_ptr<float>(*db); }
        if (w) { check_size(*w, p.C); wp = in_ptr<float>(*w); }
        const float* dyp = in_ptr<float>(dy);
        const float* xp = in_ptr<float>(x);
        const float* smp = in_ptr<float>(sm);
        const float* sip = in_ptr<float>(si);
        const auto ry = read_opt(ry_, "y");  // batch_norm_relu's output
        const float* ryp = nullptr;
        if (ry) { check_same_shape(*ry, x); ryp = in_ptr<float>(*ry); }
        run_on(device_of({&dx, opt(dw), opt(db), &dy, &x, opt(w), &sm, &si, opt(ry)}), [&] {
          cuda::batch_norm_backward(dxp, dwp, dbp, dyp, xp, wp, smp, sip, training, p, ryp,
                                    as_stream(stream));
        });
      },
      py::arg("grad_x"), py::arg("grad_weight").none(true), py::arg("grad_bias").none(true),
      py::arg("grad_out"), py::arg("x"), py::arg("weight").none(true), py::arg("save_mean"),
      py::arg("save_invstd"), py::arg("training"), py::arg("stream"),
      py::arg("relu_y").none(true) = py::none());

  m.def(
      "dropout_forward",
      [](py::object y_, py::object mask_, py::object x_, double p, uint64_t seed, uintptr_t stream) {
        DK_CHECK(p >= 0.0 && p <= 1.0, "dropout probability has to be between 0 and 1, but got ", p);
        const DevArray y = read_cai(y_, "y"), mask = read_cai(mask_, "mask"), x = read_cai(x_, "x");
        check_size(y, x.size);
        check_size(mask, x.size);
        float* yp = out_ptr<float>(y);
        uint8_t* mp = out_ptr<uint8_t>(mask);
        const float* xp = in_ptr<float>(x);
        run_on(device_of({&y, &mask, &x}),
               [&] { cuda::dropout_forward(yp, mp, xp, x.size, p, seed, as_stream(stream)); });
      },
      py::arg("y"), py::arg("mask"), py::arg("x"), py::arg("p"), py::arg("seed"), py::arg("stream"));

  m.def(
      "dropout_backward",
      [](py::object dx_, py::object dy_, py::object mask_, double p, uintptr_t stream) {
        DK_CHECK(p >= 0.0 && p <= 1.0, "dropout probability has to be between 0 and 1, but got ", p);
        const DevArray dx = read_cai(dx_, "grad_x"), dy = read_cai(dy_, "grad_out"),
                       mask = read_cai(mask_, "mask");
        check_size(dx, dy.size);
        check_size(mask, dy.size);
        float* dxp = out_ptr<float>(dx);
        const float* dyp = in_ptr<float>(dy);
        const uint8_t* mp = in_ptr<uint8_t>(mask);
        run_on(device_of({&dx, &dy, &mask}),
               [&] { cuda::dropout_backward(dxp, dyp, mp, dy.size, p, as_stream(stream)); });
      },
      py::arg("grad_x"), py::arg("grad_out"), py::arg("mask"), py::arg("p"), py::arg("stream"));

  m.def(
      "dropout_mask",
      [](py::object mask_, double p, uint64_t seed, uintptr_t stream) {
        DK_CHECK(p >= 0.0 && p <= 1.0, "dropout probability has to be between 0 and 1, but got ", p);
        const DevArray mask = read_cai(mask_, "mask");
        uint8_t* mp = out_ptr<uint8_t>(mask);
        run_on(device_of({&mask}),
               [&] { cuda::dropout_mask(mp, mask.size, p, seed, as_stream(stream)); });
      },
      py::arg("mask"), py::arg("p"), py::arg("seed"), py::arg("stream"),
      "mask <- the dropout keep-mask of (seed, p) alone");

  m.def(
      "relu_forward",
      [](py::object y_, py::object x_, uintptr_t stream) {
        const DevArray y = read_cai(y_, "y"), x = read_cai(x_, "x");
        check_size(y, x.size);
        float* yp = out_ptr<float>(y);
        const float* xp = in_ptr<float>(x);
        run_on(device_of({&y, &x}), [&] { cuda::relu_forward(yp, xp, x.size, as_stream(stream)); });
      },
      py::arg("y"), py::arg("x"), py::arg("stream"));

  m.def(
      "relu_backward",
      [](py::object dx_, py::object dy_, py::object y_, uintptr_t stream) {
        const DevArray dx = read_cai(dx_, "grad_x"), dy = read_cai(dy_, "grad_out"),
                       y = read_cai(y_, "y");
        check_size(dx, dy.size);
        check_size(y, dy.size);
        float* dxp = out_ptr<float>(dx);
        const float* dyp = in_ptr<float>(dy);
        const float* yp = in_ptr<float>(y);
        run_on(device_of({&dx, &dy, &y}),
               [&] { cuda::relu_backward(dxp, dyp, yp, dy.size, as_stream(stream)); });
      },
      py::arg("grad_x"), py::arg("grad_out"), py::arg("y"), py::arg("stream"));
}

}  // namespace dk::py_cuda
