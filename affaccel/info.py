"""`python -m affaccel.info`: versions, build configuration and available fast paths."""
from __future__ import annotations

import importlib.metadata as md
import platform
import sys


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def collect() -> dict:
    import affaccel
    from affaccel import _ext, env

    rows: dict[str, object] = {
        "affaccel": affaccel.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    try:
        import torch

        rows["torch"] = torch.__version__
        rows["torch CUDA build"] = torch.version.cuda or "none (CPU build)"
        cuda = torch.cuda.is_available()
        rows["CUDA available"] = cuda
        if cuda:
            rows["GPU"] = torch.cuda.get_device_name(0)
        rows["torch threads"] = torch.get_num_threads()
    except Exception as e:  # info must always print something and exit 0
        rows["torch"] = f"unavailable ({e})"
        cuda = False
    rows["triton"] = _version("triton")
    rows["nvidia-dali"] = next(
        (v for d in ("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali-cuda110")
         if (v := _version(d)) != "not installed"), "not installed")
    rows["open_clip_torch"] = _version("open_clip_torch")
    rows["av (PyAV)"] = _version("av")

    if _ext.available():
        ext = _ext.load()
        bi = dict(ext.build_info)
        rows["affaccel._C"] = "loaded"
        rows["  compiler"] = bi.get("compiler")
        rows["  flags"] = bi.get("cxx_flags")
        rows["  build type"] = bi.get("build_type")
        rows["  threads"] = env.num_threads() or bi.get("hardware_threads")
    else:
        rows["affaccel._C"] = f"NOT loaded: {_ext.load_error() or 'disabled'}"

    # Fast paths: which implementation each op takes on this machine.
    rows["window engine"] = "C++ (affaccel._C)" if _ext.available() else "NumPy reference"
    if env.force_reference():
        kern = "reference (AFFACCEL_FORCE_REFERENCE=1)"
    elif cuda and rows["triton"] != "not installed":
        kern = "Triton on CUDA tensors"
    elif env.triton_interpret():
        kern = "Triton interpreter on CPU tensors"
    else:
        kern = "PyTorch reference (no CUDA)"
    rows["TCN conv / CCC loss"] = kern
    for name, (default, _) in env.VARIABLES.items():
        import os

        rows[name] = os.environ.get(name, f"{default} (default)")
    return rows


def main() -> int:
    rows = collect()
    width = max(len(k) for k in rows)
    for k, v in rows.items():
        print(f"{k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
