/*
 * sdedge.h — the C API of the sdedge native runtime core (DESIGN §5b).
 *
 * A plain C ABI over a C++17 core: C, C++ and Python (ctypes/cffi) callers all use these same
 * functions. The names, types and fields below are the contract. Every options struct carries its
 * size first (`struct_size`), set by its *_init function, so fields can be appended in later ABI
 * versions without breaking compiled callers: always call the *_init function before setting fields.
 * A library accepts every struct_size it knows (the current one and each earlier ABI version's: a caller
 * compiled against an older header gets the defaults for the fields appended since) and refuses
 * (SDEDGE_E_ARGUMENT) any other.
 *
 * ABI versions: 1 = DESIGN §5b as first written; 2 appended the session options' answer, criterion,
 * verify, latency_window and latency_quantile, the infer options' per-exit thresholds, and added
 * sdedge_session_describe and sdedge_session_infer_f32_ex / sdedge_session_infer_u8_ex; 3 appended the infer
 * options' per-row thresholds and deadlines (row_thresholds, row_deadlines_ns, on_rows); 4 appended the
 * session options' full_graph.
 *
 * Rules that hold for every function:
 *   - No C++ exception crosses the ABI. Misuse (NULL pointers, a wrong struct_size, a batch above
 *     max_batch, NaN/Inf input) returns an error status and sets a message, never crashes.
 *   - On an error, sdedge_last_error() returns this thread's message (valid until the thread's next
 *     sdedge call).
 *   - Calls on one session from several threads are serialized by the session.
 *
 * Link with `-lsdedge` (pkg-config `sdedge`, CMake `find_package(sdedge)` → `sdedge::sdedge`, or
 * `python -m sdedge.native --cflags --libs`). ONNX Runtime is loaded at run time: the library named by
 * sdedge_session_options.onnxruntime_library, else $SDEDGE_ORT_LIBRARY, else the loader's
 * libonnxruntime.so.1.
 */
#ifndef SDEDGE_SDEDGE_H
#define SDEDGE_SDEDGE_H

#include <stdint.h>

/* Symbol visibility: the library is built with hidden visibility; only SDEDGE_API symbols are exported. */
#if defined(_WIN32)
#  if defined(SDEDGE_BUILDING_LIBRARY)
#    define SDEDGE_API __declspec(dllexport)
#  else
#    define SDEDGE_API __declspec(dllimport)
#  endif
#elif defined(__GNUC__) || defined(__clang__)
#  define SDEDGE_API __attribute__((visibility("default")))
#else
#  define SDEDGE_API
#endif

/* The ABI version this header describes; compare with sdedge_abi_version() at run time. */
#define SDEDGE_ABI_VERSION 4

#ifdef __cplusplus
extern "C" {
#endif

/** An open bundle with its loaded sections and latency estimates. Opaque. */
typedef struct sdedge_session sdedge_session;

/** What every fallible call returns. SDEDGE_OK is 0; anything else has a message in sdedge_last_error(). */
typedef enum {
  SDEDGE_OK = 0,
  SDEDGE_E_ARGUMENT, /**< NULL pointer, wrong struct_size, bad option value, batch out of range */
  SDEDGE_E_BUNDLE,   /**< bundle missing, malformed manifest/calibration/profile, unknown format version */
  SDEDGE_E_CHECKSUM, /**< a bundle file's sha256 differs from the manifest (the message names the file) */
  SDEDGE_E_INPUT,    /**< input data refused (NaN/Inf, ...) */
  SDEDGE_E_BACKEND,  /**< ONNX Runtime missing, provider unavailable, or a run failed */
  SDEDGE_E_POLICY,   /**< an infer option the policy cannot honour (unknown criterion, no calibration) */
  SDEDGE_E_INTERNAL  /**< a bug: please report it with the message */
} sdedge_status;

/** Why a row stopped at its exit (sdedge_result.stopped_by). */
enum {
  SDEDGE_STOP_CONFIDENCE = 1, /**< the exit was confident enough */
  SDEDGE_STOP_DEADLINE = 2,   /**< the next section would not finish before the deadline */
  SDEDGE_STOP_LAST = 3        /**< the deepest exit answered */
};

/** Options of sdedge_session_create. Initialise with sdedge_session_options_init. */
typedef struct {
  uint32_t struct_size;            /**< set by sdedge_session_options_init */
  const char *backend;             /**< "auto" | "onnxruntime" (NULL = "auto") */
  const char *providers;           /**< comma list of ORT execution providers, NULL = CPU */
  int32_t intra_op_threads;        /**< 0 = the backend's default */
  int32_t max_batch;               /**< 1..4096, default 64 (the warm-up runs this many rows at once) */
  int32_t warmup;                  /**< warm-up calls at load, default 3 */
  const char *onnxruntime_library; /**< NULL: $SDEDGE_ORT_LIBRARY, else the loader's libonnxruntime.so.1 */
  /* appended in ABI version 2 */
  const char *answer;              /**< "last" | "ensemble" (mean of the exits' softmax so far); NULL = "last" */
  const char *criterion;           /**< the default confidence criterion of calls that name none; NULL = max_prob */
  int32_t verify;                  /**< 1 (default): check every file's sha256 at open; 0: skip */
  int32_t latency_window;          /**< online latency samples per (section, rows) cell, >= 8; 0 = 256 */
  double latency_quantile;         /**< the tail quantile of the online estimate, in [0.5, 1]; 0 = 0.99 */
  /* appended in ABI version 4 */
  int32_t full_graph;              /**< 1 (default): load the bundle's full.onnx when it has one; a call with no
                                        policy (no threshold, no budget or deadline, answer "last") and NULL
                                        exit_confidences then runs that one graph to the deepest exit instead of
                                        the sections, skipping the intermediate exit heads it would not use
                                        (same answer within float tolerance; its time teaches the deadline policy
                                        nothing). 0: never load it (less memory) */
} sdedge_session_options;

/** Options of one inference call. Initialise with sdedge_infer_options_init (no policy: deepest exit). */
typedef struct {
  uint32_t struct_size;            /**< set by sdedge_infer_options_init */
  double threshold;                /**< NAN = no confidence stop */
  int32_t calibrated;              /**< 1 = calibration.json's per-exit thresholds (threshold ignored) */
  const char *criterion;           /**< "max_prob" | "entropy" | "margin"; NULL = max_prob */
  double budget_ms;                /**< NAN = none; counted from the call */
  int64_t deadline_ns;             /**< 0 = none; absolute, on sdedge_now_ns()'s monotonic clock */
  /* appended in ABI version 2 */
  const double *thresholds;        /**< NULL, or per-exit thresholds (NAN = none at that exit; the deepest exit
                                        always answers); needs threshold NAN and calibrated 0 */
  int32_t num_thresholds;          /**< 0, or num_exits - 1 or num_exits values in `thresholds` */
  /* appended in ABI version 3: rows of one call that came from different requests (a server's dynamic batch) */
  const float *row_thresholds;     /**< NULL, or batch * num_exits float32 thresholds, row-major: row i stops at exit
                                        k when its confidence >= row_thresholds[i * num_exits + k - 1] (NAN = none;
                                        the deepest exit always answers); needs threshold NAN, calibrated 0 and no
                                        `thresholds`. The call's `criterion` applies to every row */
  const int64_t *row_deadlines_ns; /**< NULL, or batch deadlines on sdedge_now_ns()'s clock, one per row (0 = none):
                                        before each next section the rows it would overrun stop, earliest deadline
                                        first, each check counting the rows still going then; deadline_met is per
                                        row. Needs budget_ms NAN and deadline_ns 0 */
  void (*on_rows)(void *user, int64_t count, const int64_t *rows);
                                   /**< NULL, or called on the calling thread each time rows settle under
                                        row_thresholds / row_deadlines_ns, with their indices: their entries in
                                        results (latency_ms and deadline_met as of that moment), probabilities and
                                        exit_confidences are final, so a server can answer them before the rest
                                        of the batch goes on. It must not call back into this session: such a
                                        call fails with SDEDGE_E_ARGUMENT (the session is busy with this call) */
  void *on_rows_user;              /**< passed to on_rows as `user` */
} sdedge_infer_options;

/** One row's answer. */
typedef struct {
  int32_t label;                   /**< argmax class of the answer */
  int32_t exit_index;              /**< 1-based exit that answered */
  float confidence;                /**< under the criterion used, in [0, 1] */
  int32_t stopped_by;              /**< SDEDGE_STOP_* */
  int32_t deadline_met;            /**< -1 no deadline, 0 missed, 1 met */
  double latency_ms;               /**< call to return */
} sdedge_result;

/** The ABI version of the loaded library (SDEDGE_ABI_VERSION of the header it was built with). */
SDEDGE_API uint32_t sdedge_abi_version(void);

/** This thread's last error message ("" when none). Never NULL. */
SDEDGE_API const char *sdedge_last_error(void);

/** Now on the monotonic clock that sdedge_infer_options.deadline_ns uses, in nanoseconds. */
SDEDGE_API int64_t sdedge_now_ns(void);

/** Fill *o with defaults and set o->struct_size. NULL is a no-op. */
SDEDGE_API void sdedge_session_options_init(sdedge_session_options *o);

/** Fill *o with defaults (no threshold, no budget, no deadline) and set o->struct_size. NULL is a no-op. */
SDEDGE_API void sdedge_infer_options_init(sdedge_infer_options *o);

/**
 * Open the bundle folder `bundle_dir` (manifest.json, every sha256 verified; calibration.json and the
 * device profile when present), load ONNX Runtime and the sections, run the warm-up calls.
 * `o` may be NULL (defaults). On success *out owns a session to free with sdedge_session_free; on an
 * error *out is set to NULL.
 */
SDEDGE_API sdedge_status sdedge_session_create(const char *bundle_dir, const sdedge_session_options *o,
                                               sdedge_session **out);

/** Free a session. NULL is a no-op. */
SDEDGE_API void sdedge_session_free(sdedge_session *s);

/** The bundle's number of exits, number of classes and input shape (channels, height, width). */
SDEDGE_API sdedge_status sdedge_session_info(const sdedge_session *s, int32_t *num_exits, int32_t *num_classes,
                                             int64_t chw[3]);

/**
 * Answer `batch` rows of preprocessed float32 NCHW input (batch * C * H * W floats).
 * `o` may be NULL (no policy: the deepest exit). `results` receives `batch` entries, in input order;
 * `probabilities` is NULL or receives batch * num_classes floats (the answering exit's softmax).
 */
SDEDGE_API sdedge_status sdedge_session_infer_f32(sdedge_session *s, const float *nchw, int64_t batch,
                                                  const sdedge_infer_options *o, sdedge_result *results,
                                                  float *probabilities);

/**
 * As sdedge_session_infer_f32, from raw uint8 NHWC pixels (batch * H * W * C bytes) in the model's channel
 * order (the manifest's input.preprocess.channel_order; channels are not reordered); the manifest's
 * preprocessing (scale, mean, std) is applied.
 */
SDEDGE_API sdedge_status sdedge_session_infer_u8(sdedge_session *s, const uint8_t *nhwc, int64_t batch,
                                                 const sdedge_infer_options *o, sdedge_result *results,
                                                 float *probabilities);

/**
 * Every exit's logits for `batch` rows of float32 NCHW input, no early exit:
 * `logits` receives num_exits * batch * num_classes floats, shallow exit first.
 */
SDEDGE_API sdedge_status sdedge_session_infer_all_exits(sdedge_session *s, const float *nchw, int64_t batch,
                                                        float *logits);

/* ---- ABI version 2 ---- */

/**
 * Describe a session as one JSON object, written NUL-terminated into `buf` (`capacity` bytes):
 * {"abi_version", "backend", "device_name", "onnxruntime_version" (e.g. "1.32.0"), "num_exits", "num_classes",
 *  "input_chw": [C, H, W], "classes": [...], "max_batch", "answer", "criterion", "has_profile",
 *  "has_calibration", "bundle_dir"}. `*needed` (may be NULL) receives the bytes the text needs, NUL
 * included; `buf` may be NULL with `capacity` 0 to ask for the size. A `capacity` too small writes nothing
 * and returns SDEDGE_E_ARGUMENT (with *needed set): call again with a larger buffer.
 */
SDEDGE_API sdedge_status sdedge_session_describe(const sdedge_session *s, char *buf, uint64_t capacity,
                                                 uint64_t *needed);

/**
 * As sdedge_session_infer_f32, plus `exit_confidences`: NULL or batch * num_exits floats, row-major,
 * receiving each row's answer confidence (under the call's criterion and the session's answer mode) at
 * every exit it ran, shallow first, and NAN at the exits past the one that answered. On a bundle of
 * format version 2 (exit heads as graphs of their own) asking for them runs the head of every exit the
 * call passes; without them a head runs only where the call needs that exit's logits (a threshold there,
 * answer "ensemble", or a stop), so a deadline-only call runs one head.
 */
SDEDGE_API sdedge_status sdedge_session_infer_f32_ex(sdedge_session *s, const float *nchw, int64_t batch,
                                                     const sdedge_infer_options *o, sdedge_result *results,
                                                     float *probabilities, float *exit_confidences);

/** As sdedge_session_infer_u8, plus `exit_confidences` as in sdedge_session_infer_f32_ex. */
SDEDGE_API sdedge_status sdedge_session_infer_u8_ex(sdedge_session *s, const uint8_t *nhwc, int64_t batch,
                                                    const sdedge_infer_options *o, sdedge_result *results,
                                                    float *probabilities, float *exit_confidences);

/* ---- ABI version 3 ---- */

/**
 * The predicted time in milliseconds of 1-based section `section` on `rows` rows, plus the runtime's own
 * per-call overhead when `section` is 0: what the deadline policy uses (the larger of the device profile's
 * figure and the online one; 0 while neither exists). For schedulers that form batches or refuse work that
 * cannot meet its deadline. Safe to call while another thread runs the session (it waits for that call).
 */
SDEDGE_API sdedge_status sdedge_session_section_cost_ms(sdedge_session *s, int32_t section, int64_t rows,
                                                        double *ms);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* SDEDGE_SDEDGE_H */
