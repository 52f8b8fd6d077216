// Placeholder until the window engine lands (issue 2).
#include "bindings.h"
namespace affaccel {
void register_segments(pybind11::module_& m) { (void)m; }
}  // namespace affaccel
