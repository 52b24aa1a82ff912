"""Build swaa_ext._C with CMake + ninja (see CMakeLists.txt).

Environment knobs:
  SWAA_ENABLE_CUDA  AUTO (default) | ON | OFF
  SWAA_CUDA_ARCHS   e.g. "9.0" or "8.0;9.0a" (default: the local GPU's arch, else 9.0)
  SWAA_BUILD_DIR    CMake build folder (default: build/cmake)
  SWAA_CPU_MARCH    -march of the CPU kernels (default: native; "" for a generic build)
  MAX_JOBS          parallel compile jobs (default: number of CPUs)
  SWAA_CUDA_DTYPES / SWAA_CUDA_HEAD_DIMS  CUDA attention variants to build, e.g. "bf16" / "128"
                    (default: all: "bf16;fp16" / "64;128")
"""
import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
VERSION = "0.1.0"


def default_cuda_archs() -> str:
    import torch

    if torch.version.cuda and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{major}.{minor}"
    return "9.0"


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        import pybind11
        import torch
        import torch.utils

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(os.environ.get("SWAA_BUILD_DIR", ROOT / "build" / "cmake"))
        build_dir.mkdir(parents=True, exist_ok=True)
        archs = os.environ.get("SWAA_CUDA_ARCHS") or default_cuda_archs()
        args = [
            f"-S{ROOT}",
            f"-B{build_dir}",
            "-GNinja",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path};{pybind11.get_cmake_dir()}",
            f"-DSWAA_TORCH_DIR={Path(torch.__file__).parent}",
            f"-DSWAA_TORCH_CUDA={'ON' if torch.version.cuda else 'OFF'}",
            f"-DSWAA_ENABLE_CUDA={os.environ.get('SWAA_ENABLE_CUDA', 'AUTO')}",
            f"-DSWAA_CUDA_ARCHS={archs}",
            f"-DSWAA_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            f"-DSWAA_VERSION={VERSION}",
            f"-DSWAA_CPU_MARCH={os.environ.get('SWAA_CPU_MARCH', 'native')}",
        ]
        # always passed: CMake caches options, and a timeline left on from an earlier build
        # would change the decode kernels' registers
        args.append(f"-DSWAA_DECODE_TRACE_BUILD={os.environ.get('SWAA_DECODE_TRACE_BUILD') or 'OFF'}")
        for knob in ("SWAA_CUDA_DTYPES", "SWAA_CUDA_HEAD_DIMS", "SWAA_BUILD_HOPPER"):
            if os.environ.get(knob):
                args.append(f"-D{knob}={os.environ[knob]}")
        subprocess.run(["cmake", *args], check=True)
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        subprocess.run(["cmake", "--build", str(build_dir), "-j", jobs], check=True)


setup(
    version=VERSION,
    ext_modules=[CMakeExtension("swaa_ext._C")],
    cmdclass={"build_ext": CMakeBuild},
)
