// Concurrency and determinism through the C API: host threads calling metadata + decode at the
// same time, each on its own stream, get bit for bit what serial calls get; error messages stay on
// the thread that caused them; and one problem gives the same bits on every stream, with the host
// or the device plan, with the caller's or the library's workspace, validating or not. Without a
// GPU every test skips. FLASHMLA_CONCURRENCY_ROUNDS overrides the rounds per thread.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "decode_harness.h"
#include "flashmla/flashmla.h"

namespace flashmla_test {
namespace {

constexpr int kThreads = 8;
constexpr int kDefaultRounds = 6;

int rounds() {
  const char* text = std::getenv("FLASHMLA_CONCURRENCY_ROUNDS");
  return text != nullptr && *text != '\0' ? std::max(1, std::atoi(text)) : kDefaultRounds;
}

// Releases all threads at once, so their calls overlap.
class StartLine {
 public:
  explicit StartLine(int parties) : waiting_(parties) {}
  void arrive_and_wait() {
    waiting_.fetch_sub(1);
    while (waiting_.load() > 0) std::this_thread::yield();
  }

 private:
  std::atomic<int> waiting_;
};

// Failures seen by worker threads, reported by the main thread.
class Failures {
 public:
  void add(const std::string& text) {
    std::lock_guard<std::mutex> lock(mutex_);
    texts_.push_back(text);
  }
  void report() const {
    for (const std::string& t : texts_) ADD_FAILURE() << t;
  }

 private:
  std::mutex mutex_;
  std::vector<std::string> texts_;
};

// Eight different jobs: shapes, dtypes, both backends, host or device plan, caller or library
// workspace, validating or not.
struct Job {
  ProblemSpec spec;
  RunOptions options;
};

std::vector<Job> make_jobs() {
  std::vector<Job> jobs;
  for (int t = 0; t < kThreads; ++t) {
    Job job;
    job.spec.seed = 100 + t;
    job.spec.dtype = t % 3 == 2 ? HalfType::kFloat16 : HalfType::kBFloat16;
    job.spec.s_q = 1 + t % 3;
    job.spec.h_kv = 1 + t % 2;
    job.spec.h_q = job.spec.h_kv * (t % 4 == 0 ? 64 : 16);
    job.spec.causal = t % 2 == 1;
    std::mt19937_64 rng(job.spec.seed);
    job.spec.lengths = random_lengths(rng, 2 + t % 5, 700, true);
    job.spec.lengths[0] = 1031;  // long enough to be split across parts
    job.options.backend = t % 2 == 0 ? FLASHMLA_BACKEND_AUTO : FLASHMLA_BACKEND_REFERENCE;
    job.options.validate = t % 4 == 3 ? 1 : 0;
    job.options.library_workspace = t % 3 == 1;
    job.options.host_metadata = t % 4 == 2;
    jobs.push_back(job);
  }
  return jobs;
}

// Runs `rounds` plan + decode passes of `problem` on a fresh stream, comparing each with `expected`.
void run_rounds(const DeviceProblem& problem, RunOptions options, const DecodeOutput& expected,
                int rounds, const std::string& who, StartLine* start, Failures* failures) {
  OwnStream stream;
  if (stream.get() == nullptr) {
    failures->add(who + ": cannot create a stream");
    if (start != nullptr) start->arrive_and_wait();
    return;
  }
  options.stream = stream.get();
  DecodeRunner runner(problem, options);
  if (start != nullptr) start->arrive_and_wait();
  for (int round = 0; round < rounds; ++round) {
    const std::string where = who + ", round " + std::to_string(round);
    const auto planned = runner.plan();
    if (!planned) {
      failures->add(where + ": " + planned.message());
      return;
    }
    if (runner.decode() != FLASHMLA_STATUS_SUCCESS) {
      failures->add(where + ": " + runner.last_message());
      return;
    }
    DecodeOutput output;
    const auto downloaded = runner.download(&output);
    const auto same = downloaded ? bitwise_equal(output, expected) : downloaded;
    if (!same) failures->add(where + ": " + same.message());
  }
}

class ConcurrencyGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_device_present()) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_F(ConcurrencyGpu, ThreadsOnTheirOwnStreamsMatchSerialCalls) {
  const std::vector<Job> jobs = make_jobs();
  std::vector<HostProblem> hosts;
  for (const Job& job : jobs) hosts.push_back(make_host_problem(job.spec));
  std::vector<std::unique_ptr<DeviceProblem>> problems;
  std::vector<DecodeOutput> serial(jobs.size());
  for (size_t t = 0; t < jobs.size(); ++t) {
    problems.push_back(std::make_unique<DeviceProblem>(hosts[t]));
    ASSERT_TRUE(problems[t]->ok());
    ASSERT_TRUE(run_decode(*problems[t], jobs[t].options, &serial[t])) << "job " << t;
    ASSERT_TRUE(matches_reference(hosts[t], serial[t])) << "job " << t;
  }

  Failures failures;
  StartLine start(kThreads);
  std::vector<std::thread> threads;
  const int n = rounds();
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      run_rounds(*problems[t], jobs[t].options, serial[t], n, "thread " + std::to_string(t), &start,
                 &failures);
    });
  }
  for (std::thread& thread : threads) thread.join();
  failures.report();
  EXPECT_TRUE(context_healthy());
}

// Every thread reads the same inputs (as the layers of a server share a cache) into its own
// outputs, with both backends at once.
TEST_F(ConcurrencyGpu, ThreadsSharingInputsMatchSerialCalls) {
  ProblemSpec spec;
  spec.seed = 200;
  spec.s_q = 2;
  spec.h_q = 128;
  spec.causal = true;
  std::mt19937_64 rng(spec.seed);
  spec.lengths = random_lengths(rng, 6, 2000, true);
  const HostProblem hp = make_host_problem(spec);
  const DeviceProblem problem(hp);
  ASSERT_TRUE(problem.ok());
  DecodeOutput serial[2];
  const flashmla_backend_t backends[2] = {FLASHMLA_BACKEND_REFERENCE, FLASHMLA_BACKEND_AUTO};
  for (int i = 0; i < 2; ++i) {
    RunOptions options;
    options.backend = backends[i];
    ASSERT_TRUE(run_decode(problem, options, &serial[i]));
    ASSERT_TRUE(matches_reference(hp, serial[i]));
  }

  Failures failures;
  StartLine start(kThreads);
  std::vector<std::thread> threads;
  const int n = rounds();
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      RunOptions options;
      options.backend = backends[t % 2];
      options.library_workspace = t % 4 < 2;
      run_rounds(problem, options, serial[t % 2], n, "thread " + std::to_string(t), &start, &failures);
    });
  }
  for (std::thread& thread : threads) thread.join();
  failures.report();
  EXPECT_TRUE(context_healthy());
}

// Threads failing validation in a loop, each with its own message, next to threads running
// valid calls: every thread reads back exactly its own last error.
TEST_F(ConcurrencyGpu, ErrorMessagesStayOnTheirThread) {
  ProblemSpec spec;
  spec.seed = 300;
  spec.lengths = {300, 20, 0, 140};
  const HostProblem hp = make_host_problem(spec);
  const DeviceProblem problem(hp);
  ASSERT_TRUE(problem.ok());
  DecodeOutput serial;
  ASSERT_TRUE(run_decode(problem, RunOptions{}, &serial));

  Failures failures;
  StartLine start(kThreads);
  std::vector<std::thread> threads;
  const int n = 10 * rounds();
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::string who = "thread " + std::to_string(t);
      if (t % 2 == 0) {
        run_rounds(problem, RunOptions{}, serial, n / 10, who, &start, &failures);
        return;
      }
      OwnStream stream;
      RunOptions options;
      options.stream = stream.get();
      DecodeRunner runner(problem, options);
      const auto planned = runner.plan();
      start.arrive_and_wait();
      if (!planned) {
        failures.add(who + ": " + planned.message());
        return;
      }
      // A head_dim_v unique to this thread makes its message unique too.
      runner.args().head_dim_v = 1000 + t;
      const std::string expected = "head_dim_v: must be 512, got " + std::to_string(1000 + t);
      for (int round = 0; round < n; ++round) {
        const flashmla_status_t status = flashmla_decode(&runner.args(), stream.get());
        const std::string message = flashmla_get_last_error();
        if (status != FLASHMLA_STATUS_INVALID_ARGUMENT || message != expected) {
          failures.add(who + ": got \"" + message + "\"");
          return;
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  failures.report();
  EXPECT_TRUE(context_healthy());
}

// One problem, many ways to run it: the same bits every time.
class DeterminismGpu : public ::testing::TestWithParam<flashmla_backend_t> {};

TEST_P(DeterminismGpu, SameBitsAcrossStreamsPlansWorkspacesAndValidation) {
  if (!cuda_device_present()) GTEST_SKIP() << "no CUDA device";
  ProblemSpec spec;
  spec.seed = 400;
  spec.s_q = 2;
  spec.h_q = 128;
  spec.causal = true;
  spec.junk_in_unused_entries = true;
  std::mt19937_64 rng(spec.seed);
  spec.lengths = random_lengths(rng, 5, 3000, true);
  spec.lengths[0] = 4096;
  const HostProblem hp = make_host_problem(spec);
  const DeviceProblem problem(hp);
  ASSERT_TRUE(problem.ok());
  OwnStream own;
  ASSERT_NE(own.get(), nullptr);

  struct Variant {
    const char* name;
    cudaStream_t stream;
    bool host_metadata, library_workspace;
    int32_t validate;
  };
  const Variant variants[] = {
      {"legacy stream, device plan", nullptr, false, false, 0},
      {"legacy stream, device plan, again", nullptr, false, false, 0},
      {"own stream, device plan", own.get(), false, false, 0},
      {"per-thread stream, host plan", cudaStreamPerThread, true, false, 0},
      {"own stream, host plan, library workspace", own.get(), true, true, 0},
      {"legacy stream, library workspace, validating", nullptr, false, true, 1},
      {"own stream, validating", own.get(), false, false, 1},
  };
  DecodeOutput first;
  for (const Variant& v : variants) {
    SCOPED_TRACE(v.name);
    RunOptions options;
    options.backend = GetParam();
    options.stream = v.stream;
    options.host_metadata = v.host_metadata;
    options.library_workspace = v.library_workspace;
    options.validate = v.validate;
    DecodeOutput output;
    ASSERT_TRUE(run_decode(problem, options, &output));
    if (&v == &variants[0]) {
      first = output;
      EXPECT_TRUE(matches_reference(hp, first));
    } else {
      EXPECT_TRUE(bitwise_equal(first, output));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, DeterminismGpu,
                         ::testing::Values(FLASHMLA_BACKEND_REFERENCE, FLASHMLA_BACKEND_AUTO),
                         [](const ::testing::TestParamInfo<flashmla_backend_t>& info) {
                           return std::string(info.param == FLASHMLA_BACKEND_REFERENCE ? "reference" : "auto");
                         });

}  // namespace
}  // namespace flashmla_test
