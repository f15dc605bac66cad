// paths.hpp: bundle-relative paths that cannot escape the bundle folder (runtime/manifest.py
// check_relpath) and the few filesystem questions the bundle reader asks.
#pragma once

#include <string>

namespace sdedge {

// posixpath.normpath for relative paths ("a/./b/../c" -> "a/c", "" -> ".").
std::string posix_normpath(const std::string &path);

// The normalised relative path, or BundleError "malformed manifest: <where>: path ... escapes the
// bundle folder or is not a plain relative path" (absolute, backslash, colon, "..", ".", NUL).
std::string check_relpath(const std::string &path, const std::string &where);

std::string join_path(const std::string &dir, const std::string &rel);
bool path_exists(const std::string &path);  // follows symlinks, as pathlib's exists
bool is_dir(const std::string &path);
bool is_regular_file(const std::string &path);  // follows symlinks, as pathlib's is_file
// realpath(3); empty string when it cannot be resolved.
std::string resolve(const std::string &path);
// True when `child` (resolved) lies strictly below `parent` (resolved).
bool is_inside(const std::string &parent, const std::string &child);

}  // namespace sdedge
