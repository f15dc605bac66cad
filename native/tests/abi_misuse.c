/* abi_misuse.c: the C ABI refuses misuse with a status and a message and never crashes, without any
   bundle: NULL pointers, wrong struct_size, bad option values, a missing bundle, freeing NULL. Written in
   C, linked against libsdedge.so as a C user links it. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "sdedge/sdedge.h"
#include "check.h"

int main(void) {
  CHECK(sdedge_abi_version() == SDEDGE_ABI_VERSION);
  CHECK(sdedge_last_error() != NULL);
  CHECK(strcmp(sdedge_last_error(), "") == 0);

  int64_t t1 = sdedge_now_ns(), t2 = sdedge_now_ns();
  CHECK(t1 > 0 && t2 >= t1);

  /* init functions: NULL is a no-op; defaults as documented */
  sdedge_session_options_init(NULL);
  sdedge_infer_options_init(NULL);
  sdedge_session_options so;
  memset(&so, 0xAB, sizeof so);
  sdedge_session_options_init(&so);
  CHECK(so.struct_size == sizeof so);
  CHECK(so.backend == NULL && so.providers == NULL && so.onnxruntime_library == NULL);
  CHECK(so.intra_op_threads == 0 && so.max_batch == 64 && so.warmup == 3);
  sdedge_infer_options io;
  memset(&io, 0xAB, sizeof io);
  sdedge_infer_options_init(&io);
  CHECK(io.struct_size == sizeof io);
  CHECK(isnan(io.threshold) && isnan(io.budget_ms) && io.calibrated == 0 && io.criterion == NULL && io.deadline_ns == 0);
  /* ABI 2 fields' defaults */
  CHECK(so.answer == NULL && so.criterion == NULL && so.verify == 1 && so.latency_window == 0 && so.latency_quantile == 0.0);
  CHECK(io.thresholds == NULL && io.num_thresholds == 0);
  /* ABI 3 fields' defaults */
  CHECK(io.row_thresholds == NULL && io.row_deadlines_ns == NULL);

  /* create: NULL out, NULL folder, wrong struct_size, bad values, missing bundle */
  sdedge_session *s = (sdedge_session *)0x1;
  CHECK_STATUS(sdedge_session_create("/nonexistent", NULL, NULL), SDEDGE_E_ARGUMENT, "out");
  CHECK_STATUS(sdedge_session_create(NULL, NULL, &s), SDEDGE_E_ARGUMENT, "bundle_dir is NULL");
  CHECK(s == NULL);
  sdedge_session_options bad = so;
  bad.struct_size = 3;
  s = (sdedge_session *)0x1;
  CHECK_STATUS(sdedge_session_create("/nonexistent", &bad, &s), SDEDGE_E_ARGUMENT, "struct_size");
  CHECK(s == NULL);
  /* every struct size the library knows is accepted: the current one and ABI version 1's (the struct up to
     onnxruntime_library / deadline_ns, padded to its alignment); sizes in between or beyond are refused */
  {
    size_t v1_so = offsetof(sdedge_session_options, onnxruntime_library) + sizeof(const char *);
    size_t v1_io = offsetof(sdedge_infer_options, deadline_ns) + sizeof(int64_t);
    bad = so;
    bad.struct_size = (uint32_t)v1_so;
    bad.answer = "not read by a v1 caller"; /* v1 callers do not have the field: the library must not read it */
    CHECK_STATUS(sdedge_session_create("/nonexistent/bundle", &bad, &s), SDEDGE_E_BUNDLE, "does not exist");
    bad.struct_size = (uint32_t)sizeof so;
    CHECK_STATUS(sdedge_session_create("/nonexistent/bundle", &bad, &s), SDEDGE_E_ARGUMENT, "answer");
    bad.struct_size = (uint32_t)sizeof so + 8;
    CHECK_STATUS(sdedge_session_create("/nonexistent/bundle", &bad, &s), SDEDGE_E_ARGUMENT, "struct_size");
    bad.struct_size = (uint32_t)v1_so + 8;
    CHECK_STATUS(sdedge_session_create("/nonexistent/bundle", &bad, &s), SDEDGE_E_ARGUMENT, "struct_size");
    CHECK(v1_io < sizeof io); /* the infer options' sizes are checked on a real session: unit_real_bundle */
    /* ABI versions 2 and 3: the struct up to latency_quantile; full_graph (version 4) is not read */
    size_t v2_so = offsetof(sdedge_session_options, latency_quantile) + sizeof(double);
    bad = so;
    bad.struct_size = (uint32_t)v2_so;
    bad.full_graph = 7;
    CHECK_STATUS(sdedge_session_create("/nonexistent/bundle", &bad, &s), SDEDGE_E_BUNDLE, "does not exist");
    bad.struct_size = (uint32_t)sizeof so;
    CHECK_STATUS(sdedge_session_create("/nonexistent/bundle", &bad, &s), SDEDGE_E_ARGUMENT, "full_graph");
  }
  CHECK(so.full_graph == 1);
  bad = so;
  bad.verify = 2;
  CHECK_STATUS(sdedge_session_create("/nonexistent", &bad, &s), SDEDGE_E_ARGUMENT, "verify");
  bad = so;
  bad.latency_window = -1;
  CHECK_STATUS(sdedge_session_create("/nonexistent", &bad, &s), SDEDGE_E_ARGUMENT, "latency_window");
  bad = so;
  bad.latency_quantile = 1.5;
  CHECK_STATUS(sdedge_session_create("/nonexistent", &bad, &s), SDEDGE_E_ARGUMENT, "latency_quantile");
  bad = so;
  bad.criterion = "loudness";
  CHECK_STATUS(sdedge_session_create("/nonexistent", &bad, &s), SDEDGE_E_POLICY, "criterion");
  bad = so;
  bad.max_batch = 0;
  CHECK_STATUS(sdedge_session_create("/nonexistent", &bad, &s), SDEDGE_E_ARGUMENT, "max_batch");
  bad = so;
  bad.warmup = -1;
  CHECK_STATUS(sdedge_session_create("/nonexistent", &bad, &s), SDEDGE_E_ARGUMENT, "warmup");
  bad = so;
  bad.intra_op_threads = -2;
  CHECK_STATUS(sdedge_session_create("/nonexistent", &bad, &s), SDEDGE_E_ARGUMENT, "intra_op_threads");
  bad = so;
  bad.backend = "tensorflow";
  CHECK_STATUS(sdedge_session_create("/nonexistent", &bad, &s), SDEDGE_E_ARGUMENT, "backend");
  CHECK_STATUS(sdedge_session_create("/nonexistent/bundle", &so, &s), SDEDGE_E_BUNDLE, "does not exist");
  CHECK(s == NULL);
  CHECK_STATUS(sdedge_session_create("/etc/hostname", NULL, &s), SDEDGE_E_BUNDLE, "not a bundle folder");
  CHECK_STATUS(sdedge_session_create("/", NULL, &s), SDEDGE_E_BUNDLE, "manifest.json is missing");

  /* every call on a NULL session */
  sdedge_session_free(NULL);
  int32_t ne = -1, nc = -1;
  int64_t chw[3] = {-1, -1, -1};
  CHECK_STATUS(sdedge_session_info(NULL, &ne, &nc, chw), SDEDGE_E_ARGUMENT, "session is NULL");
  CHECK(ne == -1 && nc == -1 && chw[0] == -1);
  float x[16] = {0};
  uint8_t px[16] = {0};
  sdedge_result r[1];
  float logits[64];
  CHECK_STATUS(sdedge_session_infer_f32(NULL, x, 1, NULL, r, NULL), SDEDGE_E_ARGUMENT, "session is NULL");
  CHECK_STATUS(sdedge_session_infer_u8(NULL, px, 1, &io, r, NULL), SDEDGE_E_ARGUMENT, "session is NULL");
  CHECK_STATUS(sdedge_session_infer_all_exits(NULL, x, 1, logits), SDEDGE_E_ARGUMENT, "session is NULL");
  float ec[4];
  CHECK_STATUS(sdedge_session_infer_f32_ex(NULL, x, 1, NULL, r, NULL, ec), SDEDGE_E_ARGUMENT, "session is NULL");
  CHECK_STATUS(sdedge_session_infer_u8_ex(NULL, px, 1, &io, r, NULL, ec), SDEDGE_E_ARGUMENT, "session is NULL");
  char desc[8];
  uint64_t need = 99;
  CHECK_STATUS(sdedge_session_describe(NULL, desc, sizeof desc, &need), SDEDGE_E_ARGUMENT, "session is NULL");
  double cost_ms = -1.0;
  CHECK_STATUS(sdedge_session_section_cost_ms(NULL, 1, 1, &cost_ms), SDEDGE_E_ARGUMENT, "session is NULL");
  CHECK(cost_ms == -1.0);
  CHECK(need == 0);

  /* the last error is per thread and stays until the next failing call */
  CHECK(strlen(sdedge_last_error()) > 0);
  printf("abi_misuse: %s\n", check_failures ? "FAILED" : "ok");
  return TEST_RESULT();
}
