// preprocess.hpp: the caller's input -> the float32 NCHW batch the first section takes
// (runtime/preprocess.py): raw uint8 NHWC pixels normalised per channel, float input checked finite.
#pragma once

#include <cstdint>
#include <vector>

#include "manifest.hpp"

namespace sdedge {

class Preprocessor {
 public:
  explicit Preprocessor(const Manifest &m);

  std::int64_t c() const { return c_; }
  std::int64_t h() const { return h_; }
  std::int64_t w() const { return w_; }
  std::int64_t image_size() const { return c_ * h_ * w_; }

  // InputError ("input holds N NaN/Inf value(s); expected finite floats") unless every value is finite.
  void check_finite(const float *nchw, std::int64_t batch) const;
  // (pixel * scale - mean) / std  ==  pixel * a + b per channel, in float32 as numpy does; NHWC -> NCHW.
  void from_u8(const std::uint8_t *nhwc, std::int64_t batch, float *out_nchw) const;

 private:
  std::int64_t c_, h_, w_;
  std::vector<float> a_, b_;
};

}  // namespace sdedge
