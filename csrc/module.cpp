// The pybind11 module swaa_ext._C: importing it registers the swaa ops
// (TORCH_LIBRARY blocks in the other translation units) and exposes what this
// build contains.
#include <string>
#include <vector>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#ifndef SWAA_VERSION
#define SWAA_VERSION "0.0.0"
#endif
#ifndef SWAA_CUDA_ARCHS
#define SWAA_CUDA_ARCHS ""
#endif

namespace py = pybind11;

#ifdef SWAA_WITH_CUDA
namespace swaa {
std::vector<unsigned long long> decode_trace_snapshot();  // csrc/cuda/ring.cu
}
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "swaa_ext compiled kernels (ops are registered under torch.ops.swaa)";
  m.def("build_info", []() {
    py::dict info;
    info["version"] = SWAA_VERSION;
#ifdef SWAA_WITH_CUDA
    info["cuda"] = true;
    info["cuda_archs"] = std::string(SWAA_CUDA_ARCHS);
#else
    info["cuda"] = false;
    info["cuda_archs"] = std::string();
#endif
#ifdef _OPENMP
    info["openmp"] = true;  // at::parallel_for in our kernels runs on torch's threads
#else
    info["openmp"] = false;
#endif
#ifdef SWAA_DECODE_TRACE_BUILD
    info["decode_trace"] = true;  // SWAA_DECODE_TRACE=1 records a timeline (bench/trace_decode.py)
#else
    info["decode_trace"] = false;
#endif
#ifdef SWAA_CUDA_BUILD_REASON
    info["cuda_reason"] = std::string(SWAA_CUDA_BUILD_REASON);
#endif
    return info;
  });
#ifdef SWAA_WITH_CUDA
  m.def("decode_trace", &swaa::decode_trace_snapshot,
        "The last decode step traced with SWAA_DECODE_TRACE=1: a flat list of 2 x 8192 x 8 "
        "global-timer values and counts (split kernel CTAs, then combine kernel CTAs); see "
        "bench/trace_decode.py");
#endif
}
