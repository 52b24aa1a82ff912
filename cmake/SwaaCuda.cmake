# Decide whether this build compiles the CUDA sources, and set up nvcc.
#
# In:  SWAA_TORCH_CUDA   ON when the installed torch is a CUDA build (setup.py passes it)
#      SWAA_ENABLE_CUDA  AUTO (default), ON (fail if impossible) or OFF
#      SWAA_CUDA_ARCHS   TORCH_CUDA_ARCH_LIST-style list, e.g. "9.0" or "8.0;9.0a"
#      env CUDA_HOME, then /usr/local/cuda: where nvcc is looked for
# Out: SWAA_WITH_CUDA (bool), SWAA_CUDA_REASON (one line saying why not, if not)
set(SWAA_ENABLE_CUDA "AUTO" CACHE STRING "Compile the CUDA kernels: AUTO, ON or OFF")
set(SWAA_CUDA_ARCHS "9.0" CACHE STRING "CUDA archs (TORCH_CUDA_ARCH_LIST syntax, e.g. 8.0;9.0a)")

set(SWAA_WITH_CUDA OFF)
set(SWAA_CUDA_REASON "")
set(_swaa_nvcc "")
foreach(_root "$ENV{CUDA_HOME}" "/usr/local/cuda")
  if(_root AND EXISTS "${_root}/bin/nvcc" AND NOT _swaa_nvcc)
    set(_swaa_nvcc "${_root}/bin/nvcc")
    set(_swaa_cuda_root "${_root}")
  endif()
endforeach()

if(SWAA_ENABLE_CUDA STREQUAL "OFF")
  set(SWAA_CUDA_REASON "SWAA_ENABLE_CUDA=OFF")
elseif(NOT SWAA_TORCH_CUDA)
  set(SWAA_CUDA_REASON "the installed torch is not a CUDA build")
elseif(NOT _swaa_nvcc)
  set(SWAA_CUDA_REASON "no nvcc under $CUDA_HOME or /usr/local/cuda")
else()
  set(SWAA_WITH_CUDA ON)
endif()

if(SWAA_ENABLE_CUDA STREQUAL "ON" AND NOT SWAA_WITH_CUDA)
  message(FATAL_ERROR "swaa_ext: SWAA_ENABLE_CUDA=ON but ${SWAA_CUDA_REASON}")
endif()

if(SWAA_WITH_CUDA)
  set(CMAKE_CUDA_COMPILER "${_swaa_nvcc}")
  set(CUDAToolkit_ROOT "${_swaa_cuda_root}")
  # torch's CMake config still uses the legacy FindCUDA: point it at the same
  # toolkit, or it may follow an nvcc wrapper on PATH to the wrong root.
  set(CUDA_TOOLKIT_ROOT_DIR "${_swaa_cuda_root}" CACHE PATH "CUDA toolkit used by torch's config" FORCE)
  # torch's CMake config turns TORCH_CUDA_ARCH_LIST into -gencode flags.
  set(ENV{TORCH_CUDA_ARCH_LIST} "${SWAA_CUDA_ARCHS}")
  enable_language(CUDA)
  message(STATUS "swaa_ext: building CUDA kernels with ${_swaa_nvcc} for archs ${SWAA_CUDA_ARCHS}")
else()
  message(STATUS "swaa_ext: CPU-only build: ${SWAA_CUDA_REASON}")
endif()
