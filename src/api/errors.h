// Status + thread-local message: how every public function reports failure.
#pragma once

#include <string>

#include "flashmla/flashmla.h"

namespace flashmla {

// Records `message` as this thread's last error and returns `status`.
flashmla_status_t fail(flashmla_status_t status, std::string message);

inline flashmla_status_t invalid_argument(std::string message) {
  return fail(FLASHMLA_STATUS_INVALID_ARGUMENT, std::move(message));
}

// Clears the last error and returns success.
flashmla_status_t succeed();

// Maps a CUDA error from `what` ("reference decode kernel launch") to a status + message.
flashmla_status_t cuda_failure(cudaError_t error, const char* what);

// Runs a public entry point's body, turning escaped C++ exceptions (e.g. std::bad_alloc) into a
// status so that none crosses the C boundary.
template <typename Body>
flashmla_status_t guarded(Body&& body) noexcept {
  try {
    return body();
  } catch (const std::exception& e) {
    return fail(FLASHMLA_STATUS_INTERNAL_ERROR, std::string("unexpected exception: ") + e.what());
  } catch (...) {
    return fail(FLASHMLA_STATUS_INTERNAL_ERROR, "unexpected exception");
  }
}

}  // namespace flashmla
