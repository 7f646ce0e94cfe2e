// The CUTLASS mixed-input GEMM's configuration and launch (w4a16_cutlass.cu says what it computes and why),
// shared by the host entry points (w4a16_cutlass.cu) and the files that instantiate the kernels, one per
// activation type (w4a16_cutlass_f16.cu, w4a16_cutlass_bf16.cu: compiled in parallel). Compiled only with
// CUTLASS's headers (VLM_HAVE_CUTLASS).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/mixed_dtype_utils.hpp"
#include "cutlass/util/packed_stride.hpp"

#include "cuda/device_query.h"

namespace vlm {
namespace cutlass_w4a16 {

using namespace cute;

using Codes = cutlass::uint4b_t;

// CUTLASS's element type for the activations' CUDA type.
template <class T>
using Element = std::conditional_t<std::is_same_v<T, __half>, cutlass::half_t, cutlass::bfloat16_t>;

// The kernel for activation type T, tiles of TileM weight rows by TileN tokens by TileK of K. StreamK: CUTLASS's
// stream-K tile scheduler (its heuristic splits K across the SMs where the output tiles are too few to fill them,
// with a deterministic reduction through a workspace), else its persistent data-parallel one. TileK 64 is 128
// bytes of 16-bit activations, one swizzle atom; 128 (groups of 128 only: a group is whole K tiles) gives each
// pipeline stage 8 wgmmas instead of 4. ClusterM > 1: that many CTAs on neighbouring weight tiles form a cluster
// and TMA multicasts their shared activation tile to all of them (one L2 read for ClusterM tiles).
template <class T, int TileM, int TileN, bool StreamK, int TileK = 64, int ClusterM = 1>
struct Config {
  using E = Element<T>;
  using TileShape = Shape<Int<TileM>, Int<TileN>, Int<TileK>>;
  using ClusterShape = Shape<Int<ClusterM>, _1, _1>;
  // Weights [N][K] K-major ("row-major" as the kernel's A), activations [M][K] K-major (column-major as its B),
  // output N x M column-major (= [M][N] row-major).
  using LayoutW = cutlass::layout::RowMajor;
  using LayoutX = cutlass::layout::ColumnMajor;
  using LayoutOut = cutlass::layout::ColumnMajor;
  using StrideW = cutlass::detail::TagToStrideA_t<LayoutW>;
  using StrideX = cutlass::detail::TagToStrideB_t<LayoutX>;
  // The order one thread's codes sit in (CUTLASS's reordering atom for a 16-bit wgmma, values [0,2,4,6,1,3,5,7]).
  using ValueShuffle = Layout<Shape<_2, _4>, Stride<_4, _1>>;
  using LayoutAtom =
      decltype(cutlass::compute_memory_reordering_atom<E, Layout<Shape<_1, _1>>, ValueShuffle>());
  using LayoutWReordered = decltype(cute::tile_to_shape(LayoutAtom{}, Layout<Shape<int, int, int>, StrideW>{}));
  using Schedule = cute::conditional_t<TileM >= 128, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                                       cutlass::gemm::KernelTmaWarpSpecializedPingpong>;
  using EpilogueSchedule = cute::conditional_t<TileM >= 128, cutlass::epilogue::TmaWarpSpecializedCooperative,
                                               cutlass::epilogue::TmaWarpSpecialized>;

  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, void, LayoutOut, 8, E, LayoutOut, 8,
      EpilogueSchedule>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, cute::tuple<Codes, E, E>, LayoutWReordered, 32, E,
      LayoutX, 8, float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      Schedule>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue,
                                                      cute::conditional_t<StreamK, cutlass::gemm::StreamKScheduler,
                                                                          cutlass::gemm::PersistentScheduler>>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
  using StrideScale = typename Mainloop::StrideScale;
  using StrideOut = typename Kernel::StrideD;
};

// The prepared copy of one layer: codes (reordered, N*K/2 bytes), then scales [K/g][N], then offsets [K/g][N].
struct Prepared {
  const Codes* codes;
  const void* scales;
  const void* offsets;
};
inline int64_t codes_bytes(int n, int k) { return (int64_t)n * k / 2; }
inline int64_t params_bytes(int n, int k, int group) { return (int64_t)(k / group) * n * 2; }
inline Prepared prepared_at(const void* p, int n, int k, int group) {
  const auto* b = static_cast<const unsigned char*>(p);
  return {reinterpret_cast<const Codes*>(b), b + codes_bytes(n, k), b + codes_bytes(n, k) + params_bytes(n, k, group)};
}

// How the stream-K scheduler splits K and sums the splits (w4a16_cutlass.cu; measuring settings).
int k_splits();
bool unordered_sums();

// What a call of M tokens, N weight rows and K runs (w4a16_cutlass.cu chooses it by the layer and the measuring
// settings): weight rows (m), tokens (n) and K (k) a tile, the stream-K scheduler or the data-parallel one, CTAs a
// cluster. The launch (dispatch) and the query (w4a16_cutlass_tiles) both read it, so that what a benchmark
// reports is what ran.
struct Tiles {
  int m, n, k;
  bool stream_k;
  int cluster;
};
Tiles tiles_for(int M, int N, int K, int group, int sms);  // sms: the GPU's SMs

// The kernel's arguments for one call (pointers may be null where only the workspace size is asked).
template <class C>
typename C::Gemm::Arguments arguments(const void* a, const Prepared& p, void* c, int M, int N, int K, int group) {
  using E = typename C::E;
  const auto layout_w = cute::tile_to_shape(typename C::LayoutAtom{}, cute::make_shape(N, K, 1));
  const auto stride_x = cutlass::make_cute_packed_stride(typename C::StrideX{}, cute::make_shape(M, K, 1));
  const auto stride_s = cutlass::make_cute_packed_stride(typename C::StrideScale{}, cute::make_shape(N, K / group, 1));
  const auto stride_out = cutlass::make_cute_packed_stride(typename C::StrideOut{}, cute::make_shape(N, M, 1));
  return typename C::Gemm::Arguments{
      cutlass::gemm::GemmUniversalMode::kGemm,
      {N, M, K, 1},
      {p.codes, layout_w, static_cast<const E*>(a), stride_x, static_cast<const E*>(p.scales), stride_s, group,
       static_cast<const E*>(p.offsets)},
      {{1.f, 0.f}, nullptr, stride_out, static_cast<E*>(c), stride_out}};
}

// Sets *need to the workspace bytes this call needs and runs the GEMM with `workspace` (workspace_bytes long, at
// least *need); with a = null it only sets *need.
template <class T, int TileM, int TileN, bool StreamK, int TileK = 64, int ClusterM = 1>
cudaError_t run_gemm(const void* a, const Prepared& p, void* c, int M, int N, int K, int group, void* workspace,
                     size_t workspace_bytes, size_t* need, cudaStream_t stream) {
  using C = Config<T, TileM, TileN, StreamK, TileK, ClusterM>;
  auto args = arguments<C>(a, p, c, M, N, K, group);
  // The SM count CUTLASS would otherwise ask the driver for at every call (the grid and the stream-K split).
  args.hw_info.sm_count = cuda::sm_count();
  if constexpr (StreamK) {
    using Scheduler = typename C::Kernel::TileScheduler;
    if (k_splits() > 1) {  // every tile's K cut in k_splits() (CUTLASS's split-K decomposition)
      args.scheduler.splits = k_splits();
      args.scheduler.decomposition_mode = Scheduler::DecompositionMode::SplitK;
    }
    if (unordered_sums()) args.scheduler.reduction_mode = Scheduler::ReductionMode::Nondeterministic;
  }
  *need = C::Gemm::get_workspace_size(args);
  if (!a) return cudaSuccess;  // the size alone
  typename C::Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return cudaErrorInvalidValue;
  if (*need > workspace_bytes) return cudaErrorInvalidValue;
  if (gemm.initialize(args, *need ? workspace : nullptr, stream) != cutlass::Status::kSuccess)
    return cudaErrorInvalidValue;
  if (gemm.run(stream) != cutlass::Status::kSuccess) return cudaErrorLaunchFailure;
  return cudaGetLastError();
}

// The kernel of the shape's tiles (tiles_for); a = null asks only the workspace size. Tiles of 64 weight rows
// (CUTLASS's ping-pong schedule, which has no stream-K) run under the persistent data-parallel scheduler.
template <class T, int TileK>
cudaError_t dispatch_tiles(const Tiles& t, const void* a, const Prepared& p, void* c, int M, int N, int K, int group,
                           void* workspace, size_t workspace_bytes, size_t* need, cudaStream_t stream) {
  const bool wide = t.n == 128;
  if (t.n == 256)  // 128 x 256 tiles (stream-K): each converted weight serves twice the tokens
    return run_gemm<T, 128, 256, true, TileK>(a, p, c, M, N, K, group, workspace, workspace_bytes, need, stream);
  if (t.m == 64)
    return wide ? run_gemm<T, 64, 128, false, TileK>(a, p, c, M, N, K, group, workspace, workspace_bytes, need, stream)
                : run_gemm<T, 64, 64, false, TileK>(a, p, c, M, N, K, group, workspace, workspace_bytes, need, stream);
  if (t.stream_k) {
    if constexpr (TileK == 64) {  // clusters of 2 for measuring, on the stream-K tiles of 128 rows with K tiles of 64
      if (t.cluster == 2)
        return wide ? run_gemm<T, 128, 128, true, 64, 2>(a, p, c, M, N, K, group, workspace, workspace_bytes, need,
                                                         stream)
                    : run_gemm<T, 128, 64, true, 64, 2>(a, p, c, M, N, K, group, workspace, workspace_bytes, need,
                                                        stream);
    }
    return wide ? run_gemm<T, 128, 128, true, TileK>(a, p, c, M, N, K, group, workspace, workspace_bytes, need, stream)
                : run_gemm<T, 128, 64, true, TileK>(a, p, c, M, N, K, group, workspace, workspace_bytes, need, stream);
  }
  // data-parallel tiles of 128 rows (VLM_W4A16_CUTLASS_STREAMK=0, for measuring only): K tiles of 64 alone
  return wide ? run_gemm<T, 128, 128, false>(a, p, c, M, N, K, group, workspace, workspace_bytes, need, stream)
              : run_gemm<T, 128, 64, false>(a, p, c, M, N, K, group, workspace, workspace_bytes, need, stream);
}

template <class T>
cudaError_t dispatch(const void* a, const Prepared& p, void* c, int M, int N, int K, int group, void* workspace,
                     size_t workspace_bytes, size_t* need, cudaStream_t stream) {
  const Tiles t = tiles_for(M, N, K, group, cuda::sm_count());
  if (t.k == 128)
    return dispatch_tiles<T, 128>(t, a, p, c, M, N, K, group, workspace, workspace_bytes, need, stream);
  return dispatch_tiles<T, 64>(t, a, p, c, M, N, K, group, workspace, workspace_bytes, need, stream);
}

// The instantiations (w4a16_cutlass_f16.cu, w4a16_cutlass_bf16.cu).
cudaError_t gemm_f16(const void* a, const Prepared& p, void* c, int M, int N, int K, int group, void* workspace,
                     size_t workspace_bytes, size_t* need, cudaStream_t stream);
cudaError_t gemm_bf16(const void* a, const Prepared& p, void* c, int M, int N, int K, int group, void* workspace,
                      size_t workspace_bytes, size_t* need, cudaStream_t stream);

}  // namespace cutlass_w4a16
}  // namespace vlm
