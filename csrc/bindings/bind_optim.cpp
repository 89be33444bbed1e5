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

// Which list entry an array is, e.g. states[3][1]; spelled out only for an error message (the
// checks run for every tensor of every step, so nothing is formatted on the happy path).
struct Where {
  const char* list;
  size_t k;
  int j = -1;
  std::string str() const { return j < 0 ? str_cat(list, "[", k, "]") : str_cat(list, "[", k, "][", j, "]"); }
};

// Byte ranges of the arrays of one call, to reject overlaps before anything is written.
struct Span {
  uintptr_t lo, hi;
  bool written;
  Where where;
  size_t index;
};

// Pairs (i, j) of spans whose byte ranges intersect, at least one of them written, at most
// `limit` of them. Sorted sweep with the set of ranges still open: O(n log n) when (as
// always in practice) nothing overlaps.
std::vector<std::pair<size_t, size_t>> overlapping_pairs(std::vector<Span> spans, size_t limit) {
  spans.erase(std::remove_if(spans.begin(), spans.end(), [](const Span& s) { return s.lo == s.hi; }),
              spans.end());
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.lo < b.lo; });
  std::vector<std::pair<size_t, size_t>> out;
  std::vector<const Span*> open;
  for (const Span& b : spans) {
    open.erase(std::remove_if(open.begin(), open.end(), [&](const Span* a) { return a->hi <= b.lo; }), open.end());
    for (const Span* a : open)
      if ((a->written || b.written) && out.size() < limit) out.emplace_back(a->index, b.index);
    open.push_back(&b);
  }
  return out;
}

void check_no_overlap(const std::vector<Span>& spans) {
  const auto pairs = overlapping_pairs(spans, 1);
  if (pairs.empty()) return;
  const Span *a = nullptr, *b = nullptr;
  for (const Span& s : spans) {
    if (s.index == pairs[0].first) a = &s;
    if (s.index == pairs[0].second) b = &s;
  }
  DK_CHECK(false, b->where.str(), " shares memory with ", a->where.str(),
           " (arrays an optimizer writes must not overlap any other array of the step)");
}

py::array as_array(const py::handle& o, const Where& w) {
  if (!py::isinstance<py::array>(o))
    throw py::type_error(str_cat(w.str(), " must be a numpy.ndarray, got ",
                                 py::str(py::type::handle_of(o).attr("__name__")).cast<std::string>()));
  return py::reinterpret_borrow<py::array>(o);
}

// The bytes an array can touch, whatever its strides (negative ones included).
Span span_of(const py::array& a, bool written, Where where, size_t index) {
  auto lo = reinterpret_cast<intptr_t>(a.data()), hi = lo;
  if (a.size() == 0) return {uintptr_t(lo), uintptr_t(lo), written, where, index};
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    const intptr_t ext = static_cast<intptr_t>(a.strides(d)) * static_cast<intptr_t>(a.shape(d) - 1);
    (ext < 0 ? lo : hi) += ext;
  }
  return {uintptr_t(lo), uintptr_t(hi) + uintptr_t(a.itemsize()), written, where, index};
}

// The checks of array_check.h (dtype T, C-contiguous, writeable when written, n elements
// unless n < 0) with the name built only on failure; records the array's span.
template <class T>
T* checked_ptr(const py::handle& o, const Where& w, bool written, int64_t n, std::vector<Span>& spans) {
  if (!py::isinstance<py::array_t<T>>(o))
    throw py::type_error(str_cat(w.str(), " must be ", py::str(py::dtype::of<T>()).cast<std::string>(), ", got ",
                                 py::str(as_array(o, w).dtype()).cast<std::string>()));
  auto a = py::reinterpret_borrow<py::array>(o);
  DK_CHECK(a.flags() & py::array::c_style, w.str(), " must be C-contiguous");
  DK_CHECK(!written || a.writeable(), w.str(), " is not writeable");
  DK_CHECK(n < 0 || a.size() == n, w.str(), " has ", a.size(), " elements, expected ", n);
  spans.push_back(span_of(a, written, w, spans.size()));
  return static_cast<T*>(const_cast<void*>(a.data()));
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
  spans.reserve(4 * count);
  const bool has_emas = !emas.is_none();
  const py::list ema_list = has_emas ? emas.cast<py::list>() : py::list();
  for (size_t k = 0; k < count; ++k) {
    cpu::OptimTensor<T>& t = tensors[k];
    t.param = checked_ptr<T>(params[k], {"params", k}, true, -1, spans);
    t.n = static_cast<int64_t>(py::reinterpret_borrow<py::array>(params[k]).size());
    t.grad = checked_ptr<T>(grads[k], {"grads", k}, false, t.n, spans);
    t.hyper = hyper + static_cast<int64_t>(k) * H;

    const py::object st = states[k];
    DK_CHECK(py::isinstance<py::sequence>(st) && py::len(st) == 3, "states[", k,
             "] must hold 3 entries (array or None)");
    const int need = needed_states(kind, t.hyper);
    for (int j = 0; j < 3; ++j) {
      const py::object o = st[py::int_(j)];
      t.state[j] = nullptr;
      if (o.is_none())
        DK_CHECK(!(need & (1 << j)), Where{"states", k, j}.str(), " is required by this configuration");
      else
        t.state[j] = checked_ptr<T>(o, {"states", k, j}, true, t.n, spans);
    }
    t.ema = nullptr;
    if (has_emas && !ema_list[k].is_none()) t.ema = checked_ptr<T>(ema_list[k], {"emas", k}, true, t.n, spans);
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
      ptr.push_back(checked_ptr<T>(arrays[k], {name, k}, written, -1, spans));
      n.push_back(static_cast<int64_t>(py::reinterpret_borrow<py::array>(arrays[k]).size()));
    }
  }
};

// dtype of the first array of a (non-empty) list
template <class F>
auto dispatch_list(const py::list& arrays, const char* name, F&& f) {
  return dispatch_float(as_array(arrays[0], {name, 0}), name, std::forward<F>(f));
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
      "find_overlaps",
      [](py::list arrays, std::vector<bool> written) {
        DK_CHECK(written.size() == arrays.size(), "find_overlaps: arrays and written differ in length");
        std::vector<Span> spans;
        for (size_t k = 0; k < arrays.size(); ++k)
          spans.push_back(span_of(as_array(arrays[k], {"arrays", k}), written[k], {"arrays", k}, k));
        return overlapping_pairs(std::move(spans), 64);
      },
      py::arg("arrays"), py::arg("written"),
      "Pairs (i, j) of arrays whose byte ranges intersect, one of them written (at most 64). "
      "Exact for C-contiguous arrays; for strided ones a candidate (check np.shares_memory).");

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
        dispatch_list(params, "params", [&](auto tag) {
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
        dispatch_list(avgs, "avgs", [&](auto tag) {
          using T = decltype(tag);
          ArrayList<T> a(avgs, "avgs", true);
          ArrayList<T> x(xs, "xs", false);
          for (size_t k = 0; k < a.n.size(); ++k)
            DK_CHECK(a.n[k] == x.n[k], "ema_update: xs[", k, "] has ", x.n[k], " elements, expected ", a.n[k]);
          std::vector<Span> spans = a.spans;
          for (Span s : x.spans) {
            s.index += a.spans.size();
            spans.push_back(std::move(s));
          }
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
        dispatch_list(xs, "xs", [&](auto tag) {
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
        return dispatch_list(xs, "xs", [&](auto tag) {
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
