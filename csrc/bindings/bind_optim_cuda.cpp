// bind_optim_cuda.cpp: the multi-tensor kernels of cuda/optim.cu (and the GPU calibration of
// cuda/calibrate.cu) as _cuda functions.
//
// The optimizer step has _C.optim_step's signature plus the stream: lists of CUDA arrays (one
// entry per parameter tensor), a NumPy (count, H) float64 matrix of per-tensor rows in the
// CPU's layout (cpu/optim.h), then the stream. Every array is checked (float32, C-contiguous,
// writeable where written, sizes, the state arrays the configuration needs), no written array
// may overlap another array of the call, every pointer must be GPU memory of one device; then
// the kernels are queued without the GIL. The Python layer (deepkern/optim/) validated first.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "bindings/cuda_array_check.h"
#include "cuda/kernels_cuda.h"

namespace dk::py_cuda {

namespace {

using cpu::OptimKind;

OptimKind to_kind(int kind) {
  DK_CHECK(kind >= 0 && kind < cpu::kOptimKinds, "unknown optimizer kind ", kind);
  return static_cast<OptimKind>(kind);
}

int hyper_count(OptimKind kind) {
  switch (kind) {
    case OptimKind::sgd: return cpu::hyper::sgd::count;
    case OptimKind::adagrad: return cpu::hyper::adagrad::count;
    case OptimKind::adadelta: return cpu::hyper::adadelta::count;
    case OptimKind::rmsprop: return cpu::hyper::rmsprop::count;
    case OptimKind::adam: return cpu::hyper::adam::count;
  }
  return 0;
}

// Which of the three state arrays a row of `kind` needs (bit j: state[j]); the kernels read
// exactly these (cuda/optim.cu's uses_state).
int needed_states(OptimKind kind, const double* h) {
  switch (kind) {
    case OptimKind::sgd: return h[cpu::hyper::sgd::momentum] != 0.0 ? 1 : 0;
    case OptimKind::adagrad: return 1;
    case OptimKind::adadelta: return 3;
    case OptimKind::rmsprop:
      return 1 | (h[cpu::hyper::rmsprop::momentum] > 0.0 ? 2 : 0) |
             (h[cpu::hyper::rmsprop::centered] != 0.0 ? 4 : 0);
    case OptimKind::adam: return 3 | (h[cpu::hyper::adam::amsgrad] != 0.0 ? 4 : 0);
  }
  return 0;
}

std::string at(const char* list, size_t k) { return str_cat(list, "[", k, "]"); }

// The (count, H) float64 rows: a C-contiguous NumPy array, never converted.
const double* rows_of(const py::object& hyper, size_t count, int H) {
  if (!py::isinstance<py::array_t<double>>(hyper) ||
      !py::reinterpret_borrow<py::array>(hyper).dtype().is(py::dtype::of<double>()))
    throw py::type_error("hyper must be a float64 numpy.ndarray");
  const py::array a = py::reinterpret_borrow<py::array>(hyper);
  DK_CHECK(a.flags() & py::array::c_style, "hyper must be C-contiguous");
  DK_CHECK(a.ndim() == 2 && a.shape(0) == static_cast<py::ssize_t>(count) && a.shape(1) == H,
           "hyper must have shape (", count, ", ", H, ")");
  return static_cast<const double*>(a.data());
}

// A list argument of CUDA arrays (lists only: a tuple or a single array is a mistake).
py::list as_list(const py::object& o, const char* name) {
  if (!py::isinstance<py::list>(o))
    throw py::type_error(str_cat(name, " must be a list of CUDA arrays"));
  return o.cast<py::list>();
}

}  // namespace

void bind_optim(py::module_& m) {
  m.def(
      "optim_step",
      [](int kind_id, py::object params_, py::object grads_, py::object states_, py::object emas,
         py::object hyper, uintptr_t stream) {
        const OptimKind kind = to_kind(kind_id);
        const py::list params = as_list(params_, "params"), grads = as_list(grads_, "grads"),
                       states = as_list(states_, "states");
        const size_t count = params.size();
        DK_CHECK(grads.size() == count && states.size() == count, "optim_step: params (", count,
                 "), grads (", grads.size(), ") and states (", states.size(), ") differ in length");
        const bool has_emas = !emas.is_none();
        const py::list ema_list = has_emas ? as_list(emas, "emas") : py::list();
        if (has_emas) DK_CHECK(ema_list.size() == count, "optim_step: emas must be None or a list as long as params");
        const int H = hyper_count(kind);
        const double* h = rows_of(hyper, count, H);
        ArrayListReader r;
        std::vector<cpu::OptimTensor<float>> tensors(count);
        for (size_t k = 0; k < count; ++k) {
          cpu::OptimTensor<float>& t = tensors[k];
          t.param = r.add(params[k], at("params", k), true, -1);
          t.n = r.last_size();
          t.grad = r.add(grads[k], at("grads", k), false, t.n);
          t.hyper = h + static_cast<int64_t>(k) * H;
          const py::object st = states[k];
          DK_CHECK(py::isinstance<py::sequence>(st) && py::len(st) == 3, "states[", k,
                   "] must hold 3 entries (array or None)");
          const int need = needed_states(kind, t.hyper);
          for (int j = 0; j < 3; ++j) {
            const py::object o = st[py::int_(j)];
            const std::string name = str_cat("states[", k, "][", j, "]");
            t.state[j] = nullptr;
            if (o.is_none()) DK_CHECK(!(need & (1 << j)), name, " is required by this configuration");
            else t.state[j] = r.add(o, name, true, t.n);
          }
          t.ema = nullptr;
          if (has_emas && !ema_list[k].is_none()) t.ema = r.add(ema_list[k], at("emas", k), true, t.n);
        }
        run_on(r.device(), [&] {
          cuda::optim_step(kind, tensors.data(), static_cast<int64_t>(count), as_stream(stream));
        });
      },
      py::arg("kind"), py::arg("params"), py::arg("grads"), py::arg("states"), py::arg("emas"),
      py::arg("hyper"), py::arg("stream"),
      "One fused optimizer step over every tensor of the lists (one float64 row of hyper each, "
      "the layout of _C.optim_hyper_names), queued on `stream`.");

  m.def(
      "ema_update",
      [](py::object avgs_, py::object xs_, double decay, uintptr_t stream) {
        const py::list avgs = as_list(avgs_, "avgs"), xs = as_list(xs_, "xs");
        DK_CHECK(avgs.size() == xs.size(), "ema_update: avgs and xs differ in length");
        ArrayListReader r;
        std::vector<float*> a;
        std::vector<const float*> x;
        std::vector<int64_t> n;
        for (size_t k = 0; k < avgs.size(); ++k) {
          a.push_back(r.add(avgs[k], at("avgs", k), true, -1));
          n.push_back(r.last_size());
          x.push_back(r.add(xs[k], at("xs", k), false, n.back()));
        }
        run_on(r.device(), [&] {
          cuda::ema_update(a.data(), x.data(), n.data(), static_cast<int64_t>(n.size()), decay, as_stream(stream));
        });
      },
      py::arg("avgs"), py::arg("xs"), py::arg("decay"), py::arg("stream"),
      "avgs[k] <- decay * avgs[k] + (1 - decay) * xs[k] for every k, in one pass.");

  m.def(
      "multi_scale",
      [](py::object xs_, double s, uintptr_t stream) {
        const py::list xs = as_list(xs_, "xs");
        ArrayListReader r;
        std::vector<float*> x;
        std::vector<int64_t> n;
        for (size_t k = 0; k < xs.size(); ++k) {
          x.push_back(r.add(xs[k], at("xs", k), true, -1));
          n.push_back(r.last_size());
        }
        run_on(r.device(), [&] {
          cuda::multi_scale(x.data(), n.data(), static_cast<int64_t>(n.size()), s, as_stream(stream));
        });
      },
      py::arg("xs"), py::arg("scale"), py::arg("stream"), "xs[k] *= scale (rounded to float32 once).");

  m.def(
      "multi_copy",
      [](py::object dsts_, py::object srcs_, uintptr_t stream) {
        const py::list dsts = as_list(dsts_, "dsts"), srcs = as_list(srcs_, "srcs");
        DK_CHECK(dsts.size() == srcs.size(), "multi_copy: dsts and srcs differ in length");
        ArrayListReader r;
        std::vector<float*> d;
        std::vector<const float*> s;
        std::vector<int64_t> n;
        for (size_t k = 0; k < dsts.size(); ++k) {
          d.push_back(r.add(dsts[k], at("dsts", k), true, -1));
          n.push_back(r.last_size());
          s.push_back(r.add(srcs[k], at("srcs", k), false, n.back()));
        }
        run_on(r.device(), [&] {
          cuda::multi_copy(d.data(), s.data(), n.data(), static_cast<int64_t>(n.size()), as_stream(stream));
        });
      },
      py::arg("dsts"), py::arg("srcs"), py::arg("stream"), "dsts[k] <- srcs[k] for every k, in one pass.");

  m.def(
      "multi_norm_reduce",
      [](py::object xs_, double p, uintptr_t stream) -> double {
        const py::list xs = as_list(xs_, "xs");
        ArrayListReader r;
        std::vector<const float*> x;
        std::vector<int64_t> n;
        for (size_t k = 0; k < xs.size(); ++k) {
          x.push_back(r.add(xs[k], at("xs", k), false, -1));
          n.push_back(r.last_size());
        }
        const int device = r.device();
        if (device < 0) return p == -std::numeric_limits<double>::infinity() ? std::numeric_limits<double>::infinity() : 0.0;
        double out = 0.0;
        run_on(device, [&] {
          out = cuda::multi_norm_reduce(x.data(), n.data(), static_cast<int64_t>(n.size()), p, as_stream(stream));
        });
        return out;
      },
      py::arg("xs"), py::arg("p"), py::arg("stream"),
      "The reduction under the p-norm of all elements (sum x^2 for p=2, max |x| for inf, ...), in "
      "double, deterministic; synchronizes the stream (the caller takes the root).");

  m.def(
      "calibrate_copy",
      [](int device, int64_t bytes, int repeats) {
        DK_CHECK(bytes > 0 && repeats > 0, "calibrate_copy: bytes and repeats must be positive");
        py::gil_scoped_release nogil;
        cuda::DeviceGuard guard(device);
        return cuda::copy_times(bytes, repeats);
      },
      py::arg("device"), py::arg("bytes"), py::arg("repeats"),
      "Seconds of `repeats` device-to-device copies of `bytes` bytes (bandwidth = 2 * bytes / s).");

  m.def(
      "calibrate_fma",
      [](int device, int repeats) {
        DK_CHECK(repeats > 0, "calibrate_fma: repeats must be positive");
        double flops = 0.0;
        std::vector<double> secs;
        {
          py::gil_scoped_release nogil;
          cuda::DeviceGuard guard(device);
          secs = cuda::fma_times(repeats, &flops);
        }
        py::dict d;
        d["seconds"] = secs;
        d["flops_per_run"] = flops;
        return d;
      },
      py::arg("device"), py::arg("repeats"), "Seconds of `repeats` runs of the float32 FMA-rate kernel.");
}

}  // namespace dk::py_cuda
