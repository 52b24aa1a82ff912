# Imported target `torch` for a CPU-only build against a CUDA build of torch
# when no CUDA toolkit is installed: torch's own CMake config refuses that case
# (it insists on finding CUDA), so we name torch's CPU libraries directly.
# In: TORCH_ROOT (torch's package folder).  Out: TORCH_LIBRARIES, TORCH_INCLUDE_DIRS.
find_library(_swaa_c10 c10 PATHS "${TORCH_ROOT}/lib" NO_DEFAULT_PATH REQUIRED)
find_library(_swaa_torch_cpu torch_cpu PATHS "${TORCH_ROOT}/lib" NO_DEFAULT_PATH REQUIRED)
find_library(_swaa_torch torch PATHS "${TORCH_ROOT}/lib" NO_DEFAULT_PATH REQUIRED)
set(TORCH_INCLUDE_DIRS "${TORCH_ROOT}/include" "${TORCH_ROOT}/include/torch/csrc/api/include")
set(TORCH_LIBRARIES "${_swaa_torch}" "${_swaa_torch_cpu}" "${_swaa_c10}")
