"""One tolerance table for every parity test: dtype -> (rtol, atol)."""
from __future__ import annotations

TOLERANCES = {
    "float64": (1e-10, 1e-12),
    "float32": (1e-4, 1e-5),
    # fp32 through TF32 tensor cores (10-bit mantissa operands, fp32 accumulation)
    "tf32": (5e-3, 5e-3),
    "float16": (1e-2, 1e-2),
    "bfloat16": (2e-2, 2e-2),
}


def tol(dtype) -> dict:
    """rtol/atol keyword arguments for a torch or NumPy dtype (or its name)."""
    name = str(dtype).replace("torch.", "")
    rtol, atol = TOLERANCES[name]
    return {"rtol": rtol, "atol": atol}
