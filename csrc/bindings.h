// Each source file of the extension exposes one register_<part>() called from module.cpp.
#pragma once
#include <pybind11/pybind11.h>

namespace affaccel {
void register_segments(pybind11::module_& m);
}  // namespace affaccel
