// ort_backend.cpp: sections on ONNX Runtime through its C API.
#include "ort_backend.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <sstream>

#include "errors.hpp"
#include "hostinfo.hpp"
#include "paths.hpp"

namespace sdedge {

namespace {

// A batch in host memory: an OrtValue over our own storage, over the caller's input, or returned by ORT.
struct OrtTensor : DeviceTensor {
  OrtPtr<OrtValue> value;
  std::vector<float> storage;
  std::vector<std::int64_t> shape;
  const float *data = nullptr;
};

std::string full_provider(const std::string &p) {
  std::string l;
  for (char c : p) l += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (l == "cpu") return "CPUExecutionProvider";
  if (l == "cuda") return "CUDAExecutionProvider";
  if (l == "tensorrt" || l == "trt") return "TensorrtExecutionProvider";
  return p;
}

std::vector<std::string> split_providers(const std::string &list) {
  std::vector<std::string> out;
  std::stringstream ss(list);
  for (std::string item; std::getline(ss, item, ',');) {
    item.erase(0, item.find_first_not_of(" \t"));
    item.erase(item.find_last_not_of(" \t") + 1);
    if (item.empty()) continue;
    const std::string full = full_provider(item);
    if (std::find(out.begin(), out.end(), full) == out.end()) out.push_back(full);
  }
  return out;
}

std::string dims_str(const std::vector<std::int64_t> &d) {
  std::string s = "[";
  for (std::size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + (d[i] < 0 ? std::string("None") : std::to_string(d[i]));
  return s + "]";
}

std::string shape_arg(const std::string &name, const SectionSpec &spec, int batch) {
  std::string s = name + ":" + std::to_string(batch);
  for (std::size_t i = 1; i < spec.input.shape.size(); ++i) s += "x" + std::to_string(spec.input.shape[i]);
  return s;
}

}  // namespace

OrtBackend::OrtBackend(const Bundle &bundle, const OrtBackendOptions &o)
    : lib_(std::make_unique<OrtLibrary>(o.library)), env_(nullptr, nullptr), cpu_(nullptr, nullptr) {
  const OrtApi &api = lib_->api();
  if (o.intra_op_threads < 0) fail(Code::Argument, "intra_op_threads must be >= 0 (0 = the backend's default)");
  threads_ = o.intra_op_threads > 0 ? o.intra_op_threads : available_cpus();
  max_batch_ = o.max_batch;
  num_classes_ = bundle.manifest.num_classes();
  input_shape_ = bundle.manifest.input.shape;

  std::vector<std::string> providers = split_providers(o.providers);
  const std::vector<std::string> available = lib_->available_providers();
  for (const std::string &p : providers) {
    if (std::find(available.begin(), available.end(), p) == available.end()) {
      std::string have;
      for (const auto &a : available) have += (have.empty() ? "" : ", ") + a;
      fail(Code::Backend, "execution provider '" + p + "' is not available in the ONNX Runtime library " + lib_->path() +
                              "; it has: " + have + " (CUDA/TensorRT need a GPU build of onnxruntime)");
    }
    if (p != "CPUExecutionProvider" && p != "CUDAExecutionProvider" && p != "TensorrtExecutionProvider")
      fail(Code::Backend, "execution provider '" + p + "' is not supported by sdedge; use cpu, cuda or tensorrt");
  }
  providers.erase(std::remove(providers.begin(), providers.end(), "CPUExecutionProvider"), providers.end());
  if (providers.empty()) {
    device_name_ = "onnxruntime-cpu-" + slug(cpu_model()) + "-t" + std::to_string(threads_);
  } else {
    device_name_ = std::string("onnxruntime-") + (providers[0] == "TensorrtExecutionProvider" ? "tensorrt" : "cuda") +
                   "-" + slug(gpu_name(0));
  }

  OrtEnv *env = nullptr;
  lib_->check(api.CreateEnv(ORT_LOGGING_LEVEL_ERROR, "sdedge", &env), "onnxruntime CreateEnv");
  env_ = lib_->own(env);
  OrtMemoryInfo *mi = nullptr;
  lib_->check(api.CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &mi), "onnxruntime CreateCpuMemoryInfo");
  cpu_ = lib_->own(mi);

  for (const SectionSpec &spec : bundle.manifest.sections) load(providers, spec, bundle);
  num_sections_ = static_cast<int>(sessions_.size());
  if (o.full_graph && bundle.manifest.has_file("full.onnx") && num_sections_ > 0) {
    // image -> the deepest exit's logits: the first section's input, the last section's logits
    SectionSpec full;
    full.index = 0;
    full.file = "full.onnx";
    full.input = bundle.manifest.sections.front().input;
    full.logits = bundle.manifest.sections.back().logits;
    load(providers, full, bundle);
  }
}

OrtPtr<OrtSession> OrtBackend::open(const std::vector<std::string> &providers, const SectionSpec &spec,
                                    const Bundle &bundle, const std::string &rel) {
  auto so = session_options(providers, spec, bundle);
  const std::string path = bundle.file(rel);
  OrtSession *s = nullptr;
  lib_->check(lib_->api().CreateSession(env_.get(), path.c_str(), so.get(), &s), "onnxruntime could not load " + path);
  return lib_->own(s);
}

void OrtBackend::load(const std::vector<std::string> &providers, const SectionSpec &spec, const Bundle &bundle) {
  sessions_.push_back(open(providers, spec, bundle, spec.file));
  const std::string where = spec.index == 0 ? "the full graph (" + spec.file + ")"
                                            : "section " + std::to_string(spec.index) + " (" + spec.file + ")";
  std::vector<const TensorSpec *> outs;
  if (spec.features) outs.push_back(&*spec.features);
  if (!spec.head) outs.push_back(&spec.logits);  // a version-2 trunk returns its features only
  check_io(sessions_.back().get(), {&spec.input}, outs, where);
  in_names_.push_back(spec.input.name);
  feat_names_.push_back(spec.features ? spec.features->name : "");
  logit_names_.push_back(spec.logits.name);  // a version-2 section's: its head's output
  if (spec.index == 0) return;
  if (spec.head) {
    SectionSpec as_graph = spec;  // the head's own input shape for TensorRT's optimisation profile
    as_graph.input = spec.head->input;
    heads_.push_back(open(providers, as_graph, bundle, spec.head->file));
    check_io(heads_.back().get(), {&spec.head->input}, {&spec.head->logits},
             "the exit head of section " + std::to_string(spec.index) + " (" + spec.head->file + ")");
    split_heads_ = true;
  } else {
    heads_.push_back(OrtPtr<OrtSession>(nullptr, nullptr));
  }
}

OrtBackend::~OrtBackend() {
  heads_.clear();
  sessions_.clear();
  cpu_.reset();
  env_.reset();
}

OrtPtr<OrtSessionOptions> OrtBackend::session_options(const std::vector<std::string> &providers,
                                                      const SectionSpec &spec, const Bundle &bundle) const {
  const OrtApi &api = lib_->api();
  OrtSessionOptions *raw = nullptr;
  lib_->check(api.CreateSessionOptions(&raw), "onnxruntime CreateSessionOptions");
  auto so = lib_->own(raw);
  lib_->check(api.SetIntraOpNumThreads(so.get(), threads_), "onnxruntime SetIntraOpNumThreads");
  lib_->check(api.SetInterOpNumThreads(so.get(), 1), "onnxruntime SetInterOpNumThreads");
  lib_->check(api.SetSessionExecutionMode(so.get(), ORT_SEQUENTIAL), "onnxruntime SetSessionExecutionMode");
  lib_->check(api.SetSessionGraphOptimizationLevel(so.get(), ORT_ENABLE_ALL), "onnxruntime SetSessionGraphOptimizationLevel");
  lib_->check(api.SetSessionLogSeverityLevel(so.get(), 3), "onnxruntime SetSessionLogSeverityLevel");
  // chained sections: a spinning pool would compete with the next section's pool for the cores
  lib_->check(api.AddSessionConfigEntry(so.get(), "session.intra_op.allow_spinning", "0"), "onnxruntime AddSessionConfigEntry");
  lib_->check(api.AddSessionConfigEntry(so.get(), "session.inter_op.allow_spinning", "0"), "onnxruntime AddSessionConfigEntry");
  for (const std::string &p : providers) {
    if (p == "TensorrtExecutionProvider") {
      OrtTensorRTProviderOptionsV2 *t = nullptr;
      lib_->check(api.CreateTensorRTProviderOptions(&t), "onnxruntime CreateTensorRTProviderOptions");
      auto trt = lib_->own(t);
      // explicit shapes 1..max_batch: a shrinking batch never rebuilds an engine; engines cached in the bundle
      const std::string cache = join_path(bundle.path, "engines");
      ::mkdir(cache.c_str(), 0755);
      const std::string name = spec.input.name;
      const std::string mn = shape_arg(name, spec, 1), mx = shape_arg(name, spec, max_batch_);
      const char *keys[] = {"trt_engine_cache_enable", "trt_engine_cache_path", "trt_profile_min_shapes",
                            "trt_profile_opt_shapes", "trt_profile_max_shapes"};
      const char *vals[] = {"1", cache.c_str(), mn.c_str(), mn.c_str(), mx.c_str()};
      lib_->check(api.UpdateTensorRTProviderOptions(trt.get(), keys, vals, 5), "onnxruntime TensorRT provider options");
      lib_->check(api.SessionOptionsAppendExecutionProvider_TensorRT_V2(so.get(), trt.get()),
                  "onnxruntime could not add the TensorRT execution provider");
    } else if (p == "CUDAExecutionProvider") {
      OrtCUDAProviderOptionsV2 *c = nullptr;
      lib_->check(api.CreateCUDAProviderOptions(&c), "onnxruntime CreateCUDAProviderOptions");
      auto cuda = lib_->own(c);
      lib_->check(api.SessionOptionsAppendExecutionProvider_CUDA_V2(so.get(), cuda.get()),
                  "onnxruntime could not add the CUDA execution provider");
    }
  }
  return so;
}

void OrtBackend::check_io(OrtSession *s, const std::vector<const TensorSpec *> &inputs,
                          const std::vector<const TensorSpec *> &outputs, const std::string &where) const {
  const OrtApi &api = lib_->api();
  OrtAllocator *alloc = nullptr;
  lib_->check(api.GetAllocatorWithDefaultOptions(&alloc), "onnxruntime GetAllocatorWithDefaultOptions");
  for (int kind = 0; kind < 2; ++kind) {
    const std::vector<const TensorSpec *> &want = kind == 0 ? inputs : outputs;
    std::size_t n = 0;
    lib_->check(kind == 0 ? api.SessionGetInputCount(s, &n) : api.SessionGetOutputCount(s, &n), "onnxruntime I/O count");
    std::vector<std::string> got_names;
    for (std::size_t i = 0; i < n; ++i) {
      char *name = nullptr;
      lib_->check(kind == 0 ? api.SessionGetInputName(s, i, alloc, &name) : api.SessionGetOutputName(s, i, alloc, &name),
                  "onnxruntime I/O name");
      got_names.emplace_back(name);
      lib_->check(api.AllocatorFree(alloc, name), "onnxruntime AllocatorFree");
    }
    std::vector<std::string> want_names, a = got_names;
    for (const auto *w : want) want_names.push_back(w->name);
    std::vector<std::string> b = want_names;
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    const char *what = kind == 0 ? "input" : "output";
    if (a != b) {
      auto list = [](const std::vector<std::string> &v) {
        std::string out = "[";
        for (std::size_t i = 0; i < v.size(); ++i) out += (i ? ", '" : "'") + v[i] + "'";
        return out + "]";
      };
      fail(Code::Bundle, where + ": the graph's " + what + "s are " + list(got_names) + " but the manifest says " +
                             list(want_names) + " (sections swapped or the manifest edited?)");
    }
    for (std::size_t i = 0; i < n; ++i) {
      OrtTypeInfo *ti = nullptr;
      lib_->check(kind == 0 ? api.SessionGetInputTypeInfo(s, i, &ti) : api.SessionGetOutputTypeInfo(s, i, &ti),
                  "onnxruntime I/O type");
      auto type_info = lib_->own(ti);
      const OrtTensorTypeAndShapeInfo *tsi = nullptr;
      lib_->check(api.CastTypeInfoToTensorInfo(type_info.get(), &tsi), "onnxruntime CastTypeInfoToTensorInfo");
      const TensorSpec *w = *std::find_if(want.begin(), want.end(), [&](const TensorSpec *t) { return t->name == got_names[i]; });
      if (!tsi) fail(Code::Bundle, where + ": " + what + " '" + w->name + "' is not a tensor");
      std::size_t nd = 0;
      lib_->check(api.GetDimensionsCount(tsi, &nd), "onnxruntime GetDimensionsCount");
      std::vector<std::int64_t> dims(nd);
      lib_->check(api.GetDimensions(tsi, dims.data(), nd), "onnxruntime GetDimensions");
      bool ok = dims.size() == w->shape.size();
      for (std::size_t d = 0; ok && d < nd; ++d) ok = dims[d] < 0 || dims[d] == w->shape[d];  // dynamic fits any
      if (!ok)
        fail(Code::Bundle, where + ": " + what + " '" + w->name + "' has shape " + dims_str(dims) +
                               " in the graph but " + dims_str(w->shape) + " in the manifest (null = dynamic)");
      ONNXTensorElementDataType et{};
      lib_->check(api.GetTensorElementType(tsi, &et), "onnxruntime GetTensorElementType");
      // the manifest's dtype against the graph's element type (runtime/backends/onnxruntime.py _ORT_TYPES)
      struct Known { const char *dtype; ONNXTensorElementDataType et; const char *ort; };
      static const Known kKnown[] = {{"float32", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "tensor(float)"},
                                     {"float16", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, "tensor(float16)"},
                                     {"int8", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8, "tensor(int8)"},
                                     {"uint8", ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, "tensor(uint8)"}};
      const Known *want_t = nullptr, *got_t = nullptr;
      for (const Known &k : kKnown) {
        if (w->dtype == k.dtype) want_t = &k;
        if (et == k.et) got_t = &k;
      }
      if (want_t && want_t->et != et)
        fail(Code::Bundle, where + ": " + what + " '" + w->name + "' has type " +
                               (got_t ? got_t->ort : "tensor(element type " + std::to_string(static_cast<int>(et)) + ")") +
                               " in the graph but dtype '" + w->dtype + "' in the manifest");
    }
  }
}

TensorPtr OrtBackend::upload(const float *x, std::int64_t rows) {
  auto t = std::make_unique<OrtTensor>();
  t->shape = input_shape_;
  t->shape[0] = rows;
  std::size_t count = 1;
  for (std::int64_t d : t->shape) count *= static_cast<std::size_t>(d);
  OrtValue *v = nullptr;
  // ORT only reads an input; the caller's buffer outlives the call that uses this tensor
  lib_->check(lib_->api().CreateTensorWithDataAsOrtValue(cpu_.get(), const_cast<float *>(x), count * sizeof(float),
                                                         t->shape.data(), t->shape.size(),
                                                         ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &v),
              "onnxruntime CreateTensorWithDataAsOrtValue");
  t->value = lib_->own(v);
  t->data = x;
  return t;
}

TensorPtr OrtBackend::run_section(int k, const DeviceTensor &in, std::vector<float> &logits) {
  if (k < 1 || k > num_sections_) fail(Code::Internal, "run_section: no section " + std::to_string(k));
  const auto i = static_cast<std::size_t>(k - 1);
  if (heads_[i]) {
    TensorPtr f = run_graph(i, in, nullptr, "section " + std::to_string(k));
    run_head(k, *f, logits);
    return f;
  }
  return run_graph(i, in, &logits, "section " + std::to_string(k));
}

TensorPtr OrtBackend::run_trunk(int k, const DeviceTensor &in) {
  if (k < 1 || k > num_sections_ || !heads_[static_cast<std::size_t>(k - 1)])
    fail(Code::Internal, "run_trunk: section " + std::to_string(k) + " has no exit head of its own");
  return run_graph(static_cast<std::size_t>(k - 1), in, nullptr, "section " + std::to_string(k));
}

void OrtBackend::run_head(int k, const DeviceTensor &features, std::vector<float> &logits) {
  if (k < 1 || k > num_sections_ || !heads_[static_cast<std::size_t>(k - 1)])
    fail(Code::Internal, "run_head: section " + std::to_string(k) + " has no exit head of its own");
  run_graph(static_cast<std::size_t>(k - 1), features, &logits, "the exit head of section " + std::to_string(k), true);
}

void OrtBackend::run_full(const DeviceTensor &in, std::vector<float> &logits) {
  if (!has_full()) fail(Code::Internal, "run_full: full.onnx is not loaded");
  run_graph(static_cast<std::size_t>(num_sections_), in, &logits, "the full graph");
}

TensorPtr OrtBackend::run_graph(std::size_t i, const DeviceTensor &in_base, std::vector<float> *logits_out,
                                const std::string &what, bool head) {
  const OrtApi &api = lib_->api();
  const auto &in = static_cast<const OrtTensor &>(in_base);
  // a head: features_k -> logits_k; a trunk (no logits asked): -> features_k; else a section with its head
  const std::string &logit_name = logit_names_[i];
  const bool want_features = !head && !feat_names_[i].empty();
  const bool want_logits = logits_out != nullptr;
  if (want_logits && !head && i < heads_.size() && heads_[i])
    fail(Code::Internal, what + " has no logits output: its exit head is a graph of its own");
  const char *in_name = head ? feat_names_[i].c_str() : in_names_[i].c_str();
  const char *out_names[2] = {nullptr, nullptr};
  std::size_t n_out = 0;
  if (want_features) out_names[n_out++] = feat_names_[i].c_str();
  if (want_logits) out_names[n_out++] = logit_name.c_str();
  OrtValue *outs[2] = {nullptr, nullptr};
  const OrtValue *inputs[1] = {in.value.get()};
  OrtSession *session = head ? heads_[i].get() : sessions_[i].get();
  OrtStatus *st = api.Run(session, nullptr, &in_name, inputs, 1, out_names, n_out, outs);
  OrtPtr<OrtValue> o0 = lib_->own(outs[0]), o1 = lib_->own(outs[1]);
  lib_->check(st, "onnxruntime failed running " + what);
  const std::int64_t rows = in.shape[0];
  if (want_logits) {
    OrtValue *lv = want_features ? o1.get() : o0.get();
    read_logits(lv, rows, *logits_out, what);
  }
  if (!want_features) return nullptr;
  auto f = std::make_unique<OrtTensor>();
  OrtTensorTypeAndShapeInfo *info = nullptr;
  lib_->check(api.GetTensorTypeAndShape(o0.get(), &info), "onnxruntime GetTensorTypeAndShape");
  auto owned_info = lib_->own(info);
  std::size_t nd = 0;
  lib_->check(api.GetDimensionsCount(info, &nd), "onnxruntime GetDimensionsCount");
  f->shape.resize(nd);
  lib_->check(api.GetDimensions(info, f->shape.data(), nd), "onnxruntime GetDimensions");
  float *fd = nullptr;
  lib_->check(api.GetTensorMutableData(o0.get(), reinterpret_cast<void **>(&fd)), "onnxruntime GetTensorMutableData");
  if (nd < 1 || f->shape[0] != rows)
    fail(Code::Backend, what + " returned features of shape " + dims_str(f->shape) +
                            " for " + std::to_string(rows) + " rows");
  f->data = fd;
  f->value = std::move(o0);
  return f;
}

void OrtBackend::read_logits(OrtValue *lv, std::int64_t rows, std::vector<float> &logits, const std::string &what) {
  const OrtApi &api = lib_->api();
  float *ld = nullptr;
  lib_->check(api.GetTensorMutableData(lv, reinterpret_cast<void **>(&ld)), "onnxruntime GetTensorMutableData");
  OrtTensorTypeAndShapeInfo *linfo = nullptr;
  lib_->check(api.GetTensorTypeAndShape(lv, &linfo), "onnxruntime GetTensorTypeAndShape");
  auto owned_linfo = lib_->own(linfo);
  std::size_t count = 0;
  lib_->check(api.GetTensorShapeElementCount(linfo, &count), "onnxruntime GetTensorShapeElementCount");
  if (count != static_cast<std::size_t>(rows * num_classes_))  // never read past what the graph returned
    fail(Code::Backend, what + " returned " + std::to_string(count) + " logits for " +
                            std::to_string(rows) + " rows of " + std::to_string(num_classes_) + " classes");
  logits.assign(ld, ld + rows * num_classes_);
}

TensorPtr OrtBackend::take_rows(const DeviceTensor &t_base, const std::vector<std::int64_t> &keep) {
  const auto &t = static_cast<const OrtTensor &>(t_base);
  auto out = std::make_unique<OrtTensor>();
  out->shape = t.shape;
  out->shape[0] = static_cast<std::int64_t>(keep.size());
  std::size_t row = 1;
  for (std::size_t d = 1; d < t.shape.size(); ++d) row *= static_cast<std::size_t>(t.shape[d]);
  out->storage.resize(row * keep.size());
  for (std::size_t r = 0; r < keep.size(); ++r)
    std::memcpy(out->storage.data() + r * row, t.data + static_cast<std::size_t>(keep[r]) * row, row * sizeof(float));
  OrtValue *v = nullptr;
  lib_->check(lib_->api().CreateTensorWithDataAsOrtValue(cpu_.get(), out->storage.data(),
                                                         out->storage.size() * sizeof(float), out->shape.data(),
                                                         out->shape.size(), ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &v),
              "onnxruntime CreateTensorWithDataAsOrtValue");
  out->value = lib_->own(v);
  out->data = out->storage.data();
  return out;
}

std::string OrtBackend::runtime_version() const { return lib_->version(); }

}  // namespace sdedge
