/* Built as C against the installed package: proves the header is plain C and the library links.
 * Exercises calls that need no GPU: version, defaults, and a rejected argument. */
#include <stdio.h>
#include <string.h>

#include <flashmla/flashmla.h>

int main(void) {
  int major = -1, minor = -1, patch = -1;
  flashmla_get_version(&major, &minor, &patch);
  if (major != FLASHMLA_VERSION_MAJOR || minor != FLASHMLA_VERSION_MINOR) {
    fprintf(stderr, "version mismatch: library %d.%d, header %d.%d\n", major, minor,
            FLASHMLA_VERSION_MAJOR, FLASHMLA_VERSION_MINOR);
    return 1;
  }

  flashmla_decode_args args;
  flashmla_decode_args_init(&args);
  if (args.head_dim_v != FLASHMLA_HEAD_DIM_V) return 1;

  flashmla_status_t status = flashmla_decode(&args, NULL);
  if (status != FLASHMLA_STATUS_INVALID_ARGUMENT || strstr(flashmla_get_last_error(), "q:") == NULL) {
    fprintf(stderr, "expected an invalid-argument error naming q, got %s: %s\n",
            flashmla_status_string(status), flashmla_get_last_error());
    return 1;
  }
  printf("consumer ok: flashmla %d.%d.%d, rejected: %s\n", major, minor, patch,
         flashmla_get_last_error());
  return 0;
}
