/* check.h: the few assertion macros the native tests share (C and C++). A failed CHECK prints where and
   why and makes the test return 1; SKIP(...) returns 77 (ctest: skipped). */
#ifndef SDEDGE_TESTS_CHECK_H
#define SDEDGE_TESTS_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_failures = 0;

#define CHECK(cond)                                                             \
  do {                                                                          \
    if (!(cond)) {                                                              \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++check_failures;                                                         \
    }                                                                           \
  } while (0)

/* status `got` equals `want`, and (when `needle` is not NULL) the last error contains `needle` */
#define CHECK_STATUS(got, want, needle)                                                                   \
  do {                                                                                                   \
    int got_ = (int)(got);                                                                               \
    const char *needle_ = (needle);                                                                      \
    if (got_ != (int)(want) || (needle_ && !strstr(sdedge_last_error(), needle_))) {                     \
      fprintf(stderr, "%s:%d: %s: status %d (wanted %d), last error: \"%s\"%s%s\n", __FILE__, __LINE__, #got, \
              got_, (int)(want), sdedge_last_error(), needle_ ? " (wanted it to mention: " : "",         \
              needle_ ? needle_ : "");                                                                   \
      if (needle_) fprintf(stderr, ")\n");                                                               \
      ++check_failures;                                                                                  \
    }                                                                                                    \
  } while (0)

#define TEST_RESULT() (check_failures ? (fprintf(stderr, "%d check(s) failed\n", check_failures), 1) : 0)

#endif
