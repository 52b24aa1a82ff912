# The torch libraries swaa_ext links, named directly from torch's package
# folder.  We do not link torch's exported `torch` target: for CUDA builds it
# drags in CUDA libraries we never call (nvrtc, cuDNN ...) that a minimal CUDA
# toolkit lacks.
# In: SWAA_TORCH_DIR, SWAA_WITH_CUDA.  Out: SWAA_TORCH_LIBRARIES, SWAA_TORCH_INCLUDE_DIRS.
set(SWAA_TORCH_INCLUDE_DIRS "${SWAA_TORCH_DIR}/include"
    "${SWAA_TORCH_DIR}/include/torch/csrc/api/include")
set(_swaa_torch_libs torch torch_cpu c10 torch_python)
if(SWAA_WITH_CUDA)
  list(APPEND _swaa_torch_libs torch_cuda c10_cuda)
endif()
set(SWAA_TORCH_LIBRARIES "")
foreach(_lib ${_swaa_torch_libs})
  find_library(SWAA_LIB_${_lib} ${_lib} PATHS "${SWAA_TORCH_DIR}/lib" NO_DEFAULT_PATH REQUIRED)
  list(APPEND SWAA_TORCH_LIBRARIES "${SWAA_LIB_${_lib}}")
endforeach()
