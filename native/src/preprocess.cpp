// preprocess.cpp: input validation and uint8 NHWC -> normalised float NCHW.
#include "preprocess.hpp"

#include <cmath>
#include <string>

#include "errors.hpp"

namespace sdedge {

Preprocessor::Preprocessor(const Manifest &m) : c_(m.input.shape[1]), h_(m.input.shape[2]), w_(m.input.shape[3]) {
  for (std::int64_t ch = 0; ch < c_; ++ch) {
    const auto i = static_cast<std::size_t>(ch);
    const float sd = static_cast<float>(m.preprocess.std[i]);
    a_.push_back(static_cast<float>(m.preprocess.scale) / sd);
    b_.push_back(-static_cast<float>(m.preprocess.mean[i]) / sd);
  }
}

void Preprocessor::check_finite(const float *x, std::int64_t batch) const {
  const std::int64_t n = batch * image_size();
  std::int64_t bad = 0;
  for (std::int64_t i = 0; i < n; ++i) bad += !std::isfinite(x[i]);
  if (bad) fail(Code::Input, "input holds " + std::to_string(bad) + " NaN/Inf value(s); expected finite floats");
}

void Preprocessor::from_u8(const std::uint8_t *nhwc, std::int64_t batch, float *out) const {
  const std::int64_t hw = h_ * w_;
  for (std::int64_t n = 0; n < batch; ++n) {
    const std::uint8_t *img = nhwc + n * hw * c_;
    float *dst = out + n * hw * c_;
    for (std::int64_t ch = 0; ch < c_; ++ch) {
      const float a = a_[static_cast<std::size_t>(ch)], b = b_[static_cast<std::size_t>(ch)];
      float *plane = dst + ch * hw;
      for (std::int64_t p = 0; p < hw; ++p) {
        volatile float scaled = static_cast<float>(img[p * c_ + ch]) * a;  // two roundings, as numpy (no FMA)
        plane[p] = scaled + b;
      }
    }
  }
}

}  // namespace sdedge
