// flashmla_bench: times flashmla_decode on one shape or on a grid of shapes, the way
// library.md's "Benchmarks" method asks: clocks warmed first, L2 flushed before every timed run,
// CUDA events around CUDA-graph replays (so host overhead stays out), median of --iters runs.
//
// Plain C++ over the CUDA runtime API so it builds with the host compiler alone; the only
// device work it does itself is memset/memcpy.
//
// Cost model (mla-decode.md §2), with L = the mean of the drawn sequence lengths:
//   FLOPs = 2 * b * s_q * h_q * L * (576 + 512)
//   bytes = (b * h_kv * L * 576 + b * s_q * h_q * 576 + b * s_q * h_q * 512) * sizeof(element)
// i.e. the cache read once per KV head, plus q read and out written. Causal runs are charged the
// same FLOPs as non-causal ones (no discount for the masked triangle), as FlashMLA's own
// benchmark does, so the two sets of figures stay comparable.
//
// Variable lengths follow FlashMLA's benchmark: each request draws L ~ Normal(s_k, s_k / 2),
// rounded, clamped below at max(s_q, 1) (so every causal row sees a key) and, to bound memory,
// above at 3 * s_k (4 standard deviations: practically never hit). The draws are then shifted
// so that their mean is exactly s_k: times compare at equal work, whatever the seed. Draws
// depend only on --seed.

#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <flashmla/flashmla.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <numeric>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "l2_flush.h"
#include "launch_floor.h"
#ifdef FLASHMLA_PHASE_TRACE
#include "phase_trace_report.h"
#endif

namespace {

// ---- constants --------------------------------------------------------------------------------

constexpr int kHeadDim = FLASHMLA_HEAD_DIM;
constexpr int kHeadDimV = FLASHMLA_HEAD_DIM_V;
// randn / kDataScale, clamped to +-kDataClamp: the test-data convention of the project.
constexpr double kDataScale = 10.0;
constexpr double kDataClamp = 1.0;
// Lengths: std = mean / kVarlenStdDivisor, upper clamp kVarlenMaxFactor * mean.
constexpr double kVarlenStdDivisor = 2.0;
constexpr double kVarlenMaxFactor = 3.0;
// The L2 flush writes this many times the L2 size so nothing of the previous run survives.
constexpr int kL2FlushFactor = 2;
// Graph replays launched between host checks of the clock while warming up.
constexpr int kWarmupBatch = 16;
// Host staging slab for random data: bounds host memory whatever the cache size.
constexpr size_t kStagingElements = size_t{1} << 26;
// --check tolerances: two kernels both rounding to 16-bit output differ by ~1 ulp (rel L2 of a
// few 1e-3); lse is fp32 in both, differing only by summation order.
constexpr double kCheckOutRelL2Tol = 1e-2;
constexpr double kCheckLseAbsTol = 1e-3;
// NVML's clock type for the SM clock (nvml.h: NVML_CLOCK_SM).
constexpr int kNvmlClockSm = 1;
// NVML's clock-event reason bits (nvml.h: nvmlClocksEventReason*), the ones that lower the SM
// clock under load.
constexpr unsigned long long kNvmlReasonSwPowerCap = 0x4;
constexpr unsigned long long kNvmlReasonHwSlowdown = 0x8;
constexpr unsigned long long kNvmlReasonSwThermal = 0x20;
constexpr unsigned long long kNvmlReasonHwThermal = 0x40;
constexpr unsigned long long kNvmlReasonHwPowerBrake = 0x80;
constexpr double kMilliwattsPerWatt = 1000.0;

// ---- errors -----------------------------------------------------------------------------------

[[noreturn]] void fail(const std::string& message) { throw std::runtime_error(message); }

void cuda_check(cudaError_t err, const char* what, const char* file, int line) {
  if (err != cudaSuccess) {
    std::ostringstream os;
    os << file << ":" << line << ": " << what << " failed: " << cudaGetErrorName(err) << " ("
       << cudaGetErrorString(err) << ")";
    fail(os.str());
  }
}

void flashmla_check(flashmla_status_t status, const char* what, const char* file, int line) {
  if (status != FLASHMLA_STATUS_SUCCESS) {
    std::ostringstream os;
    os << file << ":" << line << ": " << what << " failed: " << flashmla_status_string(status)
       << ": " << flashmla_get_last_error();
    fail(os.str());
  }
}

#define CUDA_CHECK(expr) cuda_check((expr), #expr, __FILE__, __LINE__)
#define FLASHMLA_CHECK(expr) flashmla_check((expr), #expr, __FILE__, __LINE__)

// ---- options ----------------------------------------------------------------------------------

enum class ElemType { kBFloat16, kFloat16 };

struct Shape {
  std::string name = "custom";
  int64_t batch = 128;
  int64_t s_q = 1;
  int64_t h_q = 128;
  int64_t h_kv = 1;
  int64_t s_k = 4096;  // mean length when varlen
  bool varlen = true;
  bool causal = false;
  std::optional<double> flashmla_us;  // FlashMLA's time for this shape, from the grid file
};

struct Options {
  Shape shape;
  ElemType dtype = ElemType::kBFloat16;
  int64_t page_block_size = 64;
  flashmla_backend_t backend = FLASHMLA_BACKEND_AUTO;
  int iters = 30;
  double warmup_ms = 1000.0;
  std::string grid_file;
  std::string json_file;
  uint64_t seed = 0;
  bool check = false;
  int64_t sm_parts = 0;  // 0: flashmla_get_num_sm_parts
  flashmla_bench::FlushMode flush = flashmla_bench::FlushMode::kWrite;
  int trace_runs = 0;  // --trace: traced replays per row after the timed ones
  bool floor = false;  // --floor: time the near-empty graphs instead of decodes
  bool read_floor = false;  // --read-floor: time a plain read of each row's K-cache bytes instead
};

const char* kUsage = R"(usage: flashmla_bench [options]

Times flashmla_decode (CUDA-graph replays, L2 flushed before each, median of --iters).
Default shape: DeepSeek-V3 decode, b=128 s_q=1 h_q=128 h_kv=1 mean s_k=4096 varlen, bf16.

Shape:
  --batch N            requests (128)
  --s-q N              query tokens per request (1)
  --h-q N              query heads (128)
  --h-kv N             KV heads (1); also applies to every --grid row
  --s-k N              KV length; the mean length with --varlen (4096)
  --varlen/--no-varlen lengths ~ Normal(s_k, s_k/2) clamped to [max(s_q,1), 3 s_k], then
                         shifted so their mean is exactly s_k (on)
  --causal/--no-causal causal mask over the s_q query tokens (off)
  --dtype bf16|fp16    element type of q, cache and out (bf16)
  --page-block-size N  tokens per cache page, a multiple of 64 (64)
Run:
  --backend auto|reference|sm90   kernel to time (auto)
  --iters N            timed runs; the median is reported (30)
  --warmup-ms MS       milliseconds of decode replays before timing each row (1000)
  --flush write|read|none   how L2 is cleared before each timed run: memset a buffer of twice
                         the L2 size, leaving dirty lines that the timed run writes back (write,
                         the default), or read through one, leaving only clean lines; none (a
                         diagnostic, not the method) leaves L2 and the translation caches as the
                         previous replay left them
  --grid FILE          run every row of FILE instead of the single shape; one row per line:
                         case b s_q h_q s_k varlen causal flashmla_us   ('#' starts a comment;
                         varlen/causal: yes|no; flashmla_us: FlashMLA's time, or '-')
  --json FILE          write all rows as a JSON list
  --seed N             seed of the lengths, the block table and the data (0)
  --sm-parts N         parts of the split-KV plan instead of flashmla_get_num_sm_parts' choice
                         (0: the library's choice), to explore the split count
  --check              before timing, compare one run against --backend reference
                         (relative L2 of out, max abs of lse); a failure exits non-zero
  --floor              instead of decodes, time graphs of near-empty kernels in the decode's
                         launch shape by the same method (launch_floor.h): the floor under
                         every small decode
  --read-floor         instead of decodes, for each row time one plain read of as many bytes as
                         its K cache (b*h_kv*s_k*576*elem, contiguous) by the same method, and
                         the row's GB/s had the decode taken that long: how near the row is to
                         a plain stream of the bytes it cannot avoid
  --trace N            after timing, N more replays whose per-phase stamps are read and
                         summarised (a build configured with -DFLASHMLA_PHASE_TRACE=ON only)
  --help               this text

FLOPs = 2*b*s_q*h_q*L*(576+512) and bytes = (b*h_kv*L*576 + b*s_q*h_q*(576+512))*elem, with L the
mean drawn length; causal runs are charged full FLOPs (as FlashMLA's benchmark does).
)";

int64_t parse_int(const std::string& flag, const std::string& text, int64_t min_value) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno != 0 || v < min_value) {
    fail(flag + ": expected an integer >= " + std::to_string(min_value) + ", got '" + text + "'");
  }
  return v;
}

double parse_double(const std::string& flag, const std::string& text, double min_value) {
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || errno != 0 || !std::isfinite(v) || v < min_value) {
    fail(flag + ": expected a number >= " + std::to_string(min_value) + ", got '" + text + "'");
  }
  return v;
}

bool parse_bool(const std::string& where, const std::string& text) {
  if (text == "yes" || text == "1" || text == "true") return true;
  if (text == "no" || text == "0" || text == "false") return false;
  fail(where + ": expected yes|no, got '" + text + "'");
}

// Returns std::nullopt when --help was asked for.
std::optional<Options> parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    std::string value;
    bool has_inline_value = false;
    if (const size_t eq = flag.find('='); flag.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
      has_inline_value = true;
    }
    auto next = [&]() -> std::string {
      if (has_inline_value) return value;
      if (i + 1 >= argc) fail(flag + ": missing value");
      return argv[++i];
    };
    if (flag == "--help" || flag == "-h") return std::nullopt;
    if (flag == "--batch")
      o.shape.batch = parse_int(flag, next(), 1);
    else if (flag == "--s-q")
      o.shape.s_q = parse_int(flag, next(), 1);
    else if (flag == "--h-q")
      o.shape.h_q = parse_int(flag, next(), 1);
    else if (flag == "--h-kv")
      o.shape.h_kv = parse_int(flag, next(), 1);
    else if (flag == "--s-k")
      o.shape.s_k = parse_int(flag, next(), 0);
    else if (flag == "--varlen")
      o.shape.varlen = true;
    else if (flag == "--no-varlen")
      o.shape.varlen = false;
    else if (flag == "--causal")
      o.shape.causal = true;
    else if (flag == "--no-causal")
      o.shape.causal = false;
    else if (flag == "--page-block-size")
      o.page_block_size = parse_int(flag, next(), 1);
    else if (flag == "--iters")
      o.iters = static_cast<int>(parse_int(flag, next(), 1));
    else if (flag == "--warmup-ms")
      o.warmup_ms = parse_double(flag, next(), 0.0);
    else if (flag == "--grid")
      o.grid_file = next();
    else if (flag == "--json")
      o.json_file = next();
    else if (flag == "--seed")
      o.seed = static_cast<uint64_t>(parse_int(flag, next(), 0));
    else if (flag == "--check")
      o.check = true;
    else if (flag == "--sm-parts")
      o.sm_parts = parse_int(flag, next(), 0);
    else if (flag == "--dtype") {
      const std::string v = next();
      if (v == "bf16" || v == "bfloat16")
        o.dtype = ElemType::kBFloat16;
      else if (v == "fp16" || v == "float16")
        o.dtype = ElemType::kFloat16;
      else
        fail("--dtype: expected bf16|fp16, got '" + v + "'");
    } else if (flag == "--floor") {
      o.floor = true;
    } else if (flag == "--read-floor") {
      o.read_floor = true;
    } else if (flag == "--trace") {
      o.trace_runs = static_cast<int>(parse_int(flag, next(), 1));
#ifndef FLASHMLA_PHASE_TRACE
      fail("--trace: this flashmla_bench was built without -DFLASHMLA_PHASE_TRACE=ON");
#endif
    } else if (flag == "--flush") {
      const std::string v = next();
      if (v == "write")
        o.flush = flashmla_bench::FlushMode::kWrite;
      else if (v == "read")
        o.flush = flashmla_bench::FlushMode::kRead;
      else if (v == "none")
        o.flush = flashmla_bench::FlushMode::kNone;
      else
        fail("--flush: expected write|read|none, got '" + v + "'");
    } else if (flag == "--backend") {
      const std::string v = next();
      if (v == "auto")
        o.backend = FLASHMLA_BACKEND_AUTO;
      else if (v == "reference")
        o.backend = FLASHMLA_BACKEND_REFERENCE;
      else if (v == "sm90")
        o.backend = FLASHMLA_BACKEND_SM90;
      else
        fail("--backend: expected auto|reference|sm90, got '" + v + "'");
    } else {
      fail("unknown argument '" + std::string(argv[i]) + "' (see --help)");
    }
  }
  if (o.floor && o.read_floor) fail("--floor and --read-floor: each replaces the decodes; give one");
  return o;
}

std::vector<Shape> read_grid(const std::string& path, int64_t h_kv) {
  std::ifstream in(path);
  if (!in) fail("--grid: cannot open '" + path + "'");
  std::vector<Shape> rows;
  std::string line;
  for (int line_no = 1; std::getline(in, line); ++line_no) {
    if (const size_t hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::istringstream fields(line);
    std::vector<std::string> f{std::istream_iterator<std::string>(fields),
                               std::istream_iterator<std::string>()};
    if (f.empty()) continue;
    const std::string where = path + ":" + std::to_string(line_no);
    if (f.size() != 8) {
      fail(where + ": expected 8 fields (case b s_q h_q s_k varlen causal flashmla_us), got " +
           std::to_string(f.size()));
    }
    Shape s;
    s.name = f[0];
    s.batch = parse_int(where + " b", f[1], 1);
    s.s_q = parse_int(where + " s_q", f[2], 1);
    s.h_q = parse_int(where + " h_q", f[3], 1);
    s.h_kv = h_kv;
    s.s_k = parse_int(where + " s_k", f[4], 0);
    s.varlen = parse_bool(where + " varlen", f[5]);
    s.causal = parse_bool(where + " causal", f[6]);
    if (f[7] != "-") s.flashmla_us = parse_double(where + " flashmla_us", f[7], 0.0);
    rows.push_back(s);
  }
  if (rows.empty()) fail("--grid: '" + path + "' has no rows");
  return rows;
}

// ---- host data: counter-based RNG, 16-bit float conversion -------------------------------------

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

uint16_t float_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;  // NaN stays NaN
  x += 0x7FFFu + ((x >> 16) & 1u);                     // round to nearest even
  return static_cast<uint16_t>(x >> 16);
}

float bf16_to_float(uint16_t h) {
  const uint32_t x = uint32_t{h} << 16;
  float f;
  std::memcpy(&f, &x, sizeof f);
  return f;
}

uint16_t float_to_fp16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t abs_bits = x & 0x7FFFFFFFu;
  if (abs_bits > 0x7F800000u) return sign | 0x7E00;  // NaN
  const float a = std::fabs(f);
  constexpr float kMinNormalFp16 = 6.103515625e-05f;  // 2^-14
  if (a < kMinNormalFp16) {
    // Subnormal: a count of 2^-24 units, rounded to nearest even; 1024 units is the smallest
    // normal and encodes as such.
    return sign | static_cast<uint16_t>(std::nearbyint(a * 16777216.0f));
  }
  const int exponent = static_cast<int>(abs_bits >> 23) - 127 + 15;
  if (exponent > 30) return sign | 0x7C00;  // overflow (and inf)
  const uint32_t mantissa = abs_bits & 0x7FFFFFu;
  uint32_t h = (static_cast<uint32_t>(exponent) << 10) | (mantissa >> 13);
  const uint32_t rest = mantissa & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry may round up to inf: right
  return sign | static_cast<uint16_t>(h);
}

float fp16_to_float(uint16_t h) {
  const float sign = (h & 0x8000u) ? -1.0f : 1.0f;
  const int exponent = (h >> 10) & 0x1F;
  const int mantissa = h & 0x3FF;
  if (exponent == 0) return sign * std::ldexp(static_cast<float>(mantissa), -24);
  if (exponent == 31) {
    return mantissa ? std::numeric_limits<float>::quiet_NaN()
                    : sign * std::numeric_limits<float>::infinity();
  }
  return sign * std::ldexp(static_cast<float>(mantissa | 0x400), exponent - 25);
}

size_t elem_bytes(ElemType) { return 2; }

uint16_t to_elem(ElemType t, float f) {
  return t == ElemType::kBFloat16 ? float_to_bf16(f) : float_to_fp16(f);
}
float from_elem(ElemType t, uint16_t h) {
  return t == ElemType::kBFloat16 ? bf16_to_float(h) : fp16_to_float(h);
}

// Element i of a tensor with key `key` is a pure function of (key, i): randn/10 clamped to +-1
// by Box-Muller over a counter-based generator, so any split across threads gives the same data.
void fill_random(uint16_t* dst, size_t first, size_t count, uint64_t key, ElemType type) {
  constexpr double kTwoPi = 6.283185307179586;
  constexpr double kInv2Pow53 = 1.0 / 9007199254740992.0;
  for (size_t k = 0; k < count; ++k) {
    const size_t i = first + k;
    const uint64_t pair = i / 2;
    const uint64_t a = splitmix64(key ^ splitmix64(2 * pair));
    const uint64_t b = splitmix64(key ^ splitmix64(2 * pair + 1));
    const double u1 = static_cast<double>((a >> 11) + 1) * kInv2Pow53;  // (0, 1]
    const double u2 = static_cast<double>(b >> 11) * kInv2Pow53;        // [0, 1)
    const double r = std::sqrt(-2.0 * std::log(u1));
    const double z = (i % 2 == 0) ? r * std::cos(kTwoPi * u2) : r * std::sin(kTwoPi * u2);
    const double v = std::clamp(z / kDataScale, -kDataClamp, kDataClamp);
    dst[k] = to_elem(type, static_cast<float>(v));
  }
}

// Fills `count` device elements with fill_random's values, through a bounded host slab.
void upload_random(void* device_dst, size_t count, uint64_t key, ElemType type) {
  const unsigned num_threads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<uint16_t> staging(std::min(count, kStagingElements));
  for (size_t done = 0; done < count;) {
    const size_t n = std::min(count - done, staging.size());
    const size_t per_thread = (n + num_threads - 1) / num_threads;
    std::vector<std::thread> workers;
    for (unsigned t = 0; t < num_threads; ++t) {
      const size_t begin = std::min(n, t * per_thread);
      const size_t end = std::min(n, begin + per_thread);
      if (begin == end) break;
      workers.emplace_back(fill_random, staging.data() + begin, done + begin, end - begin, key,
                           type);
    }
    for (auto& w : workers) w.join();
    CUDA_CHECK(cudaMemcpy(static_cast<uint16_t*>(device_dst) + done, staging.data(),
                          n * sizeof(uint16_t), cudaMemcpyHostToDevice));
    done += n;
  }
}

// ---- device resources -------------------------------------------------------------------------

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    CUDA_CHECK(cudaMalloc(&ptr_, std::max<size_t>(bytes, 1)));
  }
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);  // nothing useful to do with an error while unwinding
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& other) noexcept { *this = std::move(other); }
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    std::swap(ptr_, other.ptr_);
    std::swap(bytes_, other.bytes_);
    return *this;
  }
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// A DLTensor over a device buffer; the shape lives here, so take the DLTensor with get() after
// any copy.
struct Tensor {
  std::array<int64_t, 4> shape{};
  DLTensor dl{};
  DLTensor* get() {
    dl.shape = shape.data();
    return &dl;
  }
};

Tensor make_tensor(void* data, int device, DLDataType dtype, std::initializer_list<int64_t> dims) {
  Tensor t;
  std::copy(dims.begin(), dims.end(), t.shape.begin());
  t.dl.data = data;
  t.dl.device = DLDevice{kDLCUDA, device};
  t.dl.ndim = static_cast<int32_t>(dims.size());
  t.dl.dtype = dtype;
  t.dl.strides = nullptr;
  t.dl.byte_offset = 0;
  return t;
}

DLDataType dl_dtype(ElemType t) {
  return t == ElemType::kBFloat16 ? DLDataType{kDLBfloat, 16, 1} : DLDataType{kDLFloat, 16, 1};
}
constexpr DLDataType kDLInt32{kDLInt, 32, 1};
constexpr DLDataType kDLFloat32{kDLFloat, 32, 1};

struct Stream {
  cudaStream_t s = nullptr;
  Stream() { CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)); }
  ~Stream() { cudaStreamDestroy(s); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
};

struct Event {
  cudaEvent_t e = nullptr;
  Event() { CUDA_CHECK(cudaEventCreate(&e)); }
  ~Event() {
    if (e) cudaEventDestroy(e);
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  Event(Event&& other) noexcept { std::swap(e, other.e); }
};

struct Graph {
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  Graph() = default;
  ~Graph() {
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
  }
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
};

// ---- device information -----------------------------------------------------------------------

// What limits the clocks while a row runs: board power against its enforced limit and the
// clock-event reasons, sampled with the row's replays in flight.
struct PowerSample {
  double watts = 0;
  double limit_watts = 0;
  unsigned long long reasons = 0;  // nvmlClocksEventReason bits
};

// The current SM clock and power state through NVML, loaded with dlopen so the binary has no link
// dependency on the driver's management library; every failure means "not available".
class Nvml {
 public:
  explicit Nvml(int cuda_device) {
    lib_ = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib_) return;
    using InitFn = int (*)();
    using HandleFn = int (*)(const char*, void**);
    auto init = reinterpret_cast<InitFn>(dlsym(lib_, "nvmlInit_v2"));
    auto by_pci = reinterpret_cast<HandleFn>(dlsym(lib_, "nvmlDeviceGetHandleByPciBusId_v2"));
    get_clock_ = reinterpret_cast<ClockFn>(dlsym(lib_, "nvmlDeviceGetClockInfo"));
    shutdown_ = reinterpret_cast<ShutdownFn>(dlsym(lib_, "nvmlShutdown"));
    get_power_ = reinterpret_cast<UintFn>(dlsym(lib_, "nvmlDeviceGetPowerUsage"));
    get_limit_ = reinterpret_cast<UintFn>(dlsym(lib_, "nvmlDeviceGetEnforcedPowerLimit"));
    get_reasons_ = reinterpret_cast<ReasonsFn>(dlsym(lib_, "nvmlDeviceGetCurrentClocksEventReasons"));
    // The same call under its name before CUDA 12.2's drivers.
    if (!get_reasons_) {
      get_reasons_ = reinterpret_cast<ReasonsFn>(dlsym(lib_, "nvmlDeviceGetCurrentClocksThrottleReasons"));
    }
    if (!init || !by_pci || !get_clock_ || !shutdown_ || init() != 0) {
      get_clock_ = nullptr;
      return;
    }
    initialised_ = true;
    // NVML numbers devices its own way; the PCI bus id names the same GPU in both APIs.
    char pci[32] = {};
    if (cudaDeviceGetPCIBusId(pci, sizeof pci, cuda_device) != cudaSuccess ||
        by_pci(pci, &device_) != 0) {
      device_ = nullptr;
    }
  }
  ~Nvml() {
    if (initialised_) shutdown_();
    if (lib_) dlclose(lib_);
  }
  Nvml(const Nvml&) = delete;
  Nvml& operator=(const Nvml&) = delete;

  std::optional<unsigned> sm_clock_mhz() const {
    unsigned mhz = 0;
    if (!get_clock_ || !device_ || get_clock_(device_, kNvmlClockSm, &mhz) != 0) {
      return std::nullopt;
    }
    return mhz;
  }

  std::optional<PowerSample> power() const {
    unsigned milliwatts = 0, limit_milliwatts = 0;
    PowerSample sample;
    if (!device_ || !get_power_ || !get_limit_ || !get_reasons_ || get_power_(device_, &milliwatts) != 0 ||
        get_limit_(device_, &limit_milliwatts) != 0 || get_reasons_(device_, &sample.reasons) != 0) {
      return std::nullopt;
    }
    sample.watts = milliwatts / kMilliwattsPerWatt;
    sample.limit_watts = limit_milliwatts / kMilliwattsPerWatt;
    return sample;
  }

 private:
  using ClockFn = int (*)(void*, int, unsigned*);
  using UintFn = int (*)(void*, unsigned*);
  using ReasonsFn = int (*)(void*, unsigned long long*);
  using ShutdownFn = int (*)();
  void* lib_ = nullptr;
  void* device_ = nullptr;
  bool initialised_ = false;
  ClockFn get_clock_ = nullptr;
  UintFn get_power_ = nullptr;
  UintFn get_limit_ = nullptr;
  ReasonsFn get_reasons_ = nullptr;
  ShutdownFn shutdown_ = nullptr;
};

struct DeviceInfo {
  int device = 0;
  std::string name;
  int major = 0, minor = 0;
  int sm_count = 0;
  int max_sm_clock_mhz = 0;
  size_t l2_bytes = 0;
  size_t memory_bytes = 0;
};

DeviceInfo query_device() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    fail(std::string("no CUDA device (cudaGetDeviceCount: ") +
         (err != cudaSuccess ? cudaGetErrorString(err) : "0 devices") + ")");
  }
  DeviceInfo d;
  CUDA_CHECK(cudaGetDevice(&d.device));
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, d.device));
  d.name = prop.name;
  d.major = prop.major;
  d.minor = prop.minor;
  d.sm_count = prop.multiProcessorCount;
  d.l2_bytes = static_cast<size_t>(prop.l2CacheSize);
  d.memory_bytes = prop.totalGlobalMem;
  int clock_khz = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, d.device));
  d.max_sm_clock_mhz = clock_khz / 1000;
  return d;
}

std::string clock_text(std::optional<unsigned> mhz) {
  return mhz ? std::to_string(*mhz) + " MHz" : std::string("n/a");
}

// The clock-lowering reasons of a sample, '+'-joined ("none" when the clock is not held down).
std::string reasons_text(unsigned long long reasons) {
  const std::pair<unsigned long long, const char*> names[] = {{kNvmlReasonSwPowerCap, "sw_power_cap"},
                                                              {kNvmlReasonHwSlowdown, "hw_slowdown"},
                                                              {kNvmlReasonSwThermal, "sw_thermal"},
                                                              {kNvmlReasonHwThermal, "hw_thermal"},
                                                              {kNvmlReasonHwPowerBrake, "hw_power_brake"}};
  std::string text;
  for (const auto& [bit, name] : names) {
    if (reasons & bit) text += (text.empty() ? "" : "+") + std::string(name);
  }
  return text.empty() ? "none" : text;
}

// ---- one benchmark row ------------------------------------------------------------------------

struct CheckResult {
  double out_rel_l2 = 0;
  double lse_max_abs = 0;
  bool ok = false;
};

struct RowResult {
  Shape shape;
  double mean_s_k = 0;  // mean of the drawn lengths: the L of the cost model
  int64_t num_sm_parts = 0;
  double median_us = 0;
  double min_us = 0;
  double tflops = 0;
  double gbps = 0;
  std::optional<unsigned> sm_clock_mhz;  // read right after the timed runs
  std::optional<PowerSample> power;      // sampled at the end of the warm-up, replays in flight
  std::optional<CheckResult> check;
  // The grid's FlashMLA figures were measured on an H100 SXM; on any other card a ratio to them
  // would compare two GPUs, so none is given.
  bool flashmla_comparable = false;
};

// NVML's name of the H100 SXM card; the PCIe and NVL cards ("H100 PCIe", "H100 NVL") have other
// memory and SM counts.
constexpr const char* kFlashmlaFiguresGpu = "H100 80GB HBM3";

// Shifts the lengths, within [lo, hi], until they sum to `target`: the sample mean of b draws
// wanders by s_k / (2 sqrt(b)) (4% at b = 128), which would bias every comparison of times at
// "the same" mean length.
void recentre(std::vector<int32_t>& lengths, int64_t target, int32_t lo, int32_t hi) {
  constexpr int kMaxPasses = 64;  // clamps rarely bind; a target outside [b lo, b hi] stops here
  int64_t sum = std::accumulate(lengths.begin(), lengths.end(), int64_t{0});
  const int64_t n = static_cast<int64_t>(lengths.size());
  for (int pass = 0; pass < kMaxPasses && sum != target; ++pass) {
    int64_t share = (target - sum) / n;
    if (share == 0) share = target > sum ? 1 : -1;
    for (auto& len : lengths) {
      const int64_t left = target - sum;
      if (left == 0) break;
      int64_t step = std::clamp<int64_t>(len + share, lo, hi) - len;
      if (std::llabs(step) > std::llabs(left)) step = left;
      len = static_cast<int32_t>(len + step);
      sum += step;
    }
  }
}

std::vector<int32_t> draw_lengths(const Shape& s, uint64_t seed) {
  std::vector<int32_t> lengths(static_cast<size_t>(s.batch), static_cast<int32_t>(s.s_k));
  if (!s.varlen) return lengths;
  std::mt19937_64 rng(splitmix64(seed ^ 0x6C656E67746873ULL));  // "lengths"
  const double mean = static_cast<double>(s.s_k);
  const double lo = static_cast<double>(std::max<int64_t>(s.s_q, 1));
  const double hi = std::max(lo, kVarlenMaxFactor * mean);
  constexpr double kTwoPi = 6.283185307179586;
  constexpr double kInv2Pow53 = 1.0 / 9007199254740992.0;
  for (auto& len : lengths) {
    // Box-Muller by hand: std::normal_distribution's sequence differs between standard libraries.
    const double u1 = static_cast<double>((rng() >> 11) + 1) * kInv2Pow53;
    const double u2 = static_cast<double>(rng() >> 11) * kInv2Pow53;
    const double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(kTwoPi * u2);
    len = static_cast<int32_t>(std::clamp(std::round(mean + z * mean / kVarlenStdDivisor), lo, hi));
  }
  recentre(lengths, s.batch * s.s_k, static_cast<int32_t>(lo), static_cast<int32_t>(hi));
  return lengths;
}

// Everything one shape needs on the device, plus the host copies the setup produced.
struct Problem {
  std::vector<int32_t> lengths;
  int64_t max_blocks = 0;
  int64_t num_blocks = 0;
  int64_t num_sm_parts = 0;
  DeviceBuffer q, k_cache, block_table, seqlens, metadata, num_splits, out, lse, workspace;
  Tensor tq, tk, tbt, tsl, tmeta, tsplits, tout, tlse;
};

void build_problem(Problem& p, const Shape& s, const Options& o, const DeviceInfo& dev,
                   cudaStream_t stream) {
  const int64_t page = o.page_block_size;
  const ElemType et = o.dtype;
  p.lengths = draw_lengths(s, o.seed);
  const int32_t max_len = *std::max_element(p.lengths.begin(), p.lengths.end());
  p.max_blocks = std::max<int64_t>(1, (max_len + page - 1) / page);

  // Only the pages that hold tokens exist; their physical order is a random permutation so the
  // kernel reads a scattered cache, as a serving engine's allocator leaves it.
  std::vector<int64_t> blocks_of(p.lengths.size());
  for (size_t i = 0; i < p.lengths.size(); ++i) blocks_of[i] = (p.lengths[i] + page - 1) / page;
  p.num_blocks =
      std::max<int64_t>(1, std::accumulate(blocks_of.begin(), blocks_of.end(), int64_t{0}));
  std::vector<int32_t> physical(static_cast<size_t>(p.num_blocks));
  std::iota(physical.begin(), physical.end(), 0);
  std::mt19937_64 rng(splitmix64(o.seed ^ 0x626C6F636B73ULL));  // "blocks"
  std::shuffle(physical.begin(), physical.end(), rng);
  // Unused table entries point at block 0: a valid page, never read into a result.
  std::vector<int32_t> table(static_cast<size_t>(s.batch * p.max_blocks), 0);
  size_t next = 0;
  for (size_t i = 0; i < p.lengths.size(); ++i) {
    for (int64_t j = 0; j < blocks_of[i]; ++j) {
      table[i * static_cast<size_t>(p.max_blocks) + static_cast<size_t>(j)] = physical[next++];
    }
  }

  const size_t eb = elem_bytes(et);
  const size_t q_elems = static_cast<size_t>(s.batch * s.s_q * s.h_q * kHeadDim);
  const size_t token_elems = static_cast<size_t>(s.h_kv * kHeadDim);
  const size_t block_elems = static_cast<size_t>(page) * token_elems;
  const size_t k_elems = static_cast<size_t>(p.num_blocks) * block_elems;
  const size_t out_elems = static_cast<size_t>(s.batch * s.s_q * s.h_q * kHeadDimV);
  const size_t lse_elems = static_cast<size_t>(s.batch * s.h_q * s.s_q);

  p.q = DeviceBuffer(q_elems * eb);
  p.k_cache = DeviceBuffer(k_elems * eb);
  p.block_table = DeviceBuffer(table.size() * sizeof(int32_t));
  p.seqlens = DeviceBuffer(p.lengths.size() * sizeof(int32_t));
  p.out = DeviceBuffer(out_elems * eb);
  p.lse = DeviceBuffer(lse_elems * sizeof(float));

  const uint64_t data_key = splitmix64(o.seed);
  upload_random(p.q.get(), q_elems, splitmix64(data_key ^ 1), et);
  upload_random(p.k_cache.get(), k_elems, splitmix64(data_key ^ 2), et);
  // The tail of each request's last page is poisoned with NaN (0xFFFF is NaN in bf16 and fp16):
  // a kernel that lets those tokens into a result fails --check instead of timing garbage.
  for (size_t i = 0; i < p.lengths.size(); ++i) {
    const int64_t used = p.lengths[i] % page;
    if (used == 0 || blocks_of[i] == 0) continue;
    const int32_t last =
        table[i * static_cast<size_t>(p.max_blocks) + static_cast<size_t>(blocks_of[i] - 1)];
    uint8_t* base =
        static_cast<uint8_t*>(p.k_cache.get()) +
        (static_cast<size_t>(last) * block_elems + static_cast<size_t>(used) * token_elems) * eb;
    CUDA_CHECK(cudaMemset(base, 0xFF, static_cast<size_t>(page - used) * token_elems * eb));
  }
  CUDA_CHECK(cudaMemcpy(p.block_table.get(), table.data(), table.size() * sizeof(int32_t),
                        cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(p.seqlens.get(), p.lengths.data(), p.lengths.size() * sizeof(int32_t),
                        cudaMemcpyHostToDevice));

  const DLDataType dt = dl_dtype(et);
  const int d = dev.device;
  p.tq = make_tensor(p.q.get(), d, dt, {s.batch, s.s_q, s.h_q, kHeadDim});
  p.tk = make_tensor(p.k_cache.get(), d, dt, {p.num_blocks, page, s.h_kv, kHeadDim});
  p.tbt = make_tensor(p.block_table.get(), d, kDLInt32, {s.batch, p.max_blocks});
  p.tsl = make_tensor(p.seqlens.get(), d, kDLInt32, {s.batch});
  p.tout = make_tensor(p.out.get(), d, dt, {s.batch, s.s_q, s.h_q, kHeadDimV});
  p.tlse = make_tensor(p.lse.get(), d, kDLFloat32, {s.batch, s.h_q, s.s_q});

  // The plan: computed once, outside everything timed (one plan serves every layer of a step).
  const int64_t rows_per_kv_head = s.h_kv > 0 ? s.s_q * s.h_q / s.h_kv : 0;
  FLASHMLA_CHECK(flashmla_get_num_sm_parts(d, rows_per_kv_head, s.h_kv, &p.num_sm_parts));
  if (o.sm_parts > 0) p.num_sm_parts = o.sm_parts;
  p.metadata =
      DeviceBuffer(static_cast<size_t>(p.num_sm_parts) * FLASHMLA_METADATA_WORDS * sizeof(int32_t));
  p.num_splits = DeviceBuffer(static_cast<size_t>(s.batch + 1) * sizeof(int32_t));
  p.tmeta = make_tensor(p.metadata.get(), d, kDLInt32, {p.num_sm_parts, FLASHMLA_METADATA_WORDS});
  p.tsplits = make_tensor(p.num_splits.get(), d, kDLInt32, {s.batch + 1});
  FLASHMLA_CHECK(flashmla_get_metadata(p.tsl.get(), p.tmeta.get(), p.tsplits.get(), stream));

  size_t workspace_bytes = 0;
  FLASHMLA_CHECK(
      flashmla_decode_workspace_size(s.batch, s.s_q, s.h_q, p.num_sm_parts, &workspace_bytes));
  p.workspace = DeviceBuffer(workspace_bytes);
  CUDA_CHECK(cudaStreamSynchronize(stream));
}

flashmla_decode_args decode_args(Problem& p, const Shape& s, flashmla_backend_t backend) {
  flashmla_decode_args a;
  flashmla_decode_args_init(&a);
  a.q = p.tq.get();
  a.k_cache = p.tk.get();
  a.block_table = p.tbt.get();
  a.cache_seqlens = p.tsl.get();
  a.tile_scheduler_metadata = p.tmeta.get();
  a.num_splits = p.tsplits.get();
  a.out = p.tout.get();
  a.lse = p.tlse.get();
  a.head_dim_v = kHeadDimV;
  a.causal = s.causal ? 1 : 0;
  a.workspace = p.workspace.get();
  a.workspace_size = p.workspace.bytes();
  a.backend = backend;
  return a;
}

// Runs one decode with `backend` into poisoned outputs and copies them back.
void run_once(Problem& p, const Shape& s, flashmla_backend_t backend, cudaStream_t stream,
              std::vector<uint16_t>& out, std::vector<float>& lse) {
  CUDA_CHECK(cudaMemsetAsync(p.out.get(), 0xFF, p.out.bytes(), stream));
  CUDA_CHECK(cudaMemsetAsync(p.lse.get(), 0xFF, p.lse.bytes(), stream));
  const flashmla_decode_args a = decode_args(p, s, backend);
  FLASHMLA_CHECK(flashmla_decode(&a, stream));
  out.resize(p.out.bytes() / sizeof(uint16_t));
  lse.resize(p.lse.bytes() / sizeof(float));
  CUDA_CHECK(
      cudaMemcpyAsync(out.data(), p.out.get(), p.out.bytes(), cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(
      cudaMemcpyAsync(lse.data(), p.lse.get(), p.lse.bytes(), cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
}

CheckResult check_against_reference(Problem& p, const Shape& s, const Options& o,
                                    cudaStream_t stream) {
  std::vector<uint16_t> out, ref_out;
  std::vector<float> lse, ref_lse;
  run_once(p, s, o.backend, stream, out, lse);
  run_once(p, s, FLASHMLA_BACKEND_REFERENCE, stream, ref_out, ref_lse);
  CheckResult r;
  double diff2 = 0, ref2 = 0;
  bool finite = true;
  for (size_t i = 0; i < out.size(); ++i) {
    const double a = from_elem(o.dtype, out[i]);
    const double b = from_elem(o.dtype, ref_out[i]);
    finite = finite && std::isfinite(a) && std::isfinite(b);
    diff2 += (a - b) * (a - b);
    ref2 += b * b;
  }
  r.out_rel_l2 = finite ? std::sqrt(diff2 / std::max(ref2, std::numeric_limits<double>::min()))
                        : std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < lse.size(); ++i) {
    const double a = lse[i], b = ref_lse[i];
    // +inf marks "no key": equal infinities agree; anything else non-finite is a failure.
    const double e = (a == b) ? 0.0 : std::fabs(a - b);
    r.lse_max_abs =
        std::isnan(e) ? std::numeric_limits<double>::infinity() : std::max(r.lse_max_abs, e);
  }
  r.ok = r.out_rel_l2 <= kCheckOutRelL2Tol && r.lse_max_abs <= kCheckLseAbsTol;
  return r;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Replays one captured graph by the method of the tables: clocks warmed with the graph itself,
// then timed runs, each an L2 flush followed by the replay between two events.
class Replayer {
 public:
  Replayer(const Graph& g, const Options& o, const DeviceBuffer& flush, cudaStream_t stream)
      : g_(g), o_(o), flush_(flush), stream_(stream) {}

  // Back-to-back replays for --warmup-ms, then one more batch during which `sample` runs (the
  // power state of the steady work).
  template <typename Sample>
  void warm_up(Sample&& sample) {
    const auto warm_start = std::chrono::steady_clock::now();
    do {
      launch_batch();
      CUDA_CHECK(cudaStreamSynchronize(stream_));
    } while (std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - warm_start).count() <
             o_.warmup_ms);
    launch_batch();
    sample();
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  // --iters timed runs, enqueued back to back; their event times in µs.
  std::vector<double> timed_runs() {
    std::vector<Event> starts(static_cast<size_t>(o_.iters));
    std::vector<Event> stops(static_cast<size_t>(o_.iters));
    for (size_t i = 0; i < starts.size(); ++i) enqueue_run(starts[i], stops[i]);
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    std::vector<double> us(starts.size());
    for (size_t i = 0; i < us.size(); ++i) us[i] = elapsed_us(starts[i], stops[i]);
    return us;
  }

  // One timed run, waited for; its event time in µs.
  double one_run() {
    const Event start, stop;
    enqueue_run(start, stop);
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    return elapsed_us(start, stop);
  }

 private:
  void launch_batch() {
    for (int i = 0; i < kWarmupBatch; ++i) CUDA_CHECK(cudaGraphLaunch(g_.exec, stream_));
  }

  void enqueue_run(const Event& start, const Event& stop) {
    if (o_.flush == flashmla_bench::FlushMode::kWrite) {
      // A different byte each time so no run finds the flush buffer's lines already in L2 state.
      CUDA_CHECK(cudaMemsetAsync(flush_.get(), runs_ & 0xFF, flush_.bytes(), stream_));
    } else if (o_.flush == flashmla_bench::FlushMode::kRead) {
      CUDA_CHECK(flashmla_bench::read_through(flush_.get(), flush_.bytes(), static_cast<uint32_t*>(sink_.get()),
                                                stream_));
    }
    ++runs_;
    CUDA_CHECK(cudaEventRecord(start.e, stream_));
    CUDA_CHECK(cudaGraphLaunch(g_.exec, stream_));
    CUDA_CHECK(cudaEventRecord(stop.e, stream_));
  }

  static double elapsed_us(const Event& start, const Event& stop) {
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start.e, stop.e));
    return 1000.0 * static_cast<double>(ms);
  }

  const Graph& g_;
  const Options& o_;
  const DeviceBuffer& flush_;
  cudaStream_t stream_;
  const DeviceBuffer sink_{sizeof(uint32_t)};
  int runs_ = 0;
};

// The bytes a row moves at least (the formula of the header comment), with L its mean length.
double row_bytes(const Shape& s, double L, ElemType dtype) {
  const double b = static_cast<double>(s.batch), sq = static_cast<double>(s.s_q);
  const double hq = static_cast<double>(s.h_q), hkv = static_cast<double>(s.h_kv);
  return (b * hkv * L * kHeadDim + b * sq * hq * (kHeadDim + kHeadDimV)) *
         static_cast<double>(elem_bytes(dtype));
}

RowResult run_row(const Shape& s, const Options& o, const DeviceInfo& dev, const Nvml& nvml,
                  const DeviceBuffer& flush) {
  Stream stream;
  Problem p;
  build_problem(p, s, o, dev, stream.s);

  RowResult r;
  r.shape = s;
  r.flashmla_comparable = dev.name.find(kFlashmlaFiguresGpu) != std::string::npos;
  r.num_sm_parts = p.num_sm_parts;
  r.mean_s_k = std::accumulate(p.lengths.begin(), p.lengths.end(), 0.0) /
               static_cast<double>(p.lengths.size());

  if (o.check) r.check = check_against_reference(p, s, o, stream.s);

  // Capture just the decode: metadata and workspace are already in place.
  Graph g;
  const flashmla_decode_args a = decode_args(p, s, o.backend);
  CUDA_CHECK(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeGlobal));
  const flashmla_status_t st = flashmla_decode(&a, stream.s);
  const cudaError_t end_err = cudaStreamEndCapture(stream.s, &g.graph);
  flashmla_check(st, "flashmla_decode (under CUDA-graph capture)", __FILE__, __LINE__);
  cuda_check(end_err, "cudaStreamEndCapture", __FILE__, __LINE__);
  CUDA_CHECK(cudaGraphInstantiate(&g.exec, g.graph, 0));

  Replayer replayer(g, o, flush, stream.s);
  replayer.warm_up([&] { r.power = nvml.power(); });
  const std::vector<double> us = replayer.timed_runs();
  r.sm_clock_mhz = nvml.sm_clock_mhz();
  r.median_us = median(us);
  r.min_us = *std::min_element(us.begin(), us.end());

#ifdef FLASHMLA_PHASE_TRACE
  if (o.trace_runs > 0) flashmla_bench::report_phase_trace(o.trace_runs, [&] { return replayer.one_run(); });
#endif

  const double L = r.mean_s_k;
  const double b = static_cast<double>(s.batch), sq = static_cast<double>(s.s_q);
  const double hq = static_cast<double>(s.h_q);
  const double flops = 2.0 * b * sq * hq * L * (kHeadDim + kHeadDimV);
  r.tflops = flops / (r.median_us * 1e-6) / 1e12;
  r.gbps = row_bytes(s, L, o.dtype) / (r.median_us * 1e-6) / 1e9;
  return r;
}

// ---- output -----------------------------------------------------------------------------------

const char* backend_name(flashmla_backend_t b) {
  switch (b) {
    case FLASHMLA_BACKEND_REFERENCE:
      return "reference";
    case FLASHMLA_BACKEND_SM90:
      return "sm90";
    default:
      return "auto";
  }
}

const char* flush_name(flashmla_bench::FlushMode m) {
  switch (m) {
    case flashmla_bench::FlushMode::kRead:
      return "read";
    case flashmla_bench::FlushMode::kNone:
      return "none";
    default:
      return "write";
  }
}

const char* dtype_name(ElemType t) { return t == ElemType::kBFloat16 ? "bf16" : "fp16"; }
const char* yes_no(bool v) { return v ? "yes" : "no"; }

void print_header() {
  std::printf("%-8s %5s %4s %4s %4s %7s %6s %6s | %10s %10s %8s %8s | %11s %6s | %s\n", "case", "b",
              "s_q", "h_q", "h_kv", "s_k", "varlen", "causal", "median_us", "min_us", "TFLOP/s",
              "GB/s", "FlashMLA_us", "ratio", "notes");
}

void print_row(const RowResult& r) {
  const Shape& s = r.shape;
  std::string flashmla = "-", ratio = "-";
  if (s.flashmla_us) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f", *s.flashmla_us);
    flashmla = buf;
    if (r.flashmla_comparable) {
      std::snprintf(buf, sizeof buf, "%.2f", *s.flashmla_us / r.median_us);
      ratio = buf;
    }
  }
  std::string notes = "L_mean=" + std::to_string(static_cast<long long>(std::llround(r.mean_s_k))) +
                      " sm_parts=" + std::to_string(r.num_sm_parts) +
                      " clock=" + clock_text(r.sm_clock_mhz);
  if (r.power) {
    char buf[96];
    std::snprintf(buf, sizeof buf, " power=%.0f/%.0fW limits=%s", r.power->watts, r.power->limit_watts,
                  reasons_text(r.power->reasons).c_str());
    notes += buf;
  }
  if (r.check) {
    char buf[96];
    std::snprintf(buf, sizeof buf, " check: out_rel_l2=%.2e lse_max_abs=%.2e %s",
                  r.check->out_rel_l2, r.check->lse_max_abs, r.check->ok ? "ok" : "FAILED");
    notes += buf;
  }
  std::printf(
      "%-8s %5lld %4lld %4lld %4lld %7lld %6s %6s | %10.1f %10.1f %8.1f %8.1f | %11s %6s | %s\n",
      s.name.c_str(), static_cast<long long>(s.batch), static_cast<long long>(s.s_q),
      static_cast<long long>(s.h_q), static_cast<long long>(s.h_kv), static_cast<long long>(s.s_k),
      yes_no(s.varlen), yes_no(s.causal), r.median_us, r.min_us, r.tflops, r.gbps, flashmla.c_str(),
      ratio.c_str(), notes.c_str());
  std::fflush(stdout);
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

void write_json(const std::string& path, const std::vector<RowResult>& rows, const Options& o,
                const DeviceInfo& dev) {
  std::ofstream out(path);
  if (!out) fail("--json: cannot write '" + path + "'");
  int lib_major = 0, lib_minor = 0, lib_patch = 0;
  flashmla_get_version(&lib_major, &lib_minor, &lib_patch);
  out << "[\n";
  for (size_t i = 0; i < rows.size(); ++i) {
    const RowResult& r = rows[i];
    const Shape& s = r.shape;
    out << "  {\"case\": " << json_string(s.name) << ", \"b\": " << s.batch
        << ", \"s_q\": " << s.s_q << ", \"h_q\": " << s.h_q << ", \"h_kv\": " << s.h_kv
        << ", \"s_k\": " << s.s_k << ", \"s_k_mean_drawn\": " << json_number(r.mean_s_k)
        << ", \"varlen\": " << (s.varlen ? "true" : "false")
        << ", \"causal\": " << (s.causal ? "true" : "false")
        << ", \"dtype\": " << json_string(dtype_name(o.dtype))
        << ", \"page_block_size\": " << o.page_block_size
        << ", \"backend\": " << json_string(backend_name(o.backend))
        << ", \"num_sm_parts\": " << r.num_sm_parts << ", \"iters\": " << o.iters
        << ", \"flush\": " << json_string(flush_name(o.flush))
        << ", \"median_us\": " << json_number(r.median_us)
        << ", \"min_us\": " << json_number(r.min_us) << ", \"tflops\": " << json_number(r.tflops)
        << ", \"gbps\": " << json_number(r.gbps)
        << ", \"flashmla_us\": " << (s.flashmla_us ? json_number(*s.flashmla_us) : "null")
        << ", \"ratio_flashmla_over_ours\": "
        << (s.flashmla_us && r.flashmla_comparable ? json_number(*s.flashmla_us / r.median_us) : "null")
        << ", \"sm_clock_mhz\": "
        << (r.sm_clock_mhz ? std::to_string(*r.sm_clock_mhz) : std::string("null"));
    if (r.power) {
      out << ", \"power_w\": " << json_number(r.power->watts)
          << ", \"power_limit_w\": " << json_number(r.power->limit_watts)
          << ", \"clock_limits\": " << json_string(reasons_text(r.power->reasons));
    } else {
      out << ", \"power_w\": null, \"power_limit_w\": null, \"clock_limits\": null";
    }
    if (r.check) {
      out << ", \"check\": {\"out_rel_l2\": " << json_number(r.check->out_rel_l2)
          << ", \"lse_max_abs\": " << json_number(r.check->lse_max_abs)
          << ", \"ok\": " << (r.check->ok ? "true" : "false") << "}";
    } else {
      out << ", \"check\": null";
    }
    out << ", \"device\": " << json_string(dev.name) << ", \"sm_count\": " << dev.sm_count
        << ", \"max_sm_clock_mhz\": " << dev.max_sm_clock_mhz << ", \"flashmla_version\": \""
        << lib_major << "." << lib_minor << "." << lib_patch << "\"}"
        << (i + 1 < rows.size() ? ",\n" : "\n");
  }
  out << "]\n";
  if (!out) fail("--json: error writing '" + path + "'");
}

// Captures what `enqueue` puts on `stream` (a cudaError_t; `what` names it in a failure) into a
// graph and times its replays like a decode row's: the floors' common step.
template <typename Enqueue>
std::vector<double> time_captured(const Options& o, const DeviceBuffer& flush, cudaStream_t stream,
                                  const char* what, Enqueue&& enqueue) {
  Graph g;
  CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  const cudaError_t err = enqueue(stream);
  const cudaError_t end_err = cudaStreamEndCapture(stream, &g.graph);
  cuda_check(err, (std::string(what) + " (under CUDA-graph capture)").c_str(), __FILE__, __LINE__);
  cuda_check(end_err, "cudaStreamEndCapture", __FILE__, __LINE__);
  CUDA_CHECK(cudaGraphInstantiate(&g.exec, g.graph, 0));
  Replayer replayer(g, o, flush, stream);
  replayer.warm_up([] {});
  return replayer.timed_runs();
}

// --floor: each case of launch_floor.h captured and timed like a decode row.
void run_floor(const Options& o, const DeviceInfo& dev, const DeviceBuffer& flush) {
  Stream stream;
  const DeviceBuffer chain(flashmla_bench::floor_chain_words() * sizeof(uint32_t));
  const DeviceBuffer sink(static_cast<size_t>(dev.sm_count) * sizeof(uint32_t));
  CUDA_CHECK(flashmla_bench::fill_floor_chain(static_cast<uint32_t*>(chain.get()), stream.s));
  CUDA_CHECK(cudaStreamSynchronize(stream.s));
  std::printf("%-8s %-24s | %10s %10s\n", "case", "graph", "median_us", "min_us");
  for (int c = 0; c < static_cast<int>(flashmla_bench::FloorCase::kCount); ++c) {
    const auto floor_case = static_cast<flashmla_bench::FloorCase>(c);
    const std::vector<double> us = time_captured(o, flush, stream.s, "enqueue_floor_case", [&](cudaStream_t st) {
      return flashmla_bench::enqueue_floor_case(floor_case, dev.sm_count, static_cast<const uint32_t*>(chain.get()),
                                                static_cast<uint32_t*>(sink.get()), st);
    });
    std::printf("%-8s %-24s | %10.2f %10.2f\n", "floor", flashmla_bench::floor_case_name(floor_case), median(us),
                *std::min_element(us.begin(), us.end()));
    std::fflush(stdout);
  }
}

// --read-floor: per row, l2_flush.h's plain read over as many bytes as the row's K cache, captured
// and timed like a decode. The decode must read those bytes too, under the same flush; a plain
// stream is not proven the fastest way to read them, so this is a yardstick, not a bound.
void run_read_floor(const Options& o, const std::vector<Shape>& shapes, const DeviceBuffer& flush) {
  const auto cache_bytes = [&](const Shape& s) {
    return static_cast<size_t>(s.batch * s.h_kv * s.s_k * kHeadDim) * elem_bytes(o.dtype);
  };
  size_t largest = 0;
  for (const Shape& s : shapes) largest = std::max(largest, cache_bytes(s));
  Stream stream;
  const DeviceBuffer cache(largest);
  const DeviceBuffer sink(sizeof(uint32_t));
  // Nonzero bytes, so the reads are of data and not of a freshly zeroed allocation.
  constexpr int kCacheFill = 0x3c;
  CUDA_CHECK(cudaMemsetAsync(cache.get(), kCacheFill, largest, stream.s));
  CUDA_CHECK(cudaStreamSynchronize(stream.s));
  std::printf("%-10s %4s %4s %4s %4s %7s | %9s %10s %10s %9s | %s\n", "case", "b", "s_q", "h_q", "h_kv",
              "s_k", "read_MB", "median_us", "min_us", "read_GB/s", "row GB/s at the read's median");
  for (const Shape& s : shapes) {
    const size_t bytes = cache_bytes(s);
    const std::vector<double> us = time_captured(o, flush, stream.s, "read_through", [&](cudaStream_t st) {
      return flashmla_bench::read_through(cache.get(), bytes, static_cast<uint32_t*>(sink.get()), st);
    });
    const double med = median(us);
    std::printf("%-10s %4lld %4lld %4lld %4lld %7lld | %9.1f %10.1f %10.1f %9.1f | %.1f\n", s.name.c_str(),
                static_cast<long long>(s.batch), static_cast<long long>(s.s_q), static_cast<long long>(s.h_q),
                static_cast<long long>(s.h_kv), static_cast<long long>(s.s_k), static_cast<double>(bytes) / 1e6,
                med, *std::min_element(us.begin(), us.end()), static_cast<double>(bytes) / (med * 1e-6) / 1e9,
                row_bytes(s, static_cast<double>(s.s_k), o.dtype) / (med * 1e-6) / 1e9);
    std::fflush(stdout);
  }
}

int run(int argc, char** argv) {
  const std::optional<Options> parsed = parse_args(argc, argv);
  if (!parsed) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  const Options& o = *parsed;
  const std::vector<Shape> shapes =
      o.grid_file.empty() ? std::vector<Shape>{o.shape} : read_grid(o.grid_file, o.shape.h_kv);

  const DeviceInfo dev = query_device();
  const Nvml nvml(dev.device);
  int lib_major = 0, lib_minor = 0, lib_patch = 0;
  flashmla_get_version(&lib_major, &lib_minor, &lib_patch);
  std::printf(
      "flashmla %d.%d.%d | %s (sm_%d%d), %d SMs, L2 %.0f MiB, %.0f GiB | SM clock max "
      "%d MHz, now %s\n",
      lib_major, lib_minor, lib_patch, dev.name.c_str(), dev.major, dev.minor, dev.sm_count,
      static_cast<double>(dev.l2_bytes) / (1 << 20),
      static_cast<double>(dev.memory_bytes) / (1 << 30), dev.max_sm_clock_mhz,
      clock_text(nvml.sm_clock_mhz()).c_str());
  const std::string flushed = o.flush == flashmla_bench::FlushMode::kNone ? std::string("L2 not flushed")
                                                        : std::string("L2 flushed (") + flush_name(o.flush) + ") before each";
  std::printf("dtype %s, page %lld, backend %s, median of %d CUDA-graph replays, %s, %.0f ms warm-up per row\n",
              dtype_name(o.dtype), static_cast<long long>(o.page_block_size), backend_name(o.backend), o.iters,
              flushed.c_str(), o.warmup_ms);
  if (dev.name.find(kFlashmlaFiguresGpu) == std::string::npos) {
    std::printf("FlashMLA's figures are %s (H100 SXM) times: no ratio to them on this GPU\n", kFlashmlaFiguresGpu);
  }
  const DeviceBuffer flush(static_cast<size_t>(kL2FlushFactor) * std::max<size_t>(dev.l2_bytes, 1));
  if (o.floor) {
    run_floor(o, dev, flush);
    return 0;
  }
  if (o.read_floor) {
    run_read_floor(o, shapes, flush);
    return 0;
  }
  print_header();
  std::vector<RowResult> results;
  bool all_checks_ok = true;
  for (const Shape& s : shapes) {
    results.push_back(run_row(s, o, dev, nvml, flush));
    print_row(results.back());
    if (results.back().check && !results.back().check->ok) all_checks_ok = false;
    // Write after every row so a later failure still leaves the rows measured so far.
    if (!o.json_file.empty()) write_json(o.json_file, results, o, dev);
  }
  if (!all_checks_ok) {
    std::fprintf(stderr,
                 "flashmla_bench: --check failed on at least one row (tolerances: out "
                 "rel L2 %.0e, lse abs %.0e)\n",
                 kCheckOutRelL2Tol, kCheckLseAbsTol);
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "flashmla_bench: %s\n", e.what());
    return 1;
  }
}
