// module_cuda.cpp: PYBIND11_MODULE(_cuda), deepkern's CUDA backend.
//
// Device arrays cross as the array objects themselves (CuPy arrays, PyTorch CUDA tensors, any
// object exposing __cuda_array_interface__), plus a stream handle (an integer cudaStream_t).
// Outputs are allocated by the caller's array library (deepkern/_cuda_backend.py) and passed
// first, as in bind_layers.cpp. Each binding:
//   1. reads every array's __cuda_array_interface__ and checks dtype, C-contiguity,
//      writeability (outputs), non-null data and shape, while holding the GIL
//      (TypeError / ValueError naming the argument; nothing CUDA is touched yet);
//   2. checks that every non-empty array lives in GPU memory, all on one device;
//   3. releases the GIL, makes that device current and queues the kernels on the stream.
// Kernel launch errors become RuntimeError (cuda_common.cuh); nothing calls exit().
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "bindings/op_params.h"
#include "common/check.h"
#include "common/params.h"
#include "cuda/cuda_common.cuh"
#include "cuda/kernels_cuda.h"

namespace py = pybind11;

#ifndef DEEPKERN_VERSION
#define DEEPKERN_VERSION "0.0.0"
#endif
#ifndef DK_CUDA_ARCHS
#define DK_CUDA_ARCHS ""
#endif

namespace dk::py_cuda {

namespace {

using bind::Pair;
using bind::bn_params;
using bind::conv_params;
using bind::pool_params;

// ---------------------------------------------------------------- __cuda_array_interface__

struct DevArray {
  const char* name = "";
  uintptr_t ptr = 0;
  std::vector<int64_t> shape;
  std::string typestr;
  bool readonly = false;
  int64_t size = 1;
  int64_t ndim() const { return static_cast<int64_t>(shape.size()); }
  int64_t dim(int64_t i) const { return shape[static_cast<size_t>(i)]; }
};

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "(";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + (s.size() == 1 ? ",)" : ")");
}

// NumPy's name for the typestrs deepkern meets, for messages.
std::string dtype_name(const std::string& t) {
  if (t.size() < 3) return "'" + t + "'";
  const std::string k = t.substr(1);
  if (k == "f4") return "float32";
  if (k == "f8") return "float64";
  if (k == "f2") return "float16";
  if (k == "i8") return "int64";
  if (k == "i4") return "int32";
  if (k == "u1") return "uint8";
  if (k == "b1") return "bool";
  return "'" + t + "'";
}

DevArray parse_cai(const py::dict& cai, const char* name);

// Parse the interface (v2 or v3): shape, typestr, data = (ptr, readonly), strides (None means
// C-contiguous; explicit strides must describe C order), no mask.
DevArray read_cai(const py::handle& obj, const char* name) {
  if (!py::hasattr(obj, "__cuda_array_interface__"))
    throw py::type_error(str_cat(name, " must be a CUDA array (a CuPy array or a PyTorch CUDA "
                                       "tensor exposing __cuda_array_interface__), got ",
                                 py::str(py::type::of(obj).attr("__name__")).cast<std::string>()));
  const py::object cai_obj = obj.attr("__cuda_array_interface__");
  if (!py::isinstance<py::dict>(cai_obj))
    throw py::type_error(str_cat(name, ".__cuda_array_interface__ is not a dict"));
  try {
    return parse_cai(cai_obj.cast<py::dict>(), name);
  } catch (py::error_already_set& e) {  // a missing key, a non-integer where one is needed
    throw py::type_error(str_cat(name, ".__cuda_array_interface__ is malformed: ", e.what()));
  } catch (py::cast_error& e) {
    throw py::type_error(str_cat(name, ".__cuda_array_interface__ is malformed: ", e.what()));
  }
}

DevArray parse_cai(const py::dict& cai, const char* name) {
  DevArray a;
  a.name = name;
  for (const py::handle& d : cai["shape"].cast<py::sequence>()) {
    const int64_t v = d.cast<int64_t>();
    DK_CHECK(v >= 0, name, ": negative dimension in __cuda_array_interface__");
    a.shape.push_back(v);
    a.size *= v;
  }
  a.typestr = cai["typestr"].cast<std::string>();
  const py::sequence data = cai["data"].cast<py::sequence>();
  DK_CHECK(data.size() == 2, name, ": __cuda_array_interface__['data'] must be (pointer, read_only)");
  a.ptr = data[0].is_none() ? 0 : data[0].cast<uintptr_t>();
  a.readonly = data[1].cast<bool>();
  if (cai.contains("mask") && !cai["mask"].is_none())
    throw py::type_error(str_cat(name, ": masked CUDA arrays are not supported"));
  if (cai.contains("strides") && !cai["strides"].is_none() && a.size > 0) {
    const py::sequence strides = cai["strides"].cast<py::sequence>();
    DK_CHECK(static_cast<int64_t>(strides.size()) == a.ndim(), name, ": strides do not match the shape");
    const int64_t itemsize = a.typestr.size() > 2 ? std::stoll(a.typestr.substr(2)) : 1;
    int64_t expect = itemsize;
    for (int64_t i = a.ndim() - 1; i >= 0; --i) {
      if (a.dim(i) != 1)
        DK_CHECK(strides[static_cast<size_t>(i)].cast<int64_t>() == expect, name,
                 " must be C-contiguous");
      expect *= a.dim(i);
    }
  }
  return a;
}

bool typestr_is(const std::string& t, const char* want) {
  // byte order: '<' (little endian, this machine), '=' (native) or '|' (not applicable)
  return t.size() == 3 && (t[0] == '<' || t[0] == '=' || t[0] == '|') && t.substr(1) == want;
}

template <class T>
const char* type_code();
template <>
const char* type_code<float>() { return "f4"; }
template <>
const char* type_code<int64_t>() { return "i8"; }
template <>
const char* type_code<uint8_t>() { return "u1"; }

template <class T>
void check_type(const DevArray& a) {
  if (!typestr_is(a.typestr, type_code<T>()))
    throw py::type_error(str_cat(a.name, " must be ", dtype_name(std::string("<") + type_code<T>()),
                                 " on the cuda backend, got ", dtype_name(a.typestr)));
  DK_CHECK(a.size == 0 || a.ptr != 0, a.name, " has a null data pointer");
}

template <class T>
const T* in_ptr(const DevArray& a) {
  check_type<T>(a);
  return reinterpret_cast<const T*>(a.ptr);
}

template <class T>
T* out_ptr(const DevArray& a) {
  check_type<T>(a);
  DK_CHECK(!a.readonly, a.name, " is read-only");
  return reinterpret_cast<T*>(a.ptr);
}

void check_shape(const DevArray& a, std::initializer_list<int64_t> want) {
  const std::vector<int64_t> w(want);
  DK_CHECK(a.shape == w, a.name, " has shape ", shape_str(a.shape), ", expected ", shape_str(w));
}

void check_size(const DevArray& a, int64_t n) {
  DK_CHECK(a.size == n, a.name, " has ", a.size, " elements, expected ", n);
}

// The byte ranges of two arrays do not overlap (in-place targets vs everything else).
void check_disjoint(const DevArray& a, const DevArray& b, int64_t itemsize) {
  if (a.size == 0 || b.size == 0) return;
  const uintptr_t a1 = a.ptr + static_cast<uintptr_t>(a.size * itemsize);
  const uintptr_t b1 = b.ptr + static_cast<uintptr_t>(b.size * itemsize);
  DK_CHECK(a1 <= b.ptr || b1 <= a.ptr, a.name, " must not share memory with ", b.name);
}

// The device holding every non-empty array (all must be GPU memory on one device); -1 when
// every array is empty (then no kernel needs to run). Needs the driver: called after the
// argument checks.
int device_of(std::initializer_list<const DevArray*> arrays) {
  int device = -1;
  const char* first = "";
  for (const DevArray* a : arrays) {
    if (!a || a->size == 0) continue;
    cudaPointerAttributes attr{};
    const cudaError_t err = cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(a->ptr));
    if (err != cudaSuccess) {
      cudaGetLastError();
      throw std::runtime_error(str_cat(a->name, ": cannot query its pointer: ", cudaGetErrorString(err)));
    }
    DK_CHECK(attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged, a->name,
             " is not in GPU memory");
    if (device < 0) {
      device = attr.device;
      first = a->name;
    }
    DK_CHECK(attr.device == device, a->name, " is on device ", attr.device, " but ", first,
             " is on device ", device);
  }
  return device;
}

// Run `launch` (which queues kernels) without the GIL on the arrays' device. device < 0: every
// array, outputs included, is empty, so there is nothing to compute or write.
template <class F>
void run_on(int device, F&& launch) {
  if (device < 0) return;
  py::gil_scoped_release nogil;
  cuda::DeviceGuard guard(device);
  launch();
}

cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

const DevArray* opt(const std::optional<DevArray>& a) { return a ? &*a : nullptr; }

std::optional<DevArray> read_opt(const py::object& obj, const char* name) {
  if (obj.is_none()) return std::nullopt;
  return read_cai(obj, name);
}

void check_same_shape(const DevArray& a, const DevArray& b) {
  DK_CHECK(a.shape == b.shape, a.name, " has shape ", shape_str(a.shape), ", expected ", b.name,
           "'s ", shape_str(b.shape));
}

// ---------------------------------------------------------------- the ops

void bind_ops(py::module_& m) {
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
         uintptr_t stream) {
        const DevArray y = read_cai(y_, "y"), sm = read_cai(sm_, "save_mean"),
                       si = read_cai(si_, "save_invstd"), x = read_cai(x_, "x");
        const auto w = read_opt(w_, "weight"), b = read_opt(b_, "bias");
        const auto rm = read_opt(rm_, "running_mean"), rv = read_opt(rv_, "running_var");
        const BatchNormParams p = bn_params(x.shape, momentum, eps);
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
      py::arg("stream"));

  m.def(
      "batch_norm_backward",
      [](py::object dx_, py::object dw_, py::object db_, py::object dy_, py::object x_,
         py::object w_, py::object sm_, py::object si_, bool training, uintptr_t stream) {
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
        run_on(device_of({&dx, opt(dw), opt(db), &dy, &x, opt(w), &sm, &si}), [&] {
          cuda::batch_norm_backward(dxp, dwp, dbp, dyp, xp, wp, smp, sip, training, p,
                                    as_stream(stream));
        });
      },
      py::arg("grad_x"), py::arg("grad_weight").none(true), py::arg("grad_bias").none(true),
      py::arg("grad_out"), py::arg("x"), py::arg("weight").none(true), py::arg("save_mean"),
      py::arg("save_invstd"), py::arg("training"), py::arg("stream"));

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
  dk::py_cuda::bind_ops(m);
}
