/*
 * flashmla: Multi-head Latent Attention decoding on NVIDIA GPUs.
 *
 * The whole public surface of libflashmla. Plain C; compiles as C99 and as C++.
 *
 * Conventions
 *  - Tensors are DLPack DLTensors. The innermost dimension must be contiguous (stride 1); the
 *    others may have any non-negative stride. A NULL `strides` means compact row-major.
 *    `byte_offset` is honoured.
 *  - Every function returns a flashmla_status_t. On failure, flashmla_get_last_error() returns a
 *    message naming the offending argument, e.g. "block_table: expected int32, got float16".
 *    The message is per host thread and stays valid until that thread's next flashmla call.
 *  - Work is enqueued on the given stream and never synchronises the host (except in validating
 *    mode), so every call can be captured into a CUDA graph. Pass NULL for the legacy default
 *    stream.
 *  - Values that live on the device (sequence lengths, block ids) are trusted; see
 *    flashmla_decode_args.validate for the checked mode.
 */
#ifndef FLASHMLA_FLASHMLA_H_
#define FLASHMLA_FLASHMLA_H_

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>
#include <dlpack/dlpack.h>

#if defined(_WIN32)
#define FLASHMLA_API __declspec(dllexport)
#else
#define FLASHMLA_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define FLASHMLA_VERSION_MAJOR 0
#define FLASHMLA_VERSION_MINOR 1
#define FLASHMLA_VERSION_PATCH 0

/* The head dimensions of MLA's absorbed decode form: 512 latent columns plus 64 rotary ones for
 * q and K; V is the first 512 columns of the K cache. */
#define FLASHMLA_HEAD_DIM 576
#define FLASHMLA_HEAD_DIM_V 512

/* KV tokens per scheduler tile; a cache page holds a whole number of tiles. */
#define FLASHMLA_BLOCK_N 64

/* int32 words per row of the tile-scheduler metadata tensor (see flashmla_get_metadata). */
#define FLASHMLA_METADATA_WORDS 8

typedef enum flashmla_status {
  FLASHMLA_STATUS_SUCCESS = 0,
  /* An argument failed validation; nothing was enqueued. */
  FLASHMLA_STATUS_INVALID_ARGUMENT = 1,
  /* Valid arguments this build or device cannot run (e.g. a GPU older than sm_80). */
  FLASHMLA_STATUS_NOT_SUPPORTED = 2,
  /* The CUDA runtime reported an error (launch failure, out of memory, ...). */
  FLASHMLA_STATUS_CUDA_ERROR = 3,
  /* A bug in flashmla; please report it with the message. */
  FLASHMLA_STATUS_INTERNAL_ERROR = 4
} flashmla_status_t;

/* Which decode kernel runs. AUTO picks the Hopper kernel on sm_90 devices when it is built in and
 * the reference kernel elsewhere. The environment variable FLASHMLA_BACKEND=reference|sm90
 * overrides AUTO (not an explicit choice). */
typedef enum flashmla_backend {
  FLASHMLA_BACKEND_AUTO = 0,
  FLASHMLA_BACKEND_REFERENCE = 1,
  FLASHMLA_BACKEND_SM90 = 2
} flashmla_backend_t;

/* ---- Library information ----------------------------------------------------------------- */

/* Version of the loaded library (may differ from the FLASHMLA_VERSION_* of the header used). */
FLASHMLA_API void flashmla_get_version(int* major, int* minor, int* patch);

/* Static name of a status ("FLASHMLA_STATUS_INVALID_ARGUMENT"); never NULL. */
FLASHMLA_API const char* flashmla_status_string(flashmla_status_t status);

/* Message describing the last failure on this thread; "" after a success. Never NULL. */
FLASHMLA_API const char* flashmla_get_last_error(void);

/* ---- Tile-scheduler metadata ------------------------------------------------------------- */

/* Number of persistent CTAs ("SM parts") the decode kernel splits the work of each
 * (kv head, 64-row query tile) across on `device`, for a decode with `num_q_rows_per_kv_head`
 * = s_q * h_q / h_kv query rows per KV head and `num_kv_heads` KV heads. The metadata tensor of
 * flashmla_get_metadata has this many rows. */
FLASHMLA_API flashmla_status_t flashmla_get_num_sm_parts(int device, int64_t num_q_rows_per_kv_head,
                                                         int64_t num_kv_heads,
                                                         int64_t* num_sm_parts);

/* Computes the split-KV plan from the sequence lengths.
 *   cache_seqlens           [b] int32, >= 0
 *   tile_scheduler_metadata [num_sm_parts, FLASHMLA_METADATA_WORDS] int32, written
 *   num_splits              [b + 1] int32, written: prefix sums of the pieces per request
 * The two outputs share memory with nothing else given, and b + num_sm_parts fits in int32.
 * All three on the same CUDA device: a single kernel on `stream`, no host synchronisation.
 * All three in host memory (kDLCPU): computed on the host, bit-identical to the device result,
 * `stream` ignored. num_sm_parts is read from the metadata tensor's first dimension, normally the
 * value of flashmla_get_num_sm_parts. The plan depends only on the lengths and num_sm_parts, so
 * one plan serves every layer of a decode step. */
FLASHMLA_API flashmla_status_t flashmla_get_metadata(const DLTensor* cache_seqlens,
                                                     DLTensor* tile_scheduler_metadata,
                                                     DLTensor* num_splits, cudaStream_t stream);

/* ---- Decode ------------------------------------------------------------------------------- */

typedef struct flashmla_decode_args {
  /* Inputs. q, k_cache and out share one dtype: bfloat16 or float16. */
  const DLTensor* q;                       /* [b, s_q, h_q, 576] */
  const DLTensor* k_cache;                 /* [num_blocks, page_block_size, h_kv, 576] */
  const DLTensor* block_table;             /* [b, max_blocks_per_seq] int32 */
  const DLTensor* cache_seqlens;           /* [b] int32 */
  const DLTensor* tile_scheduler_metadata; /* [num_sm_parts, 8] int32 from flashmla_get_metadata */
  const DLTensor* num_splits;              /* [b + 1] int32 from flashmla_get_metadata */
  /* Outputs. Each needs its own memory for every element, shared with no other argument (nor the
   * workspace); tensors that only interleave, such as column slices of one array, are fine. */
  DLTensor* out; /* [b, s_q, h_q, 512], dtype of q */
  DLTensor* lse; /* [b, h_q, s_q] float32: natural-log sum of exp(scaled scores) */
  int32_t head_dim_v; /* must be 512 */
  /* 0 selects 1/sqrt(576); otherwise finite, > 0 and at most FLT_MAX / log2(e). */
  float softmax_scale;
  /* Non-zero: query row i of a request with L tokens sees keys [0, L - s_q + i]. */
  int32_t causal;
  /* Device memory for the split-KV partial results, at least flashmla_decode_workspace_size()
   * bytes, 256-byte aligned. NULL: the library allocates it stream-ordered
   * (cudaMallocAsync/cudaFreeAsync on `stream`). */
  void* workspace;
  size_t workspace_size;
  flashmla_backend_t backend;
  /* 0: the values that live on the device (lengths, block ids, the plan) are trusted.
   * 1: validating mode. Before any kernel reads the cache, the GPU checks that every cache_seqlens
   * entry is >= 0 and at most max_blocks_per_seq * page_block_size; that the block_table entries
   * a request uses (its first ceil(len / page_block_size)) lie in [0, num_blocks); and that
   * tile_scheduler_metadata and num_splits are the plan flashmla_get_metadata makes of these
   * lengths. The first bad element, in request order, is reported as
   * FLASHMLA_STATUS_INVALID_ARGUMENT with a message naming it ("block_table[3][17] = 99999 is
   * outside k_cache's 4096 blocks"), and no decode kernel runs. Reading the verdict back
   * synchronises `stream` (a few extra launches and a host round trip per call), so this mode is
   * refused with FLASHMLA_STATUS_INVALID_ARGUMENT while `stream` is being captured into a graph.
   * Other values are invalid. */
  int32_t validate;
} flashmla_decode_args;

/* Fills `args` with defaults: all tensors NULL, head_dim_v 512, scale 0 (default), not causal,
 * no workspace, FLASHMLA_BACKEND_AUTO. */
FLASHMLA_API void flashmla_decode_args_init(flashmla_decode_args* args);

/* Bytes of workspace flashmla_decode needs for this problem. */
FLASHMLA_API flashmla_status_t flashmla_decode_workspace_size(int64_t batch, int64_t s_q,
                                                              int64_t h_q, int64_t num_sm_parts,
                                                              size_t* bytes);

/* Paged-KV MLA decode. Requests with 0 tokens (and causal rows that see no key) get out = 0 and
 * lse = +inf. Query head h reads KV head h / (h_q / h_kv). Limits: h_kv <= 65535 and
 * s_q * h_q / h_kv <= 1048560 query rows per KV head (the kernels' grids). */
FLASHMLA_API flashmla_status_t flashmla_decode(const flashmla_decode_args* args,
                                               cudaStream_t stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* FLASHMLA_FLASHMLA_H_ */
