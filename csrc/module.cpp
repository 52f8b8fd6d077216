// Entry point of the pybind11 extension affaccel._C: build information plus the bindings that
// each csrc/<part>.cpp registers through its register_<part>() function.
#include <pybind11/pybind11.h>

#include <thread>

#include "bindings.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "affaccel C++ extension: overlapping-window assembly and prediction averaging";
  py::dict info;
  info["compiler"] = AFFACCEL_COMPILER;
  info["cxx_flags"] = AFFACCEL_CXX_FLAGS;
  info["build_type"] = AFFACCEL_BUILD_TYPE;
  info["hardware_threads"] = std::thread::hardware_concurrency();
  m.attr("build_info") = info;
  affaccel::register_segments(m);
}
