"""Build of affaccel: Python packages plus the pybind11 extension ``affaccel._C``.

The extension is configured by CMake (CMakeLists.txt) and built with Ninja; both come from the
build requirements in pyproject.toml, so ``pip install .`` needs only a C++17 compiler on the
machine. Nothing here needs CUDA or torch.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent

COMPILER_HELP = (
    "affaccel: no C++17 compiler found, so the extension affaccel._C cannot be built.\n"
    "Install one and run `pip install .` again:\n"
    "  Debian/Ubuntu: sudo apt-get install g++\n"
    "  Fedora/RHEL:   sudo dnf install gcc-c++\n"
    "  macOS:         xcode-select --install\n"
    "  conda:         conda install -c conda-forge cxx-compiler\n"
    "or point the CXX environment variable at a compiler."
)


def find_cxx():
    cxx = os.environ.get("CXX")
    if cxx:
        return shutil.which(cxx.split()[0]) and cxx
    for name in ("c++", "g++", "clang++"):
        if shutil.which(name):
            return shutil.which(name)
    return None


class CMakeExtension(Extension):
    def __init__(self, name, source_dir):
        super().__init__(name, sources=[])
        self.source_dir = str(source_dir)


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        cxx = find_cxx()
        if cxx is None:
            raise RuntimeError(COMPILER_HELP)
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        cfg = "Debug" if self.debug else "Release"
        cmake_args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DCMAKE_CXX_COMPILER={cxx}",
            "-GNinja",
        ]
        try:
            subprocess.run(["cmake", ext.source_dir, *cmake_args], cwd=build_dir, check=True)
            subprocess.run(["cmake", "--build", ".", "--config", cfg], cwd=build_dir, check=True)
        except FileNotFoundError as e:
            raise RuntimeError(
                f"affaccel: {e.filename} not found; cmake and ninja come from the build "
                "requirements (pip install cmake ninja, or build without --no-build-isolation)"
            ) from e


packages = find_packages(include=["affaccel", "affaccel.*"]) + ["affaccel.kernels"]

setup(
    packages=packages,
    package_dir={"affaccel.kernels": "kernels"},
    # non-Python files shipped inside the package (open_clip configs of affaccel's small models)
    package_data={"affaccel.nn": ["model_configs/*.json"]},
    ext_modules=[CMakeExtension("affaccel._C", ROOT)],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
