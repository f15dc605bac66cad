/*
 * infer_image.c — answer images under a latency budget with the sdedge C API.
 *
 *   infer_image BUNDLE [--images N] [--budget-ms MS] [--threshold T] [--raw FILE] [--threads K]
 *
 * Loads the bundle, then answers N images one call at a time, each under the budget (and the confidence
 * threshold when given), printing the label, the exit that answered, why it stopped, whether the deadline
 * held and the latency. The images are raw uint8 pixels in the bundle's input layout (NHWC: height x width
 * x channels per image, images back to back) read from --raw FILE, or synthetic ones when no file is given.
 * Exits non-zero with sdedge_last_error() on any error.
 *
 * Build: cmake -DSDEDGE_BUILD_EXAMPLES=ON, or by hand against an installed copy:
 *   cc infer_image.c $(python -m sdedge.native --cflags --libs) -o infer_image
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sdedge/sdedge.h>

static int fail(const char *what) {
  fprintf(stderr, "infer_image: %s: %s\n", what, sdedge_last_error());
  return 1;
}

static int usage(void) {
  fprintf(stderr, "usage: infer_image BUNDLE [--images N] [--budget-ms MS] [--threshold T] [--raw FILE] [--threads K]\n");
  return 2;
}

static const char *stop_name(int32_t stopped_by) {
  switch (stopped_by) {
    case SDEDGE_STOP_CONFIDENCE: return "confidence";
    case SDEDGE_STOP_DEADLINE: return "deadline";
    case SDEDGE_STOP_LAST: return "last";
    default: return "?";
  }
}

int main(int argc, char **argv) {
  const char *bundle = NULL, *raw_path = NULL;
  long n_images = 4;
  double budget_ms = 5.0, threshold = NAN;
  int threads = 1;
  for (int i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "--images") == 0 && i + 1 < argc) {
      n_images = strtol(argv[++i], NULL, 10);
    } else if (strcmp(argv[i], "--budget-ms") == 0 && i + 1 < argc) {
      budget_ms = strtod(argv[++i], NULL);
    } else if (strcmp(argv[i], "--threshold") == 0 && i + 1 < argc) {
      threshold = strtod(argv[++i], NULL);
    } else if (strcmp(argv[i], "--raw") == 0 && i + 1 < argc) {
      raw_path = argv[++i];
    } else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
      threads = (int)strtol(argv[++i], NULL, 10);
    } else if (argv[i][0] == '-' || bundle != NULL) {
      return usage();
    } else {
      bundle = argv[i];
    }
  }
  if (bundle == NULL || n_images < 1) return usage();

  if (sdedge_abi_version() < SDEDGE_ABI_VERSION) { /* a newer library keeps older ABIs: only an older one fails */
    fprintf(stderr, "infer_image: libsdedge ABI %u, this program was built for %d or later\n",
            (unsigned)sdedge_abi_version(), SDEDGE_ABI_VERSION);
    return 1;
  }

  sdedge_session_options so;
  sdedge_session_options_init(&so);
  so.intra_op_threads = threads;
  sdedge_session *session = NULL;
  if (sdedge_session_create(bundle, &so, &session) != SDEDGE_OK) return fail("loading the bundle");

  int32_t num_exits = 0, num_classes = 0;
  int64_t chw[3] = {0, 0, 0};
  if (sdedge_session_info(session, &num_exits, &num_classes, chw) != SDEDGE_OK) {
    sdedge_session_free(session);
    return fail("sdedge_session_info");
  }
  const size_t image_bytes = (size_t)(chw[0] * chw[1] * chw[2]);
  printf("bundle %s: %d exits, %d classes, input %lldx%lldx%lld (HxWxC uint8)\n", bundle, (int)num_exits,
         (int)num_classes, (long long)chw[1], (long long)chw[2], (long long)chw[0]);

  uint8_t *pixels = malloc(image_bytes * (size_t)n_images);
  if (pixels == NULL) {
    sdedge_session_free(session);
    fprintf(stderr, "infer_image: out of memory\n");
    return 1;
  }
  if (raw_path != NULL) {
    FILE *f = fopen(raw_path, "rb");
    size_t got = 0;
    if (f != NULL) {
      got = fread(pixels, 1, image_bytes * (size_t)n_images, f);
      fclose(f);
    }
    if (got != image_bytes * (size_t)n_images) {
      fprintf(stderr, "infer_image: %s: expected %zu bytes (%ld images of %zu), read %zu\n", raw_path,
              image_bytes * (size_t)n_images, n_images, image_bytes, got);
      free(pixels);
      sdedge_session_free(session);
      return 1;
    }
  } else {
    uint32_t x = 12345u;  /* a fixed pseudo-random pattern: the same images every run */
    for (size_t i = 0; i < image_bytes * (size_t)n_images; ++i) {
      x = x * 1664525u + 1013904223u;
      pixels[i] = (uint8_t)(x >> 24);
    }
  }

  sdedge_infer_options io;
  sdedge_infer_options_init(&io);
  io.budget_ms = budget_ms;
  io.threshold = threshold;
  float *probs = malloc(sizeof(float) * (size_t)num_classes);
  int status = 0, met = 0;
  for (long i = 0; i < n_images; ++i) {
    sdedge_result r;
    if (sdedge_session_infer_u8(session, pixels + image_bytes * (size_t)i, 1, &io, &r, probs) != SDEDGE_OK) {
      status = fail("inference");
      break;
    }
    met += r.deadline_met == 1;
    printf("image %ld: label %d  exit %d/%d  stopped by %-10s  confidence %.3f  deadline %s  %.3f ms\n", i,
           (int)r.label, (int)r.exit_index, (int)num_exits, stop_name(r.stopped_by), (double)r.confidence,
           r.deadline_met < 0 ? "none" : (r.deadline_met ? "met" : "MISSED"), r.latency_ms);
  }
  if (status == 0) printf("%d of %ld calls met the %.2f ms budget\n", met, n_images, budget_ms);
  free(probs);
  free(pixels);
  sdedge_session_free(session);
  return status;
}
