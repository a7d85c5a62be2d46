// flashmla_take_phase_trace: trace builds only (see phase_trace.h).
#include "api/phase_trace.h"

#include "api/errors.h"
#include "kernels/combine/combine.h"
#include "kernels/sm90/sm90_decode.h"

extern "C" flashmla_status_t flashmla_take_phase_trace(flashmla::trace::Stamp* main_stamps,
                                                       flashmla::trace::Stamp* combine_stamps) {
  if (main_stamps == nullptr) return flashmla::invalid_argument("main_stamps: is NULL");
  if (combine_stamps == nullptr) return flashmla::invalid_argument("combine_stamps: is NULL");
  cudaError_t err = flashmla::sm90_take_phase_trace(main_stamps);
  if (err != cudaSuccess) return flashmla::cuda_failure(err, "reading the main kernel's phase stamps");
  err = flashmla::combine_take_phase_trace(combine_stamps);
  if (err != cudaSuccess) return flashmla::cuda_failure(err, "reading the combine's phase stamps");
  return flashmla::succeed();
}
