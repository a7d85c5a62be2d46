#include "api/errors.h"

#include <exception>

namespace flashmla {
namespace {

thread_local std::string last_error;

}  // namespace

flashmla_status_t fail(flashmla_status_t status, std::string message) {
  last_error = std::move(message);
  return status;
}

flashmla_status_t succeed() {
  last_error.clear();
  return FLASHMLA_STATUS_SUCCESS;
}

flashmla_status_t cuda_failure(cudaError_t error, const char* what) {
  // The error is reported here. A non-sticky one (a launch refused for its resources, say) also
  // stays in the runtime's last-error slot, where the next cudaGetLastError() of the caller or of
  // this library (after the metadata kernel's launch, for one) would report it again as its own.
  cudaGetLastError();
  return fail(FLASHMLA_STATUS_CUDA_ERROR, std::string(what) + ": " + cudaGetErrorName(error) +
                                              " (" + cudaGetErrorString(error) + ")");
}

}  // namespace flashmla

extern "C" const char* flashmla_get_last_error(void) {
  return flashmla::last_error.c_str();
}

extern "C" const char* flashmla_status_string(flashmla_status_t status) {
  switch (status) {
    case FLASHMLA_STATUS_SUCCESS: return "FLASHMLA_STATUS_SUCCESS";
    case FLASHMLA_STATUS_INVALID_ARGUMENT: return "FLASHMLA_STATUS_INVALID_ARGUMENT";
    case FLASHMLA_STATUS_NOT_SUPPORTED: return "FLASHMLA_STATUS_NOT_SUPPORTED";
    case FLASHMLA_STATUS_CUDA_ERROR: return "FLASHMLA_STATUS_CUDA_ERROR";
    case FLASHMLA_STATUS_INTERNAL_ERROR: return "FLASHMLA_STATUS_INTERNAL_ERROR";
  }
  return "FLASHMLA_STATUS_UNKNOWN";
}
