// Tensor arguments as the Python layer passes them: a tuple
//   (data_ptr: int, shape: tuple[int], strides: tuple[int] (in elements), dtype: str,
//    device_type: str, device_index: int)
// or None for an absent optional tensor. No torch headers: NumPy, CuPy and torch callers all
// reduce to this. Every check names the op and the argument.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace orbitcore {
namespace binding {

namespace py = pybind11;

struct TensorArg {
  std::string op, name;
  bool present = false;
  std::uintptr_t ptr = 0;
  std::vector<std::int64_t> shape, strides;
  std::string dtype, device;
  int device_index = 0;

  std::int64_t dim() const { return static_cast<std::int64_t>(shape.size()); }
  std::int64_t size(int i) const { return shape[static_cast<std::size_t>(i < 0 ? i + dim() : i)]; }
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (auto s : shape) n *= s;
    return n;
  }
  template <typename T>
  T* data() const { return reinterpret_cast<T*>(ptr); }
  bool is_cuda() const { return device == "cuda"; }
};

inline std::string shape_str(const std::vector<std::int64_t>& s) {
  std::ostringstream o;
  o << "(";
  for (std::size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  if (s.size() == 1) o << ",";
  o << ")";
  return o.str();
}

[[noreturn]] inline void fail(const std::string& op, const std::string& msg) {
  throw std::invalid_argument(op + ": " + msg);
}

inline TensorArg parse(const py::handle& obj, const std::string& op, const std::string& name,
                       bool optional = false) {
  TensorArg t;
  t.op = op;
  t.name = name;
  if (obj.is_none()) {
    if (!optional) fail(op, name + " is required, got None");
    return t;
  }
  py::tuple tup;
  try {
    tup = obj.cast<py::tuple>();
  } catch (const py::cast_error&) {
    fail(op, name + " must be a tensor descriptor tuple (use orbitcore._ext.arg)");
  }
  if (tup.size() != 6) fail(op, name + " descriptor must have 6 fields");
  t.present = true;
  t.ptr = tup[0].cast<std::uintptr_t>();
  for (auto v : tup[1].cast<py::tuple>()) t.shape.push_back(v.cast<std::int64_t>());
  for (auto v : tup[2].cast<py::tuple>()) t.strides.push_back(v.cast<std::int64_t>());
  t.dtype = tup[3].cast<std::string>();
  t.device = tup[4].cast<std::string>();
  t.device_index = tup[5].cast<int>();
  if (t.shape.size() != t.strides.size()) fail(op, name + " descriptor: shape and strides differ in rank");
  if (t.device != "cpu" && t.device != "cuda")
    fail(op, name + " must be on a CPU or CUDA device, got " + t.device);
  return t;
}

inline void expect_dim(const TensorArg& t, std::int64_t rank, const std::string& layout) {
  if (t.dim() != rank)
    fail(t.op, t.name + " must have shape " + layout + ", got " + shape_str(t.shape));
}

inline void expect_shape(const TensorArg& t, const std::vector<std::int64_t>& want,
                         const std::string& layout) {
  if (t.shape != want)
    fail(t.op, t.name + " must have shape " + layout + " = " + shape_str(want) + ", got " +
                   shape_str(t.shape));
}

inline void expect_dtype(const TensorArg& t, const std::string& dtype) {
  if (t.dtype != dtype) fail(t.op, t.name + " must have dtype " + dtype + ", got " + t.dtype);
}

inline void expect_real(const TensorArg& t) {
  if (t.dtype != "float32" && t.dtype != "float64")
    fail(t.op, t.name + " must be float32 or float64, got " + t.dtype);
}

inline void expect_contiguous(const TensorArg& t) {
  if (t.numel() == 0) return;  // an empty array is trivially contiguous (its strides are arbitrary)
  std::int64_t expected = 1;
  for (std::int64_t i = t.dim() - 1; i >= 0; --i) {
    const auto k = static_cast<std::size_t>(i);
    if (t.shape[k] != 1 && t.strides[k] != expected)
      fail(t.op, t.name + " must be contiguous (row-major), got strides " + shape_str(t.strides) +
                     " for shape " + shape_str(t.shape));
    expected *= t.shape[k];
  }
}

inline void expect_same_device(const TensorArg& a, const TensorArg& b) {
  if (!b.present) return;
  if (a.device != b.device || a.device_index != b.device_index)
    fail(a.op, b.name + " must be on the same device as " + a.name + " (" + a.device + ":" +
                   std::to_string(a.device_index) + "), got " + b.device + ":" +
                   std::to_string(b.device_index));
}

// "float32" for complex64 and float32, "float64" for complex128 and float64; "" otherwise.
inline std::string real_dtype(const std::string& dtype) {
  if (dtype == "float32" || dtype == "complex64") return "float32";
  if (dtype == "float64" || dtype == "complex128") return "float64";
  return "";
}
inline std::string complex_dtype(const std::string& real) {
  return real == "float32" ? "complex64" : "complex128";
}

}  // namespace binding
}  // namespace orbitcore
