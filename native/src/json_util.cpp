// json_util.cpp: JSON file reading, the format-header check and value names for messages.
#include "json_util.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <stdexcept>

#include <algorithm>
#include <sstream>
#include <vector>

#include "errors.hpp"

namespace sdedge {

std::string py_type(const Json &v) {
  switch (v.type()) {
    case Json::value_t::object: return "dict";
    case Json::value_t::array: return "list";
    case Json::value_t::string: return "str";
    case Json::value_t::boolean: return "bool";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned: return "int";
    case Json::value_t::number_float: return "float";
    case Json::value_t::null: return "NoneType";
    default: return "unknown";
  }
}

std::string show(const Json &v, std::size_t max_len) {
  std::string s = v.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (s.size() > max_len) s = s.substr(0, max_len) + "...";
  return s;
}

bool is_int(const Json &v) { return v.is_number_integer(); }  // number_integer or number_unsigned
bool is_number(const Json &v) { return v.is_number(); }       // booleans are not numbers in nlohmann

Json read_json_file(const std::string &path, const std::string &what, std::uint64_t max_bytes) {
  // O_NONBLOCK: opening a FIFO planted in a bundle must not wait for a writer (it is refused just below)
  struct Fd {
    int fd;
    ~Fd() {
      if (fd >= 0) ::close(fd);
    }
  } f{::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC)};
  if (f.fd < 0) bundle_error("malformed " + what + path + " could not be read");
  struct stat st {};
  if (::fstat(f.fd, &st) != 0 || !S_ISREG(st.st_mode)) bundle_error("malformed " + what + path + " is not a regular file");
  if (max_bytes == 0) max_bytes = kMaxJsonBytes;
  const std::string too_large = path + " is larger than " + std::to_string(max_bytes) + " bytes; refusing to parse it";
  if (static_cast<std::uint64_t>(st.st_size) > max_bytes) bundle_error(too_large);
  std::string text;
  text.reserve(static_cast<std::size_t>(st.st_size));
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(f.fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) bundle_error("malformed " + what + path + " could not be read");
    if (n == 0) break;
    text.append(buf, static_cast<std::size_t>(n));
    if (text.size() > max_bytes) bundle_error(too_large);  // grew while we read it
  }
  // nesting is bounded while parsing: nlohmann's parser is iterative, but copying or printing a value
  // (messages, conversions) recurses, so a few hundred thousand '[' would overflow the stack later
  const Json::parser_callback_t depth_guard = [](int depth, Json::parse_event_t, Json &) {
    if (depth > kMaxJsonDepth) throw std::length_error("nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    return true;
  };
  try {
    return Json::parse(text, depth_guard);
  } catch (const nlohmann::json::exception &e) {
    bundle_error("malformed " + what + path + " is not valid JSON (" + e.what() + ")");
  } catch (const std::length_error &e) {
    bundle_error("malformed " + what + path + " is not valid JSON (" + e.what() + ")");
  }
}

int check_format(const Json &doc, const std::string &fmt, std::initializer_list<int> versions,
                 const std::string &what, const std::string &where, const std::string &recreate) {
  if (!doc.is_object()) bundle_error("malformed " + where + ": top level must be an object, got " + py_type(doc));
  auto f = doc.find("format");
  if (f == doc.end() || !f->is_string() || f->get<std::string>() != fmt) {
    std::string got = f == doc.end() ? "None" : show(*f);
    bundle_error(where + " is not an sdedge " + what + ": 'format' is " + got + ", expected \"" + fmt + "\"");
  }
  auto v = doc.find("format_version");
  if (v == doc.end() || !is_int(*v)) {
    bundle_error("malformed " + where + ": 'format_version' must be an integer, got " +
                 (v == doc.end() ? std::string("None") : show(*v)));
  }
  // an unsigned beyond int64 is certainly not a version we read
  long long ver = v->is_number_unsigned() && v->get<unsigned long long>() > 1000000ULL ? 1000000LL
                                                                                     : v->get<long long>();
  int max_v = *std::max_element(versions.begin(), versions.end());
  for (int ok : versions)
    if (ver == ok) return ok;
  std::ostringstream readable;
  std::vector<int> sorted(versions);
  std::sort(sorted.begin(), sorted.end());
  for (std::size_t i = 0; i < sorted.size(); ++i) readable << (i ? ", " : "") << sorted[i];
  bundle_error(where + " has format_version " + show(*v) + ", not supported by this sdedge (reads version " +
               readable.str() + "); " + (ver > max_v ? std::string("upgrade sdedge") : recreate));
}

}  // namespace sdedge
