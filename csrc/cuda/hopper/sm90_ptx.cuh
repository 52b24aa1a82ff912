// Thin PTX wrappers for the Hopper (sm_90a) forward and backward kernels: mbarriers, TMA
// tile loads (cp.async.bulk.tensor), wgmma (warpgroup MMA) and its shared-
// memory matrix descriptors, setmaxnreg.  Only meaningful in device code
// compiled for sm_90a (wgmma and setmaxnreg need the arch-specific target);
// fwd_sm90.cuh guards its kernel body accordingly.
#pragma once

#include <cuda.h>  // CUtensorMap
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace swaa {
namespace cuda {
namespace sm90 {

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// The dynamic shared memory `raw` rounded up to `kAlign` bytes by pointer
// arithmetic on `raw` itself, so the compiler still knows the result points
// into shared memory and emits LDS / STS for accesses through it.  Rounding
// through uintptr_t loses that: every access through the struct became a
// generic LD.E / ST.E (session 7's ncu profile of the single-pass backward).
template <int kAlign>
__device__ __forceinline__ unsigned char* align_smem(unsigned char* raw) {
  static_assert(kAlign > 0 && (kAlign & (kAlign - 1)) == 0, "alignment must be a power of two");
  return raw + ((kAlign - (smem_u32(raw) & (kAlign - 1))) & (kAlign - 1));
}

// ---------------------------------------------------------------------------
// mbarrier (64-bit barrier object in shared memory)

__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count));
}
// Makes the initialisations visible to the async proxy (TMA) and other threads.
__device__ __forceinline__ void mbar_fence_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
// One arrival that also announces `bytes` of TMA transactions on this phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}
// Blocks until the phase with the given parity (0 or 1) has completed.
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n"
        "}\n"
        : "=r"(done)
        : "r"(smem_u32(bar)), "r"(parity)
        : "memory");
  } while (!done);
}

// ---------------------------------------------------------------------------
// TMA: one box of a 4-D tensor map (coordinates innermost first) into shared
// memory, completing `bytes` on the mbarrier.  Out-of-range elements arrive
// as zeros and still count towards the transaction bytes.

__device__ __forceinline__ void tma_load_4d(void* dst, const CUtensorMap* map, uint64_t* bar,
                                            int c0, int c1, int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3),
      "r"(smem_u32(bar))
      : "memory");
}
// Plain bulk copy (no tensor map) of `bytes` contiguous bytes global -> shared,
// completing on the mbarrier like tma_load_4d.  dst, src 16-byte aligned,
// bytes a multiple of 16.
__device__ __forceinline__ void bulk_load(void* dst, const void* src, uint32_t bytes,
                                          uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::
          "r"(smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(src)), "r"(bytes), "r"(smem_u32(bar))
      : "memory");
}
__device__ __forceinline__ void tma_prefetch_map(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// ---------------------------------------------------------------------------
// setmaxnreg: the producer warp group gives registers back, the consumers take them.

template <int N>
__device__ __forceinline__ void regs_dealloc() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void regs_alloc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}

// The warp group of the thread (threadIdx.x / 128), broadcast from lane 0:
// the compiler then knows it is warp-uniform, and what derives from it (wgmma
// descriptors, barrier addresses, the turn bookkeeping) can live in uniform
// registers.  With a plain threadIdx.x / 128 ptxas rebuilt each descriptor in
// ordinary registers and moved it over (R2UR) before every wgmma (session 9,
// SASS of the forward: 127 R2UR against 30).
__device__ __forceinline__ int warp_group_index() {
  return __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x / 128), 0);
}

// ---------------------------------------------------------------------------
// wgmma shared-memory matrix descriptors, 128-byte swizzle (the layout TMA
// writes with CU_TENSOR_MAP_SWIZZLE_128B: rows of 128 bytes, groups of 8
// rows = 1024-byte atoms whose 16-byte chunks are XOR-swizzled by row).
// Fields: start address >> 4 (bits 0-13), leading byte offset >> 4 (16-29),
// stride byte offset >> 4 (32-45), base offset 0 (atoms 1024-byte aligned),
// swizzle mode 1 = 128B (62-63).
__device__ __forceinline__ uint64_t make_desc(uint32_t addr, uint32_t lbo_bytes,
                                              uint32_t sbo_bytes) {
  uint64_t d = 0;
  d |= static_cast<uint64_t>((addr & 0x3FFFF) >> 4);
  d |= static_cast<uint64_t>((lbo_bytes >> 4) & 0x3FFF) << 16;
  d |= static_cast<uint64_t>((sbo_bytes >> 4) & 0x3FFF) << 32;
  d |= static_cast<uint64_t>(1) << 62;
  return d;
}
// The descriptor of the operand `bytes` further into shared memory: the start
// address field is the low 14 bits and the whole window is below 256 KB, so
// adding to the low word never carries into the other fields (one integer add
// instead of rebuilding the descriptor).
__device__ __forceinline__ uint64_t desc_advance(uint64_t desc, uint32_t bytes) {
  const uint32_t lo = static_cast<uint32_t>(desc) + (bytes >> 4);
  return (desc & 0xFFFFFFFF00000000ull) | lo;
}
// K-major operand (rows of 64 16-bit k values = 128 bytes; 8-row groups 1024
// bytes apart).  The leading byte offset is unused for swizzled K-major
// layouts whose k16 step stays inside one 128-byte row.
__device__ __forceinline__ uint64_t desc_k_major(uint32_t addr) { return make_desc(addr, 16, 1024); }
// MN-major operand (B of P V: rows are keys = k, 64 contiguous 16-bit values
// of d = n per 128-byte row; 8-key groups 1024 bytes apart (SBO), the next 64
// columns of n `n_chunk_bytes` further (LBO)).
__device__ __forceinline__ uint64_t desc_mn_major(uint32_t addr, uint32_t n_chunk_bytes) {
  return make_desc(addr, n_chunk_bytes, 1024);
}

// ---------------------------------------------------------------------------
// wgmma (m64n128k16, fp32 accumulators; 64 per thread).  fence before the
// first wgmma that reads registers written by ordinary instructions, commit
// after issuing, wait before reading the accumulators.

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Pins register values in place relative to the (volatile) wgmma, wait and
// barrier statements: the compiler may not move reads or writes of these
// registers across it (a read of an accumulator hoisted above the
// wgmma_wait that completes it would see a stale value or stall).
template <int N>
__device__ __forceinline__ void fence_regs(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

// The same for 16-bit A fragments held in registers: written before the
// wgmma_fence that precedes the register-A wgmma reading them.
template <int M, int N>
__device__ __forceinline__ void fence_regs(uint32_t (&r)[M][N]) {
#pragma unroll
  for (int i = 0; i < M; ++i)
#pragma unroll
    for (int j = 0; j < N; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
}

// Ends the basic block after x is computed.  ptxas schedules a wgmma wait
// to the top of its basic block (seen in the SASS: the wait for P V landed
// before the softmax it was meant to overlap); a branch on a value derived
// from the softmax keeps the wait below it.  The branch is never taken (no
// arithmetic result has the bit pattern 0xFFFFFFFF: the GPU's NaN is
// 0x7FFFFFFF) and would only execute a fence.
__device__ __forceinline__ void block_boundary_after(float x) {
  if (__float_as_uint(x) == 0xFFFFFFFFu) asm volatile("membar.cta;\n" ::: "memory");
}

// The 64 accumulator operands "+f"(d[0]) ... "+f"(d[63]).
#define SWAA_ACC8(i)                                                                        \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
      "+f"(d[i + 6]), "+f"(d[i + 7])
#define SWAA_ACC64                                                                          \
  SWAA_ACC8(0), SWAA_ACC8(8), SWAA_ACC8(16), SWAA_ACC8(24), SWAA_ACC8(32), SWAA_ACC8(40), \
      SWAA_ACC8(48), SWAA_ACC8(56)
#define SWAA_ACC32 SWAA_ACC8(0), SWAA_ACC8(8), SWAA_ACC8(16), SWAA_ACC8(24)
#define SWAA_ACC_LIST32                                                                      \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                  \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define SWAA_ACC_LIST                                                                        \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                  \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "         \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "         \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

// d (64 x 128) = (accumulate ? d : 0) + A (64 x 16, smem, K-major) * B (16 x 128, smem, K-major).
template <typename T>
__device__ __forceinline__ void wgmma_ss(float (&d)[64], uint64_t desc_a, uint64_t desc_b,
                                         int accumulate);
// d (64 x 64) = (accumulate ? d : 0) + A (64 x 16, smem, K-major) * B (16 x 64, smem, K-major):
// the score tiles of the backward (64 x 64).
template <typename T>
__device__ __forceinline__ void wgmma_ss_n64(float (&d)[32], uint64_t desc_a, uint64_t desc_b,
                                             int accumulate);
// The same two shapes with B MN-major (its rows are k; the single-pass
// backward's dQ = dS K, K as stored): d (64 x 128) and d (64 x 64).
template <typename T>
__device__ __forceinline__ void wgmma_ss_n128_bmn(float (&d)[64], uint64_t desc_a,
                                                  uint64_t desc_b, int accumulate);
template <typename T>
__device__ __forceinline__ void wgmma_ss_n64_bmn(float (&d)[32], uint64_t desc_a,
                                                 uint64_t desc_b, int accumulate);
// d (64 x 128) += A (64 x 16, registers) * B (16 x 128, smem, MN-major).
template <typename T>
__device__ __forceinline__ void wgmma_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b);

// d (64 x 64) += A (64 x 16, registers) * B (16 x 64, smem, MN-major): P V at head dim 64.
template <typename T>
__device__ __forceinline__ void wgmma_rs_n64(float (&d)[32], const uint32_t (&a)[4],
                                             uint64_t desc_b);

// FN: the function; TRANS_B: "0" for a K-major B, "1" for an MN-major B.
#define SWAA_WGMMA_SS(FN, TYPE, NAME, TRANS_B)                                                   \
  template <>                                                                                    \
  __device__ __forceinline__ void FN<TYPE>(float (&d)[64], uint64_t desc_a, uint64_t desc_b,     \
                                           int accumulate) {                                     \
    asm volatile(                                                                                \
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                             \
        "wgmma.mma_async.sync.aligned.m64n128k16.f32." NAME "." NAME " " SWAA_ACC_LIST           \
        ", %64, %65, p, 1, 1, 0, " TRANS_B ";\n}\n"                                              \
        : SWAA_ACC64                                                                             \
        : "l"(desc_a), "l"(desc_b), "r"(accumulate));                                            \
  }
#define SWAA_WGMMA_SS64(FN, TYPE, NAME, TRANS_B)                                                 \
  template <>                                                                                    \
  __device__ __forceinline__ void FN<TYPE>(float (&d)[32], uint64_t desc_a, uint64_t desc_b,     \
                                           int accumulate) {                                     \
    asm volatile(                                                                                \
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                             \
        "wgmma.mma_async.sync.aligned.m64n64k16.f32." NAME "." NAME " " SWAA_ACC_LIST32          \
        ", %32, %33, p, 1, 1, 0, " TRANS_B ";\n}\n"                                              \
        : SWAA_ACC32                                                                             \
        : "l"(desc_a), "l"(desc_b), "r"(accumulate));                                            \
  }
#define SWAA_WGMMA_RS(TYPE, NAME)                                                                \
  template <>                                                                                    \
  __device__ __forceinline__ void wgmma_rs<TYPE>(float (&d)[64], const uint32_t (&a)[4],         \
                                                 uint64_t desc_b) {                              \
    asm volatile(                                                                                \
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                             \
        "wgmma.mma_async.sync.aligned.m64n128k16.f32." NAME "." NAME " " SWAA_ACC_LIST           \
        ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"                                          \
        : SWAA_ACC64                                                                             \
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));                      \
  }
#define SWAA_WGMMA_RS64(TYPE, NAME)                                                              \
  template <>                                                                                    \
  __device__ __forceinline__ void wgmma_rs_n64<TYPE>(float (&d)[32], const uint32_t (&a)[4],     \
                                                     uint64_t desc_b) {                          \
    asm volatile(                                                                                \
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                             \
        "wgmma.mma_async.sync.aligned.m64n64k16.f32." NAME "." NAME " " SWAA_ACC_LIST32          \
        ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"                                          \
        : SWAA_ACC32                                                                             \
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));                      \
  }
SWAA_WGMMA_RS64(__nv_bfloat16, "bf16")
SWAA_WGMMA_RS64(__half, "f16")
SWAA_WGMMA_SS64(wgmma_ss_n64, __nv_bfloat16, "bf16", "0")
SWAA_WGMMA_SS64(wgmma_ss_n64, __half, "f16", "0")
SWAA_WGMMA_SS64(wgmma_ss_n64_bmn, __nv_bfloat16, "bf16", "1")
SWAA_WGMMA_SS64(wgmma_ss_n64_bmn, __half, "f16", "1")
SWAA_WGMMA_SS(wgmma_ss, __nv_bfloat16, "bf16", "0")
SWAA_WGMMA_SS(wgmma_ss, __half, "f16", "0")
SWAA_WGMMA_SS(wgmma_ss_n128_bmn, __nv_bfloat16, "bf16", "1")
SWAA_WGMMA_SS(wgmma_ss_n128_bmn, __half, "f16", "1")
SWAA_WGMMA_RS(__nv_bfloat16, "bf16")
SWAA_WGMMA_RS(__half, "f16")
// ---------------------------------------------------------------------------
// Bulk (async-proxy) copies shared -> global: groups and their completion.

__device__ __forceinline__ void bulk_commit_group() {
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}
// Waits until the committed bulk copies have finished reading shared memory.
__device__ __forceinline__ void bulk_wait_group_read0() {
  asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
}
// Waits until the committed bulk copies are complete (their writes performed).
__device__ __forceinline__ void bulk_wait_group0() {
  asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
}
// Orders this thread's ordinary shared-memory writes before later async-proxy
// (wgmma, TMA, bulk copy) accesses to them.
__device__ __forceinline__ void fence_proxy_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// Keeps ptxas from moving a later wgmma_wait above the instructions before
// this point.  ptxas places a `wgmma.wait_group` by its own latency estimate,
// early, whatever the PTX order: the forward's overlapped turn (fwd51_sm90.cuh,
// kLeanOverlap) waits for P V after the softmax in PTX, and without this fence
// ptxas put the wait (WARPGROUP.DEPBAR) at the start of the softmax (session
// 15, cuobjdump; empty asm statements, __syncwarp and a proxy fence did not
// hold it).  fence.acq_rel.cta (MEMBAR.ALL.CTA) does; it orders this thread's
// memory accesses too, of which the softmax has none.
__device__ __forceinline__ void fence_wait_placement() {
  asm volatile("fence.acq_rel.cta;\n" ::: "memory");
}

#undef SWAA_WGMMA_SS
#undef SWAA_WGMMA_RS
#undef SWAA_WGMMA_RS64
#undef SWAA_WGMMA_SS64
#undef SWAA_ACC_LIST32
#undef SWAA_ACC32
#undef SWAA_ACC_LIST
#undef SWAA_ACC64
#undef SWAA_ACC8

}  // namespace sm90
}  // namespace cuda
}  // namespace swaa
