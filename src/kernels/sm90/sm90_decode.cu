// Host side of the Hopper decode kernel: what it supports, the K-cache TMA descriptor, and the
// launch (with programmatic dependent launch so the combine kernel can follow closely).
#include "kernels/sm90/sm90_decode.h"

#include <cstdint>
#include <mutex>

#include <cuda.h>
#include <cuda_runtime.h>

#include "kernels/sm90/sm90_decode_kernel.h"
#include "kernels/sm90/sm90_kernel_traits.h"

namespace flashmla {

namespace {

using sm90::kBlockM;
using sm90::kBlockN;
using sm90::kElementBytes;
using sm90::kPieceCols;

// TMA limits (cuTensorMapEncodeTiled): 16-byte aligned base, strides multiples of 16 bytes and
// below 2^40 bytes, dimensions of at most 2^32 elements.
constexpr int64_t kTmaAlignBytes = 16;
constexpr int64_t kTmaMaxStrideBytes = int64_t{1} << 40;
constexpr int64_t kTmaMaxDimSize = int64_t{1} << 32;
// The driver call's signature as of CUDA 12.0, the version requested below.
constexpr unsigned int kTensorMapEncodeVersion = 12000;
// CUDA grid limit on y and z.
constexpr int64_t kMaxGridYZ = 65535;
// A launch whose K is at least this many times the L2 cache streams past it: lines left dirty by
// earlier kernels get written back during the decode, so the K loads take the default L2 policy
// (k_cache_hint). Measured on the H100's 50 MiB L2, default policy against evict-first on rows with
// one reader per K tile: 1.4x the L2 lost 6-10%, 4.3x lost 1.3-1.7%, 5.0x tied, 5.8x and more
// gained 0.9-3.3% (PERFORMANCE.md, v32 and the threshold probe).
constexpr int64_t kKStreamL2Multiple = 5;

bool aligned_to(const void* ptr, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(ptr) % static_cast<uintptr_t>(bytes) == 0;
}

// A stride only matters (and only needs to be valid) along a dimension of extent > 1.
bool stride_ok(int64_t extent, int64_t stride_elems, int64_t multiple_elems) {
  return extent <= 1 || (stride_elems > 0 && stride_elems % multiple_elems == 0);
}

using TensorMapEncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                            const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                            const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                            CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// Fetched through the runtime so that the library does not link libcuda directly.
TensorMapEncodeTiledFn tensor_map_encoder() {
  static TensorMapEncodeTiledFn fn = nullptr;
  static std::once_flag once;
  std::call_once(once, [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult query = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, kTensorMapEncodeVersion, cudaEnableDefault,
                                         &query) == cudaSuccess &&
        query == cudaDriverEntryPointSuccess) {
      fn = reinterpret_cast<TensorMapEncodeTiledFn>(ptr);
    }
  });
  return fn;
}

// A 4-D tensor map of the input dtype over `base` whose boxes are 64-column pieces: 128-byte rows,
// swizzled as the wgmma layouts expect.
cudaError_t encode_piece_map(const DecodeParams& p, const void* base, const cuuint64_t (&dims)[4],
                             const cuuint64_t (&strides)[3], const cuuint32_t (&box)[4], CUtensorMap* map) {
  TensorMapEncodeTiledFn encode = tensor_map_encoder();
  if (encode == nullptr) return cudaErrorNotSupported;
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  const CUtensorMapDataType dtype =
      p.dtype == DType::kBFloat16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  const CUresult r = encode(map, dtype, 4, const_cast<void*>(base), dims, strides, box, element_strides,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

// k_cache as a 4-D tensor (column, token in page, kv head, cache block): one box is a 64-column
// x 64-token piece of one page of one kv head. Each dimension gets its own int32 coordinate, so
// caches beyond 2^31 elements address correctly.
cudaError_t make_k_tensor_map(const DecodeParams& p, CUtensorMap* map) {
  const int64_t token_bytes = p.k_token_stride * kElementBytes;
  // Strides of extent-1 dimensions are never used; give them any legal value.
  const int64_t head_bytes = p.h_kv > 1 ? p.k_head_stride * kElementBytes : int64_t{p.head_dim} * kElementBytes;
  const int64_t block_bytes =
      p.num_cache_blocks > 1 ? p.k_block_stride * kElementBytes : token_bytes * p.page_block_size;
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(p.head_dim), static_cast<cuuint64_t>(p.page_block_size),
                              static_cast<cuuint64_t>(p.h_kv), static_cast<cuuint64_t>(p.num_cache_blocks)};
  const cuuint64_t strides[3] = {static_cast<cuuint64_t>(token_bytes), static_cast<cuuint64_t>(head_bytes),
                                 static_cast<cuuint64_t>(block_bytes)};
  const cuuint32_t box[4] = {kPieceCols, kBlockN, 1, 1};
  return encode_piece_map(p, p.k, dims, strides, box, map);
}

// Whether a q tensor-map box holds one piece of a CTA's packed query rows in order: the rows of a
// 64-row tile are whole query positions (g divides 64) or a run of heads of one position (64
// divides g). Other group sizes keep the cp.async gather.
bool q_rows_form_boxes(const DecodeParams& p) {
  const int g = p.q_heads_per_kv_head;
  return g > 0 && (kBlockM % g == 0 || g % kBlockM == 0);
}

// q as a 4-D tensor (column, head, query position, request); the box is (64 columns,
// min(g, 64) heads, max(1, 64 / g) positions, 1 request).
cudaError_t make_q_tensor_map(const DecodeParams& p, CUtensorMap* map) {
  const int64_t row_bytes = int64_t{p.head_dim} * kElementBytes;
  // Strides of extent-1 dimensions are never used; give them any legal value.
  const int64_t head_bytes = p.h_q > 1 ? p.q_head_stride * kElementBytes : row_bytes;
  const int64_t seq_bytes = p.s_q > 1 ? p.q_seq_stride * kElementBytes : head_bytes * p.h_q;
  const int64_t batch_bytes = p.batch > 1 ? p.q_batch_stride * kElementBytes : seq_bytes * p.s_q;
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(p.head_dim), static_cast<cuuint64_t>(p.h_q),
                              static_cast<cuuint64_t>(p.s_q), static_cast<cuuint64_t>(p.batch)};
  const cuuint64_t strides[3] = {static_cast<cuuint64_t>(head_bytes), static_cast<cuuint64_t>(seq_bytes),
                                 static_cast<cuuint64_t>(batch_bytes)};
  const int g = p.q_heads_per_kv_head;
  const cuuint32_t box[4] = {kPieceCols, static_cast<cuuint32_t>(g < kBlockM ? g : kBlockM),
                             static_cast<cuuint32_t>(g < kBlockM ? kBlockM / g : 1), 1};
  return encode_piece_map(p, p.q, dims, strides, box, map);
}

// The plan's total_tiles (metadata.h) from which K streams past the L2 cache of p.device.
cudaError_t k_stream_tiles(const DecodeParams& p, int* tiles) {
  int l2_bytes = 0;
  const cudaError_t err = cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, p.device);
  if (err != cudaSuccess) return err;
  const int64_t tile_bytes = int64_t{kBlockN} * sm90::kHeadDim * kElementBytes * p.h_kv;
  const int64_t needed = (kKStreamL2Multiple * l2_bytes + tile_bytes - 1) / tile_bytes;
  *tiles = static_cast<int>(needed < INT32_MAX ? needed : INT32_MAX);
  return cudaSuccess;
}

int query_tiles(const DecodeParams& p) { return (p.q_rows_per_kv_head + kBlockM - 1) / kBlockM; }

// The seesaw schedule from this many query tiles per kv head (more than 128 query rows, e.g. s_q=2
// with 128 heads). On the H100 A/B of every grid row through each schedule (PERFORMANCE.md, v34) it
// gained 1-3% where a CTA's tiles are compute bound and lost 2-7% on the two-tile rows (s_q=1), whose
// splits are short and bound by the K stream.
constexpr int kSeesawMinQueryTiles = 3;

template <class Element, sm90::Schedule kSchedule>
cudaError_t launch(const DecodeParams& p, const CUtensorMap& tma_k, const CUtensorMap& tma_q, bool q_by_tma,
                   int stream_tiles, cudaStream_t stream) {
  auto* kernel = &sm90::sm90_decode_kernel<Element, kSchedule>;
  constexpr int smem_bytes = sm90::kSharedStorageBytes<Element, kSchedule>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
  if (err != cudaSuccess) return err;

  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(query_tiles(p)),
                        static_cast<unsigned>(p.h_kv), static_cast<unsigned>(p.num_sm_parts));
  config.blockDim = dim3(sm90::kNumThreads);
  config.dynamicSmemBytes = smem_bytes;
  config.stream = stream;
  // The kernel waits (griddepcontrol.wait) before touching global memory, so it may start while
  // the previous kernel in the stream drains.
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attr;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, p, tma_k, tma_q, q_by_tma, stream_tiles);
}

template <class Element>
cudaError_t launch_schedule(const DecodeParams& p, const CUtensorMap& tma_k, const CUtensorMap& tma_q,
                            bool q_by_tma, int stream_tiles, cudaStream_t stream) {
  if (query_tiles(p) >= kSeesawMinQueryTiles) {
    return launch<Element, sm90::Schedule::kSeesaw>(p, tma_k, tma_q, q_by_tma, stream_tiles, stream);
  }
  return launch<Element, sm90::Schedule::kSplit>(p, tma_k, tma_q, q_by_tma, stream_tiles, stream);
}

}  // namespace

#ifdef FLASHMLA_PHASE_TRACE
cudaError_t sm90_take_phase_trace(trace::Stamp* host_stamps) {
  return trace::take_table(sm90::g_main_stamps, host_stamps);
}
#endif

bool sm90_kernel_available() { return true; }

const char* sm90_unsupported_reason(const DecodeParams& p) {
  if (p.head_dim != sm90::kHeadDim || p.head_dim_v != sm90::kHeadDimV) {
    return "the SM90 kernel needs head_dim 576 and head_dim_v 512";
  }
  if (p.page_block_size <= 0 || p.page_block_size % kBlockN != 0) {
    return "the SM90 kernel needs page_block_size to be a multiple of 64";
  }
  if (p.num_sm_parts < 1 || p.num_sm_parts > kMaxGridYZ || p.h_kv > kMaxGridYZ) {
    return "the SM90 kernel's grid cannot hold num_sm_parts or h_kv";
  }
  // A tensor map cannot describe a dimension of size 0; with no blocks every request is empty.
  if (p.num_cache_blocks < 1) return "the SM90 kernel's TMA needs k_cache to have at least one block";
  // Block ids are int32, so a larger cache (possible with overlapping blocks) is read by the
  // reference kernel rather than failing the tensor map's encoding.
  if (p.num_cache_blocks > kTmaMaxDimSize) return "the SM90 kernel's TMA takes at most 2^32 k_cache blocks";
  constexpr int64_t kTmaStrideElems = kTmaAlignBytes / kElementBytes;
  if (!aligned_to(p.k, kTmaAlignBytes) || !stride_ok(p.page_block_size, p.k_token_stride, kTmaStrideElems) ||
      !stride_ok(p.h_kv, p.k_head_stride, kTmaStrideElems) ||
      !stride_ok(p.num_cache_blocks, p.k_block_stride, kTmaStrideElems)) {
    return "the SM90 kernel's TMA needs k_cache 16-byte aligned with strides a multiple of 8 elements";
  }
  // In elements: a dimension of extent 1 may carry any stride, whose byte count could overflow.
  constexpr int64_t kTmaMaxStrideElems = kTmaMaxStrideBytes / kElementBytes;
  if (p.k_token_stride >= kTmaMaxStrideElems || p.k_head_stride >= kTmaMaxStrideElems ||
      p.k_block_stride >= kTmaMaxStrideElems) {
    return "the SM90 kernel's TMA needs k_cache strides below 2^40 bytes";
  }
  // Q is gathered in 16-byte chunks or loaded by TMA.
  if (!aligned_to(p.q, kTmaAlignBytes) || !stride_ok(p.batch, p.q_batch_stride, kTmaStrideElems) ||
      !stride_ok(p.s_q, p.q_seq_stride, kTmaStrideElems) || !stride_ok(p.h_q, p.q_head_stride, kTmaStrideElems)) {
    return "the SM90 kernel needs q 16-byte aligned with strides a multiple of 8 elements";
  }
  if (p.q_batch_stride >= kTmaMaxStrideElems || p.q_seq_stride >= kTmaMaxStrideElems ||
      p.q_head_stride >= kTmaMaxStrideElems) {
    return "the SM90 kernel needs q strides below 2^40 bytes";
  }
  // out is written two elements at a time.
  constexpr int64_t kPairElems = 2;
  if (!aligned_to(p.out, kPairElems * kElementBytes) || !stride_ok(p.batch, p.o_batch_stride, kPairElems) ||
      !stride_ok(p.s_q, p.o_seq_stride, kPairElems) || !stride_ok(p.h_q, p.o_head_stride, kPairElems)) {
    return "the SM90 kernel needs out 4-byte aligned with even strides";
  }
  return "";
}

cudaError_t run_sm90_decode(const DecodeParams& p, cudaStream_t stream) {
  CUtensorMap tma_k;
  cudaError_t err = make_k_tensor_map(p, &tma_k);
  if (err != cudaSuccess) return err;
  // An unused q map is passed zeroed (the kernel never reads it).
  CUtensorMap tma_q = {};
  const bool q_by_tma = q_rows_form_boxes(p);
  if (q_by_tma) {
    err = make_q_tensor_map(p, &tma_q);
    if (err != cudaSuccess) return err;
  }
  int stream_tiles = 0;
  err = k_stream_tiles(p, &stream_tiles);
  if (err != cudaSuccess) return err;
  return p.dtype == DType::kBFloat16
             ? launch_schedule<cutlass::bfloat16_t>(p, tma_k, tma_q, q_by_tma, stream_tiles, stream)
             : launch_schedule<cutlass::half_t>(p, tma_k, tma_q, q_by_tma, stream_tiles, stream);
}

}  // namespace flashmla
