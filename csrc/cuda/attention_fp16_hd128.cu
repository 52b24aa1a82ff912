// Kernels of swaa::fwd / swaa::bwd for __half, head dim 128 (one translation
// unit per variant keeps builds parallel; see attention_kernels.cuh).
#define SWAA_INSTANTIATE_KERNELS
#include "cuda/attention_launch.cuh"

SWAA_INSTANTIATE(__half, 128)
