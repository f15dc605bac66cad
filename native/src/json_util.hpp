// json_util.hpp: reading sdedge's JSON files (manifest, calibration, profiles) with nlohmann/json, the
// shared format-header check (common/formats.py) and Python-like names of JSON values for messages.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include <nlohmann/json.hpp>

namespace sdedge {

// Objects keep the file's key order, as Python's dict does (so "the first problem" is the same one).
using Json = nlohmann::ordered_json;

// The Python type name of a JSON value as json.loads would produce it (dict, list, str, int, float,
// bool, NoneType), so messages read like the Python reader's.
std::string py_type(const Json &v);

// A short rendering of a value for messages (its JSON text, cut to `max_len` characters).
std::string show(const Json &v, std::size_t max_len = 200);

// True for a JSON number that Python reads as int (not bool, not float).
bool is_int(const Json &v);
// True for a JSON number of either kind (not bool).
bool is_number(const Json &v);

// The bounds every sdedge JSON file is read within (runtime/bundle.py's MAX_JSON_BYTES, MAX_JSON_DEPTH).
constexpr std::uint64_t kMaxJsonBytes = 16ull * 1024 * 1024;
constexpr int kMaxJsonDepth = 64;

// Parse the file at `path`; BundleError "malformed <what><path> is not valid JSON (<why>)" when it is
// not JSON (bad syntax, invalid UTF-8, nested deeper than kMaxJsonDepth), naming the file; a path that is
// not a regular file (a FIFO, a device) is refused without waiting on it. `max_bytes` > 0 refuses larger
// files (0: kMaxJsonBytes).
Json read_json_file(const std::string &path, const std::string &what = "", std::uint64_t max_bytes = 0);

// common/formats.py check_format: `doc` must be an object whose "format" is `fmt` and whose integer
// "format_version" is one of `versions`. Returns the version. `what` names the kind of file,
// `where` the file, `recreate` the fix for a version older than this sdedge reads.
int check_format(const Json &doc, const std::string &fmt, std::initializer_list<int> versions,
                 const std::string &what, const std::string &where, const std::string &recreate);

}  // namespace sdedge
