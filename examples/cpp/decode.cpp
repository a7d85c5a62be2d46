// One paged MLA decode through the C API: device buffers described as DLTensors, the split-KV plan,
// then the decode on a stream, checked against a small CPU computation of the same attention.
//
// Two requests of 100 and 300 tokens, 16 query heads, one KV head, pages of 64 tokens, bfloat16.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include <cuda_runtime_api.h>
#include <flashmla/flashmla.h>

namespace {

constexpr int64_t kBatch = 2, kSeqQ = 1, kHeadsQ = 16, kHeadsKV = 1, kPage = 64;
constexpr int32_t kLengths[kBatch] = {100, 300};
constexpr int64_t kBlocksPerRequest = 5;  // 5 pages of 64 >= 300 tokens
constexpr int64_t kNumBlocks = kBatch * kBlocksPerRequest;
constexpr int64_t kDim = FLASHMLA_HEAD_DIM, kDimV = FLASHMLA_HEAD_DIM_V;
// bfloat16 keeps 8 significant bits: the GPU result matches a float CPU result to about this.
constexpr double kTolerance = 2e-2;

// bfloat16 as the upper half of a float, rounded to nearest even.
uint16_t to_bf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  bits += 0x7FFF + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

float from_bf16(uint16_t half) {
  const uint32_t bits = static_cast<uint32_t>(half) << 16;
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// A device allocation that frees itself.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (cudaMalloc(&data_, bytes) != cudaSuccess) data_ = nullptr;
  }
  ~DeviceBuffer() { cudaFree(data_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* get() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  void* data_ = nullptr;
  size_t bytes_;
};

// A compact row-major DLTensor over device memory (the shape array must outlive it).
DLTensor describe(void* data, std::vector<int64_t>& shape, DLDataType dtype, int device) {
  DLTensor tensor{};
  tensor.data = data;
  tensor.device = {kDLCUDA, device};
  tensor.ndim = static_cast<int32_t>(shape.size());
  tensor.dtype = dtype;
  tensor.shape = shape.data();
  tensor.strides = nullptr;
  return tensor;
}

bool check(flashmla_status_t status, const char* what) {
  if (status == FLASHMLA_STATUS_SUCCESS) return true;
  std::fprintf(stderr, "%s failed: %s: %s\n", what, flashmla_status_string(status),
               flashmla_get_last_error());
  return false;
}

// out[h] and lse[h] of request `request` on the CPU, from the same bf16 values.
void cpu_attention(const std::vector<uint16_t>& q, const std::vector<uint16_t>& cache,
                   const std::vector<int32_t>& table, int request, int head,
                   std::vector<double>* out, double* lse) {
  const int length = kLengths[request];
  const double scale = 1.0 / std::sqrt(static_cast<double>(kDim));
  std::vector<double> scores(length);
  double max_score = -INFINITY;
  for (int t = 0; t < length; ++t) {
    const int64_t block = table[request * kBlocksPerRequest + t / kPage];
    const uint16_t* key = &cache[((block * kPage + t % kPage) * kHeadsKV) * kDim];
    const uint16_t* query = &q[(request * kHeadsQ + head) * kDim];
    double dot = 0;
    for (int64_t d = 0; d < kDim; ++d) dot += double(from_bf16(query[d])) * from_bf16(key[d]);
    scores[t] = dot * scale;
    max_score = std::max(max_score, scores[t]);
  }
  double total = 0;
  out->assign(kDimV, 0.0);
  for (int t = 0; t < length; ++t) {
    const double weight = std::exp(scores[t] - max_score);
    total += weight;
    const int64_t block = table[request * kBlocksPerRequest + t / kPage];
    const uint16_t* value = &cache[((block * kPage + t % kPage) * kHeadsKV) * kDim];
    for (int64_t d = 0; d < kDimV; ++d) (*out)[d] += weight * from_bf16(value[d]);
  }
  for (double& x : *out) x /= total;
  *lse = std::log(total) + max_score;
}

}  // namespace

int main() {
  int device = 0;
  if (cudaSetDevice(device) != cudaSuccess) {
    std::fprintf(stderr, "no CUDA device\n");
    return 1;
  }
  cudaStream_t stream;
  cudaStreamCreate(&stream);

  // Host data: random q and cache, each request's pages in a shuffled block table.
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 0.1f);
  std::vector<uint16_t> q(kBatch * kSeqQ * kHeadsQ * kDim), cache(kNumBlocks * kPage * kHeadsKV * kDim);
  for (auto& x : q) x = to_bf16(normal(rng));
  for (auto& x : cache) x = to_bf16(normal(rng));
  std::vector<int32_t> table(kNumBlocks);
  for (int64_t i = 0; i < kNumBlocks; ++i) table[i] = static_cast<int32_t>(i);
  std::shuffle(table.begin(), table.end(), rng);
  const std::vector<int32_t> lengths(kLengths, kLengths + kBatch);

  int64_t parts = 0;
  if (!check(flashmla_get_num_sm_parts(device, kSeqQ * kHeadsQ / kHeadsKV, kHeadsKV, &parts),
             "flashmla_get_num_sm_parts")) {
    return 1;
  }
  size_t workspace_bytes = 0;
  if (!check(flashmla_decode_workspace_size(kBatch, kSeqQ, kHeadsQ, parts, &workspace_bytes),
             "flashmla_decode_workspace_size")) {
    return 1;
  }

  DeviceBuffer q_dev(q.size() * 2), cache_dev(cache.size() * 2), table_dev(table.size() * 4),
      lengths_dev(kBatch * 4), metadata_dev(parts * FLASHMLA_METADATA_WORDS * 4),
      splits_dev((kBatch + 1) * 4), out_dev(kBatch * kSeqQ * kHeadsQ * kDimV * 2),
      lse_dev(kBatch * kHeadsQ * kSeqQ * 4), workspace(workspace_bytes);
  cudaMemcpyAsync(q_dev.get(), q.data(), q_dev.bytes(), cudaMemcpyHostToDevice, stream);
  cudaMemcpyAsync(cache_dev.get(), cache.data(), cache_dev.bytes(), cudaMemcpyHostToDevice, stream);
  cudaMemcpyAsync(table_dev.get(), table.data(), table_dev.bytes(), cudaMemcpyHostToDevice, stream);
  cudaMemcpyAsync(lengths_dev.get(), lengths.data(), lengths_dev.bytes(), cudaMemcpyHostToDevice, stream);

  const DLDataType bf16{kDLBfloat, 16, 1}, f32{kDLFloat, 32, 1}, i32{kDLInt, 32, 1};
  std::vector<int64_t> q_shape{kBatch, kSeqQ, kHeadsQ, kDim}, cache_shape{kNumBlocks, kPage, kHeadsKV, kDim},
      table_shape{kBatch, kBlocksPerRequest}, lengths_shape{kBatch},
      metadata_shape{parts, FLASHMLA_METADATA_WORDS}, splits_shape{kBatch + 1},
      out_shape{kBatch, kSeqQ, kHeadsQ, kDimV}, lse_shape{kBatch, kHeadsQ, kSeqQ};
  DLTensor q_t = describe(q_dev.get(), q_shape, bf16, device);
  DLTensor cache_t = describe(cache_dev.get(), cache_shape, bf16, device);
  DLTensor table_t = describe(table_dev.get(), table_shape, i32, device);
  DLTensor lengths_t = describe(lengths_dev.get(), lengths_shape, i32, device);
  DLTensor metadata_t = describe(metadata_dev.get(), metadata_shape, i32, device);
  DLTensor splits_t = describe(splits_dev.get(), splits_shape, i32, device);
  DLTensor out_t = describe(out_dev.get(), out_shape, bf16, device);
  DLTensor lse_t = describe(lse_dev.get(), lse_shape, f32, device);

  // Once per decode step (the plan depends only on the lengths), then once per layer.
  if (!check(flashmla_get_metadata(&lengths_t, &metadata_t, &splits_t, stream), "flashmla_get_metadata")) {
    return 1;
  }
  flashmla_decode_args args;
  flashmla_decode_args_init(&args);
  args.q = &q_t;
  args.k_cache = &cache_t;
  args.block_table = &table_t;
  args.cache_seqlens = &lengths_t;
  args.tile_scheduler_metadata = &metadata_t;
  args.num_splits = &splits_t;
  args.out = &out_t;
  args.lse = &lse_t;
  args.workspace = workspace.get();
  args.workspace_size = workspace.bytes();
  if (!check(flashmla_decode(&args, stream), "flashmla_decode")) return 1;

  std::vector<uint16_t> out(kBatch * kSeqQ * kHeadsQ * kDimV);
  std::vector<float> lse(kBatch * kHeadsQ * kSeqQ);
  cudaMemcpyAsync(out.data(), out_dev.get(), out_dev.bytes(), cudaMemcpyDeviceToHost, stream);
  cudaMemcpyAsync(lse.data(), lse_dev.get(), lse_dev.bytes(), cudaMemcpyDeviceToHost, stream);
  if (cudaStreamSynchronize(stream) != cudaSuccess) {
    std::fprintf(stderr, "CUDA error: %s\n", cudaGetErrorString(cudaGetLastError()));
    return 1;
  }

  double worst = 0;
  for (int request = 0; request < kBatch; ++request) {
    for (int head = 0; head < kHeadsQ; ++head) {
      std::vector<double> expected;
      double expected_lse = 0;
      cpu_attention(q, cache, table, request, head, &expected, &expected_lse);
      for (int64_t d = 0; d < kDimV; ++d) {
        const double got = from_bf16(out[(request * kHeadsQ + head) * kDimV + d]);
        worst = std::max(worst, std::fabs(got - expected[d]) / (std::fabs(expected[d]) + 1e-2));
      }
      worst = std::max(worst, std::fabs(lse[request * kHeadsQ + head] - expected_lse));
    }
  }
  std::printf("flashmla decode: b=%lld h_q=%lld lengths %d,%d on %lld SM parts; out[0,0,0,:3] = "
              "%.4f %.4f %.4f, lse[0,0,0] = %.4f; worst error vs CPU %.2e\n",
              static_cast<long long>(kBatch), static_cast<long long>(kHeadsQ), kLengths[0],
              kLengths[1], static_cast<long long>(parts), from_bf16(out[0]), from_bf16(out[1]),
              from_bf16(out[2]), lse[0], worst);
  cudaStreamDestroy(stream);
  return worst < kTolerance ? 0 : 1;
}
