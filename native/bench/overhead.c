/*
 * overhead.c — what a C caller pays for the sdedge session over ONNX Runtime's C API alone.
 *
 *   sdedge_overhead BUNDLE ORT_LIBRARY [--runs N] [--warmup N] [--threads K] [--block B] [--split BUNDLE2]
 *
 * One process, batch 1, the same preprocessed float32 input for every contender, in blocks: each round runs
 * every contender for --block consecutive calls (after one untimed call that warms the caches with its own
 * weights), the contenders in a shuffled order (a fixed-seed permutation per round). Blocks, not single
 * interleaved calls: the three session contenders share one session's weights while full and chain each
 * have their own, so call-by-call interleaving would time the session with warmer caches than the
 * references; a robot node calling one session in a loop is the warm case for all of them.
 *   full        ONNX Runtime's C API running the bundle's full.onnx (the whole network in one graph);
 *   chain       ONNX Runtime's C API running sections/s1.onnx .. sK.onnx back to back, each section's
 *               features fed to the next and its logits read (the naive chain, no decision);
 *   none        sdedge_session_infer_f32 with no policy (every section, the deepest exit answers);
 *   deadline    the same with a 10 s budget (the whole network fits it: full.onnx answers, policies rule 9);
 *   confidence  the same with threshold 1.0 at every exit (every confidence computed, never stopping);
 *   deadline_sections  the 10 s budget on a session that did not load full.onnx (full_graph = 0): the
 *               section loop with every deadline check made, never stopping (what a budget that does not
 *               fit the whole network runs);
 *   deadline_split, confidence_split (with --split BUNDLE2: the same model exported as bundle format version 2,
 *               exit heads as graphs of their own) deadline and confidence on a session over BUNDLE2 without
 *               full.onnx (full_graph = 0), so the deadline contender runs the trunks and one head.
 * The graphs of full and chain get the session options the core gives its own sessions (intra-op threads
 * --threads, inter-op 1, sequential, every graph optimisation, thread spinning off), from the same
 * ONNX Runtime library (ORT_LIBRARY, loaded at run time as the core loads it). Prints one JSON object on
 * stdout: p50/p99/mean in microseconds of each contender and the calls it made. Timer: CLOCK_MONOTONIC
 * around one call. benchmarks/native_overhead.py builds this file, runs it and writes the results file.
 *
 * Build by hand against an installed core and ONNX Runtime's C headers:
 *   cc -O2 overhead.c $(python -m sdedge.native --cflags --libs) -I<onnxruntime include dir> -ldl -o sdedge_overhead
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <onnxruntime_c_api.h>
#include <sdedge/sdedge.h>

enum { FULL, CHAIN, NONE, DEADLINE, CONFIDENCE, DEADLINE_SECTIONS, DEADLINE_SPLIT, CONFIDENCE_SPLIT, NUM_CONTENDERS };
static const char *const NAMES[NUM_CONTENDERS] = {"full", "chain", "none", "deadline", "confidence",
                                                  "deadline_sections", "deadline_split", "confidence_split"};
enum { MAX_SECTIONS = 16 };

static const OrtApi *ort;

static void die(const char *what, const char *why) {
  fprintf(stderr, "sdedge_overhead: %s: %s\n", what, why);
  exit(1);
}

static void check(OrtStatus *st, const char *what) {
  if (st) {
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", ort->GetErrorMessage(st));
    ort->ReleaseStatus(st);
    die(what, msg);
  }
}

static int64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* One graph with its input name and (up to) two output names: features first when it has them, then logits. */
typedef struct {
  OrtSession *session;
  char *input;
  char *outputs[2];
  size_t num_outputs;
} Graph;

static Graph load_graph(OrtEnv *env, const OrtSessionOptions *so, const char *path) {
  Graph g = {0};
  check(ort->CreateSession(env, path, so, &g.session), path);
  OrtAllocator *alloc = NULL;
  check(ort->GetAllocatorWithDefaultOptions(&alloc), "GetAllocatorWithDefaultOptions");
  check(ort->SessionGetInputName(g.session, 0, alloc, &g.input), "SessionGetInputName");
  size_t n = 0;
  check(ort->SessionGetOutputCount(g.session, &n), "SessionGetOutputCount");
  if (n < 1 || n > 2) die(path, "expected one or two outputs (features, logits)");
  char *names[2] = {NULL, NULL};
  for (size_t i = 0; i < n; ++i) check(ort->SessionGetOutputName(g.session, i, alloc, &names[i]), "SessionGetOutputName");
  if (n == 2 && strstr(names[0], "logits") != NULL) {  /* features first */
    char *t = names[0];
    names[0] = names[1];
    names[1] = t;
  }
  g.outputs[0] = names[0];
  g.outputs[1] = names[1];
  g.num_outputs = n;
  return g;
}

static float sink;  /* keeps the logits reads from being optimised away */

static void read_logits(OrtValue *v) {
  float *p = NULL;
  check(ort->GetTensorMutableData(v, (void **)&p), "GetTensorMutableData");
  sink += p[0];
}

static void run_full(Graph *g, OrtValue *input) {
  OrtValue *out = NULL;
  const OrtValue *in[1] = {input};
  check(ort->Run(g->session, NULL, (const char *const *)&g->input, in, 1, (const char *const *)g->outputs, 1, &out),
        "Run full.onnx");
  read_logits(out);
  ort->ReleaseValue(out);
}

static void run_chain(Graph *s, int k, OrtValue *input) {
  OrtValue *x = input;  /* the running features (the input first) */
  for (int i = 0; i < k; ++i) {
    OrtValue *outs[2] = {NULL, NULL};
    const OrtValue *in[1] = {x};
    check(ort->Run(s[i].session, NULL, (const char *const *)&s[i].input, in, 1, (const char *const *)s[i].outputs,
                   s[i].num_outputs, outs),
          "Run section");
    OrtValue *logits = outs[s[i].num_outputs - 1];
    read_logits(logits);
    ort->ReleaseValue(logits);
    if (x != input) ort->ReleaseValue(x);
    x = s[i].num_outputs == 2 ? outs[0] : input;  /* the deepest section has no features */
  }
  if (x != input) ort->ReleaseValue(x);
}

static int cmp_i64(const void *a, const void *b) {
  const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: sdedge_overhead BUNDLE ORT_LIBRARY [--runs N] [--warmup N] [--threads K] [--block B]\n");
    return 2;
  }
  const char *bundle = argv[1], *ort_path = argv[2];
  long runs = 3000, warmup = 300, block = 20;
  const char *split_bundle = NULL;
  int threads = 1;
  for (int i = 3; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--runs") == 0) runs = strtol(argv[i + 1], NULL, 10);
    else if (strcmp(argv[i], "--warmup") == 0) warmup = strtol(argv[i + 1], NULL, 10);
    else if (strcmp(argv[i], "--threads") == 0) threads = (int)strtol(argv[i + 1], NULL, 10);
    else if (strcmp(argv[i], "--block") == 0) block = strtol(argv[i + 1], NULL, 10);
    else if (strcmp(argv[i], "--split") == 0) split_bundle = argv[i + 1];
    else die("unknown option", argv[i]);
  }
  if (runs < 1 || warmup < 0 || threads < 1 || block < 1)
    die("arguments", "--runs >= 1, --warmup >= 0, --threads >= 1, --block >= 1");

  /* the session, on the same ONNX Runtime library */
  sdedge_session_options so_sd;
  sdedge_session_options_init(&so_sd);
  so_sd.intra_op_threads = threads;
  so_sd.onnxruntime_library = ort_path;
  sdedge_session *s = NULL;
  if (sdedge_session_create(bundle, &so_sd, &s) != SDEDGE_OK) die("sdedge_session_create", sdedge_last_error());
  int32_t k = 0, classes = 0;
  int64_t chw[3];
  if (sdedge_session_info(s, &k, &classes, chw) != SDEDGE_OK) die("sdedge_session_info", sdedge_last_error());
  if (k < 1 || k > MAX_SECTIONS) die("bundle", "unexpected number of exits");
  sdedge_session_options so_sections = so_sd;  /* no full.onnx: every call runs the sections */
  so_sections.full_graph = 0;
  sdedge_session *s_sections = NULL, *s2 = NULL;  /* s2 (--split): the same model, exit heads apart */
  if (sdedge_session_create(bundle, &so_sections, &s_sections) != SDEDGE_OK)
    die("sdedge_session_create", sdedge_last_error());
  const int active = split_bundle ? NUM_CONTENDERS : DEADLINE_SPLIT;
  if (split_bundle) {
    if (sdedge_session_create(split_bundle, &so_sections, &s2) != SDEDGE_OK) die("sdedge_session_create", sdedge_last_error());
    int32_t k2 = 0, classes2 = 0;
    int64_t chw2[3];
    if (sdedge_session_info(s2, &k2, &classes2, chw2) != SDEDGE_OK) die("sdedge_session_info", sdedge_last_error());
    if (k2 != k || classes2 != classes || memcmp(chw, chw2, sizeof chw) != 0)
      die("--split", "the second bundle is not the same model (exits, classes or input differ)");
  }

  /* ONNX Runtime alone */
  void *lib = dlopen(ort_path, RTLD_NOW | RTLD_LOCAL);
  if (!lib) die("dlopen", dlerror());
  const OrtApiBase *(*get_base)(void) = NULL;
  void *sym = dlsym(lib, "OrtGetApiBase");
  if (!sym) die("dlsym OrtGetApiBase", dlerror());
  memcpy(&get_base, &sym, sizeof sym);  /* object to function pointer, as POSIX allows */
  ort = get_base()->GetApi(ORT_API_VERSION);
  if (!ort) die("GetApi", "the library is older than these headers");
  OrtEnv *env = NULL;
  check(ort->CreateEnv(ORT_LOGGING_LEVEL_ERROR, "overhead", &env), "CreateEnv");
  OrtSessionOptions *so = NULL;
  check(ort->CreateSessionOptions(&so), "CreateSessionOptions");
  check(ort->SetIntraOpNumThreads(so, threads), "SetIntraOpNumThreads");
  check(ort->SetInterOpNumThreads(so, 1), "SetInterOpNumThreads");
  check(ort->SetSessionExecutionMode(so, ORT_SEQUENTIAL), "SetSessionExecutionMode");
  check(ort->SetSessionGraphOptimizationLevel(so, ORT_ENABLE_ALL), "SetSessionGraphOptimizationLevel");
  check(ort->AddSessionConfigEntry(so, "session.intra_op.allow_spinning", "0"), "AddSessionConfigEntry");
  check(ort->AddSessionConfigEntry(so, "session.inter_op.allow_spinning", "0"), "AddSessionConfigEntry");
  char path[4096];
  snprintf(path, sizeof path, "%s/full.onnx", bundle);
  Graph full = load_graph(env, so, path);
  Graph sections[MAX_SECTIONS];
  for (int i = 0; i < k; ++i) {
    snprintf(path, sizeof path, "%s/sections/s%d.onnx", bundle, i + 1);
    sections[i] = load_graph(env, so, path);
  }

  /* one input, preprocessed-like values */
  const size_t n_in = (size_t)(chw[0] * chw[1] * chw[2]);
  float *x = malloc(n_in * sizeof *x);
  if (!x) die("malloc", "out of memory");
  uint64_t seed = 12345;
  for (size_t i = 0; i < n_in; ++i) {
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    x[i] = (float)((double)(seed >> 11) / 9007199254740992.0 * 2.0 - 1.0);
  }
  OrtMemoryInfo *mem = NULL;
  check(ort->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &mem), "CreateCpuMemoryInfo");
  const int64_t shape[4] = {1, chw[0], chw[1], chw[2]};
  OrtValue *input = NULL;
  check(ort->CreateTensorWithDataAsOrtValue(mem, x, n_in * sizeof *x, shape, 4, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
                                            &input),
        "CreateTensorWithDataAsOrtValue");

  sdedge_infer_options none, deadline, confidence;
  sdedge_infer_options_init(&none);
  sdedge_infer_options_init(&deadline);
  deadline.budget_ms = 1e4;
  sdedge_infer_options_init(&confidence);
  confidence.threshold = 1.0;
  sdedge_result result;
  const sdedge_infer_options *opts[NUM_CONTENDERS] = {NULL, NULL, &none, &deadline, &confidence, &deadline, &deadline,
                                                      &confidence};
  sdedge_session *sessions[NUM_CONTENDERS] = {NULL, NULL, s, s, s, s_sections, s2, s2};
  long deepest[NUM_CONTENDERS] = {0};

  int64_t *t[NUM_CONTENDERS] = {NULL};
  for (int c = 0; c < active; ++c) {
    t[c] = malloc((size_t)runs * sizeof(int64_t));
    if (!t[c]) die("malloc", "out of memory");
  }
  int order[NUM_CONTENDERS] = {0, 1, 2, 3, 4, 5, 6, 7};
  uint64_t rng = 2024;
  long done = -warmup;  /* calls per contender so far; timed from 0 */
  while (done < runs) {
    for (int i = active - 1; i > 0; --i) {  /* Fisher-Yates with a fixed-seed LCG */
      rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
      const int j = (int)((rng >> 33) % (uint64_t)(i + 1));
      const int tmp = order[i];
      order[i] = order[j];
      order[j] = tmp;
    }
    const long n = done < 0 ? (-done < block ? -done : block) : (runs - done < block ? runs - done : block);
    for (int i = 0; i < active; ++i) {
      const int c = order[i];
      for (long b = -1; b < n; ++b) {  /* b = -1: the untimed call that brings this contender's weights in */
        const int64_t t0 = now_ns();
        if (c == FULL) {
          run_full(&full, input);
        } else if (c == CHAIN) {
          run_chain(sections, k, input);
        } else if (sdedge_session_infer_f32(sessions[c], x, 1, opts[c], &result, NULL) != SDEDGE_OK) {
          die("sdedge_session_infer_f32", sdedge_last_error());
        }
        const int64_t dt = now_ns() - t0;
        if (b >= 0 && done + b >= 0) {
          t[c][done + b] = dt;
          if (c >= NONE && result.exit_index == k) ++deepest[c];
        }
      }
    }
    done += n;
  }

  printf("{\"bundle\": \"%s\", \"num_exits\": %d, \"threads\": %d, \"warmup_calls\": %ld, \"timed_calls\": %ld, "
         "\"block\": %ld, \"contenders\": {",
         bundle, k, threads, warmup, runs, block);
  for (int c = 0; c < active; ++c) {
    double sum = 0;
    for (long i = 0; i < runs; ++i) sum += (double)t[c][i];
    qsort(t[c], (size_t)runs, sizeof(int64_t), cmp_i64);
    const double p50 = (double)t[c][runs / 2] / 1e3, p99 = (double)t[c][(long)ceil(0.99 * (double)(runs - 1))] / 1e3;
    printf("%s\"%s\": {\"p50_us\": %.2f, \"p99_us\": %.2f, \"mean_us\": %.2f", c ? ", " : "", NAMES[c], p50, p99,
           sum / (double)runs / 1e3);
    if (c >= NONE) printf(", \"deepest_share\": %.4f", (double)deepest[c] / (double)runs);
    printf("}");
    free(t[c]);
  }
  printf("}, \"checksum\": %g}\n", (double)sink);

  ort->ReleaseValue(input);
  ort->ReleaseMemoryInfo(mem);
  OrtAllocator *alloc = NULL;
  check(ort->GetAllocatorWithDefaultOptions(&alloc), "GetAllocatorWithDefaultOptions");
  for (int i = 0; i <= k; ++i) {
    Graph *g = i < k ? &sections[i] : &full;
    alloc->Free(alloc, g->input);
    for (size_t j = 0; j < g->num_outputs; ++j) alloc->Free(alloc, g->outputs[j]);
    ort->ReleaseSession(g->session);
  }
  ort->ReleaseSessionOptions(so);
  ort->ReleaseEnv(env);
  free(x);
  sdedge_session_free(s);
  sdedge_session_free(s_sections);
  sdedge_session_free(s2);
  return 0;
}
