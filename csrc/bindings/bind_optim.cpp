// bind_optim.cpp: the fused optimizer kernels of cpu/optim.h as _C functions.
//
// Each binding takes Python lists of arrays (one entry per parameter tensor), checks every
// array (dtype, C-contiguity, writeability of what is written, sizes, which state arrays the
// configuration needs) and that no written array overlaps another array of the call, takes
// the raw pointers, releases the GIL and makes ONE kernel call for the whole list. The
// Python layer (deepkern/optim/) has already validated with friendly messages; these checks
// keep direct _C calls from corrupting memory.
#include <algorithm>
#include <string>
#include <vector>

#include <pybind11/stl.h>

#include "bindings/array_check.h"
#include "cpu/optim.h"

namespace dk::py_bind {

namespace {

using cpu::OptimKind;

OptimKind to_kind(int kind) {
  DK_CHECK(kind >= 0 && kind < cpu::kOptimKinds, "unknown optimizer kind ", kind);
  return static_cast<OptimKind>(kind);
}

// Byte ranges of the arrays of one call, to reject overlaps before anything is written.
struct Span {
  uintptr_t lo, hi;
  bool written;
  std::string name;
};

void check_no_overlap(std::vector<Span>& spans) {
  spans.erase(std::remove_if(spans.begin(), spans.end(), [](const Span& s) { return s.lo == s.hi; }),
              spans.end());
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.lo < b.lo; });
  // Sweep: keep the span reaching furthest so far; any later span starting before its end
  // overlaps it (or an earlier one, found by the same test).
  size_t far = 0;
  for (size_t i = 1; i < spans.size(); ++i) {
    const Span &a = spans[far], &b = spans[i];
    if (b.lo < a.hi && (a.written || b.written))
      DK_CHECK(false, b.name, " shares memory with ", a.name,
               " (arrays an optimizer writes must not overlap any other array of the step)");
    if (b.hi > a.hi) far = i;
  }
}

template <class T>
Span span_of(const py::array& a, bool written, std::string name) {
  const auto lo = reinterpret_cast<uintptr_t>(a.data());
  return {lo, lo + static_cast<uintptr_t>(a.size()) * sizeof(T), written, std::move(name)};
}

std::string item(const char* list, size_t k) { return str_cat(list, "[", k, "]"); }

py::array as_array(const py::handle& o, const std::string& name) {
  if (!py::isinstance<py::array>(o))
    throw py::type_error(str_cat(name, " must be a numpy.ndarray, got ", py::str(py::type::handle_of(o).attr("__name__")).cast<std::string>()));
  return py::reinterpret_borrow<py::array>(o);
}

// Which of the three state arrays a row of `kind` needs (bit j: state[j]).
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

template <class T>
void optim_step_typed(OptimKind kind, const py::list& params, const py::list& grads,
                      const py::list& states, const py::object& emas, const double* hyper, int64_t H) {
  const size_t count = params.size();
  std::vector<cpu::OptimTensor<T>> tensors(count);
  std::vector<Span> spans;
  for (size_t k = 0; k < count; ++k) {
    cpu::OptimTensor<T>& t = tensors[k];
    const std::string pn = item("params", k), gn = item("grads", k);
    py::array p = as_array(params[k], pn);
    py::array g = as_array(grads[k], gn);
    t.param = out_ptr<T>(p, pn.c_str());
    t.grad = in_ptr<T>(g, gn.c_str());
    t.n = static_cast<int64_t>(p.size());
    check_size(g, gn.c_str(), t.n);
    t.hyper = hyper + static_cast<int64_t>(k) * H;
    spans.push_back(span_of<T>(p, true, pn));
    spans.push_back(span_of<T>(g, false, gn));

    py::sequence st = states[k].cast<py::sequence>();
    DK_CHECK(st.size() == 3, item("states", k), " must hold 3 entries (array or None)");
    const int need = needed_states(kind, t.hyper);
    for (int j = 0; j < 3; ++j) {
      t.state[j] = nullptr;
      py::object o = st[j];
      const std::string sn = str_cat("states[", k, "][", j, "]");
      if (o.is_none()) {
        DK_CHECK(!(need & (1 << j)), sn, " is required by this configuration");
        continue;
      }
      py::array s = as_array(o, sn);
      t.state[j] = out_ptr<T>(s, sn.c_str());
      check_size(s, sn.c_str(), t.n);
      spans.push_back(span_of<T>(s, true, sn));
    }
    t.ema = nullptr;
    if (!emas.is_none()) {
      py::object o = emas.cast<py::list>()[k];
      if (!o.is_none()) {
        const std::string en = item("emas", k);
        py::array e = as_array(o, en);
        t.ema = out_ptr<T>(e, en.c_str());
        check_size(e, en.c_str(), t.n);
        spans.push_back(span_of<T>(e, true, en));
      }
    }
  }
  check_no_overlap(spans);
  py::gil_scoped_release nogil;
  cpu::optim_step<T>(kind, tensors.data(), static_cast<int64_t>(count));
}

// Pointers and sizes of a list of arrays of one dtype (written: must be writeable).
template <class T>
struct ArrayList {
  std::vector<T*> ptr;
  std::vector<int64_t> n;
  std::vector<Span> spans;
  ArrayList(const py::list& arrays, const char* name, bool written) {
    for (size_t k = 0; k < arrays.size(); ++k) {
      const std::string an = item(name, k);
      py::array a = as_array(arrays[k], an);
      ptr.push_back(written ? out_ptr<T>(a, an.c_str()) : const_cast<T*>(in_ptr<T>(a, an.c_str())));
      n.push_back(static_cast<int64_t>(a.size()));
      spans.push_back(span_of<T>(a, written, an));
    }
  }
};

// dtype of the first array of a (non-empty) list
template <class F>
auto dispatch_list(const py::list& arrays, const char* name, F&& f) {
  return dispatch_float(as_array(arrays[0], name), name, std::forward<F>(f));
}

}  // namespace

void bind_optim(py::module_& m) {
  py::dict kinds;
  kinds["sgd"] = static_cast<int>(OptimKind::sgd);
  kinds["adagrad"] = static_cast<int>(OptimKind::adagrad);
  kinds["adadelta"] = static_cast<int>(OptimKind::adadelta);
  kinds["rmsprop"] = static_cast<int>(OptimKind::rmsprop);
  kinds["adam"] = static_cast<int>(OptimKind::adam);
  m.attr("OPTIM_KINDS") = kinds;

  m.def(
      "optim_hyper_names", [](int kind) { return cpu::optim_hyper_names(to_kind(kind)); },
      py::arg("kind"), "Names of the per-tensor scalars of one row of optim_step's hyper, in order.");

  m.def(
      "optim_step",
      [](int kind_id, py::list params, py::list grads, py::list states, py::object emas,
         py::array hyper) {
        const OptimKind kind = to_kind(kind_id);
        const size_t count = params.size();
        DK_CHECK(grads.size() == count && states.size() == count, "optim_step: params (", count,
                 "), grads (", grads.size(), ") and states (", states.size(), ") differ in length");
        if (!emas.is_none())
          DK_CHECK(py::isinstance<py::list>(emas) && emas.cast<py::list>().size() == count,
                   "optim_step: emas must be None or a list as long as params");
        const int64_t H = static_cast<int64_t>(cpu::optim_hyper_names(kind).size());
        check_shape(hyper, "hyper", {static_cast<int64_t>(count), H});
        const double* h = in_ptr<double>(hyper, "hyper");
        if (count == 0) return;
        dispatch_list(params, "params[0]", [&](auto tag) {
          optim_step_typed<decltype(tag)>(kind, params, grads, states, emas, h, H);
        });
      },
      py::arg("kind"), py::arg("params"), py::arg("grads"), py::arg("states"), py::arg("emas"),
      py::arg("hyper").noconvert(),
      "One fused optimizer step over every tensor of the lists (one row of hyper each).");

  m.def(
      "ema_update",
      [](py::list avgs, py::list xs, double decay) {
        DK_CHECK(avgs.size() == xs.size(), "ema_update: avgs and xs differ in length");
        if (avgs.size() == 0) return;
        dispatch_list(avgs, "avgs[0]", [&](auto tag) {
          using T = decltype(tag);
          ArrayList<T> a(avgs, "avgs", true);
          ArrayList<T> x(xs, "xs", false);
          for (size_t k = 0; k < a.n.size(); ++k) DK_CHECK(a.n[k] == x.n[k], "ema_update: ", item("xs", k), " has ", x.n[k], " elements, expected ", a.n[k]);
          std::vector<Span> spans = a.spans;
          spans.insert(spans.end(), x.spans.begin(), x.spans.end());
          check_no_overlap(spans);
          std::vector<const T*> xp(x.ptr.begin(), x.ptr.end());
          py::gil_scoped_release nogil;
          cpu::ema_update<T>(a.ptr.data(), xp.data(), a.n.data(), static_cast<int64_t>(a.n.size()), decay);
        });
      },
      py::arg("avgs"), py::arg("xs"), py::arg("decay"),
      "avgs[k] <- decay * avgs[k] + (1 - decay) * xs[k], one pass over all of them.");

  m.def(
      "multi_scale",
      [](py::list xs, double s) {
        if (xs.size() == 0) return;
        dispatch_list(xs, "xs[0]", [&](auto tag) {
          using T = decltype(tag);
          ArrayList<T> x(xs, "xs", true);
          check_no_overlap(x.spans);
          py::gil_scoped_release nogil;
          cpu::multi_scale<T>(x.ptr.data(), x.n.data(), static_cast<int64_t>(x.n.size()), s);
        });
      },
      py::arg("xs"), py::arg("scale"), "xs[k] *= scale (rounded to the dtype once) for every k.");

  m.def(
      "multi_norm_reduce",
      [](py::list xs, double p) -> double {
        if (xs.size() == 0) return 0.0;
        return dispatch_list(xs, "xs[0]", [&](auto tag) {
          using T = decltype(tag);
          ArrayList<T> x(xs, "xs", false);
          std::vector<const T*> xp(x.ptr.begin(), x.ptr.end());
          py::gil_scoped_release nogil;
          return cpu::multi_norm_reduce<T>(xp.data(), x.n.data(), static_cast<int64_t>(x.n.size()), p);
        });
      },
      py::arg("xs"), py::arg("p"),
      "The reduction under the p-norm of all elements (sum x^2 for p=2, max |x| for inf, ...), "
      "in double, in a fixed order (the caller takes the root).");
}

}  // namespace dk::py_bind
