// cuda_array_check.h: unwrapping CUDA arrays at the _cuda binding boundary (array_check.h's
// counterpart for __cuda_array_interface__).
//
// A CUDA array (CuPy, PyTorch, anything exposing the interface) crosses as the Python object;
// read_cai() parses its interface while the GIL is held, and the checks below name the
// argument: dtype (TypeError), C-contiguity, writeability, shape, non-null data (ValueError).
// device_of() then asks the driver where every pointer lives (all on one device), and
// run_on() releases the GIL, makes that device current and runs the launcher. Nothing CUDA is
// touched before all argument checks pass.
#pragma once
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "common/check.h"
#include "cuda/cuda_common.cuh"

namespace dk::py_cuda {

namespace py = pybind11;

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

inline std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "(";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + (s.size() == 1 ? ",)" : ")");
}

// NumPy's name for the typestrs deepkern meets, for messages.
inline std::string dtype_name(const std::string& t) {
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

inline DevArray parse_cai(const py::dict& cai, const char* name);

// Parse the interface (v2 or v3): shape, typestr, data = (ptr, readonly), strides (None means
// C-contiguous; explicit strides must describe C order), no mask.
inline DevArray read_cai(const py::handle& obj, const char* name) {
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

inline DevArray parse_cai(const py::dict& cai, const char* name) {
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

inline bool typestr_is(const std::string& t, const char* want) {
  // byte order: '<' (little endian, this machine), '=' (native) or '|' (not applicable)
  return t.size() == 3 && (t[0] == '<' || t[0] == '=' || t[0] == '|') && t.substr(1) == want;
}

template <class T>
inline const char* type_code();
template <>
inline const char* type_code<float>() { return "f4"; }
template <>
inline const char* type_code<int64_t>() { return "i8"; }
template <>
inline const char* type_code<uint8_t>() { return "u1"; }

template <class T>
inline void check_type(const DevArray& a) {
  if (!typestr_is(a.typestr, type_code<T>()))
    throw py::type_error(str_cat(a.name, " must be ", dtype_name(std::string("<") + type_code<T>()),
                                 " on the cuda backend, got ", dtype_name(a.typestr)));
  DK_CHECK(a.size == 0 || a.ptr != 0, a.name, " has a null data pointer");
}

template <class T>
inline const T* in_ptr(const DevArray& a) {
  check_type<T>(a);
  return reinterpret_cast<const T*>(a.ptr);
}

template <class T>
inline T* out_ptr(const DevArray& a) {
  check_type<T>(a);
  DK_CHECK(!a.readonly, a.name, " is read-only");
  return reinterpret_cast<T*>(a.ptr);
}

inline void check_shape(const DevArray& a, std::initializer_list<int64_t> want) {
  const std::vector<int64_t> w(want);
  DK_CHECK(a.shape == w, a.name, " has shape ", shape_str(a.shape), ", expected ", shape_str(w));
}

inline void check_size(const DevArray& a, int64_t n) {
  DK_CHECK(a.size == n, a.name, " has ", a.size, " elements, expected ", n);
}

// The byte ranges of two arrays do not overlap (in-place targets vs everything else).
inline void check_disjoint(const DevArray& a, const DevArray& b, int64_t itemsize) {
  if (a.size == 0 || b.size == 0) return;
  const uintptr_t a1 = a.ptr + static_cast<uintptr_t>(a.size * itemsize);
  const uintptr_t b1 = b.ptr + static_cast<uintptr_t>(b.size * itemsize);
  DK_CHECK(a1 <= b.ptr || b1 <= a.ptr, a.name, " must not share memory with ", b.name);
}

// The device holding every non-empty array (all must be GPU memory on one device); -1 when
// every array is empty (then no kernel needs to run). Needs the driver: called after the
// argument checks.
template <class It>
inline int device_of_range(It begin, It end) {
  int device = -1;
  const char* first = "";
  for (It it = begin; it != end; ++it) {
    const DevArray* a = *it;
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

inline int device_of(std::initializer_list<const DevArray*> arrays) {
  return device_of_range(arrays.begin(), arrays.end());
}

inline int device_of(const std::vector<const DevArray*>& arrays) {
  return device_of_range(arrays.begin(), arrays.end());
}

// ---------------------------------------------------------------- lists of arrays

// The byte range of one array of a multi-tensor call.
struct Span {
  uintptr_t lo, hi;
  bool written;
  const char* name;
};

// No array that the call writes may share a byte with any other array of the call (the kernels
// would read values they have already overwritten, in an order that depends on the schedule).
// Sorted sweep over the ranges still open: O(n log n) when, as always in practice, nothing
// overlaps. Read-only arrays may overlap each other.
inline void check_no_overlap(std::vector<Span> spans) {
  spans.erase(std::remove_if(spans.begin(), spans.end(), [](const Span& s) { return s.lo == s.hi; }),
              spans.end());
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.lo < b.lo; });
  std::vector<const Span*> open;
  for (const Span& b : spans) {
    open.erase(std::remove_if(open.begin(), open.end(), [&](const Span* a) { return a->hi <= b.lo; }),
               open.end());
    for (const Span* a : open)
      DK_CHECK(!(a->written || b.written), b.name, " shares memory with ", a->name,
               " (arrays a multi-tensor pass writes must not overlap any other array of the call)");
    open.push_back(&b);
  }
}

// Reads the float32 CUDA arrays of one call that come in Python lists, naming each one
// "list[k]" (or "list[k][j]"); keeps the names alive for the messages, the arrays for the
// device check and their byte ranges for the overlap check.
class ArrayListReader {
 public:
  // n < 0: any size. Returns the data pointer.
  float* add(const py::handle& obj, const std::string& name, bool written, int64_t n) {
    names_.push_back(name);
    arrays_.push_back(read_cai(obj, names_.back().c_str()));
    const DevArray& a = arrays_.back();
    float* p = written ? out_ptr<float>(a) : const_cast<float*>(in_ptr<float>(a));
    DK_CHECK(a.ptr % alignof(float) == 0, a.name, " must be aligned to 4 bytes");
    if (n >= 0) check_size(a, n);
    spans_.push_back({a.ptr, a.ptr + static_cast<uintptr_t>(a.size) * sizeof(float), written, a.name});
    return p;
  }
  int64_t last_size() const { return arrays_.back().size; }
  // All checks passed: the arrays' common device (-1 when all are empty).
  int device() {
    check_no_overlap(spans_);
    std::vector<const DevArray*> all;
    for (const DevArray& a : arrays_) all.push_back(&a);
    return device_of(all);
  }

 private:
  std::deque<std::string> names_;  // deques never move their elements: the name pointers stay valid
  std::deque<DevArray> arrays_;
  std::vector<Span> spans_;
};

// Run `launch` (which queues kernels) without the GIL on the arrays' device. device < 0: every
// array, outputs included, is empty, so there is nothing to compute or write.
template <class F>
inline void run_on(int device, F&& launch) {
  if (device < 0) return;
  py::gil_scoped_release nogil;
  cuda::DeviceGuard guard(device);
  launch();
}

inline cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

inline const DevArray* opt(const std::optional<DevArray>& a) { return a ? &*a : nullptr; }

inline std::optional<DevArray> read_opt(const py::object& obj, const char* name) {
  if (obj.is_none()) return std::nullopt;
  return read_cai(obj, name);
}

inline void check_same_shape(const DevArray& a, const DevArray& b) {
  DK_CHECK(a.shape == b.shape, a.name, " has shape ", shape_str(a.shape), ", expected ", b.name,
           "'s ", shape_str(b.shape));
}

}  // namespace dk::py_cuda
