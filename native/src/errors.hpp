// errors.hpp: the core's one exception type. Every refusal in the core throws sdedge::Error with a
// code that maps 1:1 onto sdedge_status (c_api.cpp converts; nothing else crosses the C ABI).
#pragma once

#include <stdexcept>
#include <string>

namespace sdedge {

// Same order and values as sdedge_status in sdedge.h (c_api.cpp static_asserts the match).
enum class Code : int { Argument = 1, Bundle = 2, Checksum = 3, Input = 4, Backend = 5, Policy = 6, Internal = 7 };

class Error : public std::runtime_error {
 public:
  Error(Code code, const std::string &message) : std::runtime_error(message), code_(code) {}
  Code code() const noexcept { return code_; }

 private:
  Code code_;
};

[[noreturn]] inline void fail(Code code, const std::string &message) { throw Error(code, message); }

// "malformed manifest: ..." and the like: BundleError in the Python reader.
[[noreturn]] inline void bundle_error(const std::string &message) { throw Error(Code::Bundle, message); }

}  // namespace sdedge
