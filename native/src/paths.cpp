// paths.cpp: relative-path normalisation and checks for the bundle reader.
#include "paths.hpp"

#include <sys/stat.h>

#include <climits>
#include <cstdlib>
#include <memory>
#include <vector>

#include "errors.hpp"

namespace sdedge {

std::string posix_normpath(const std::string &path) {
  if (path.empty()) return ".";
  bool absolute = path[0] == '/';
  std::vector<std::string> parts;
  std::size_t i = 0;
  while (i <= path.size()) {
    std::size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    std::string comp = path.substr(i, j - i);
    i = j + 1;
    if (comp.empty() || comp == ".") continue;
    if (comp == ".." && ((!absolute && parts.empty()) || (!parts.empty() && parts.back() == ".."))) {
      parts.push_back(comp);
    } else if (comp == "..") {
      if (!parts.empty()) parts.pop_back();
    } else {
      parts.push_back(comp);
    }
  }
  std::string out = absolute ? "/" : "";
  for (std::size_t k = 0; k < parts.size(); ++k) out += (k ? "/" : "") + parts[k];
  return out.empty() ? "." : out;
}

std::string check_relpath(const std::string &path, const std::string &where) {
  if (path.empty()) bundle_error("malformed manifest: " + where + ": file path must be a non-empty string");
  std::string norm = posix_normpath(path);
  bool bad = path[0] == '/' || path[0] == '\\' || path.find('\\') != std::string::npos ||
             path.find(':') != std::string::npos || norm.rfind("..", 0) == 0 || norm == "." ||
             path.find('\0') != std::string::npos;
  if (bad) {
    std::string shown;
    for (char c : path) shown += c == '\0' ? std::string("\\x00") : std::string(1, c);
    bundle_error("malformed manifest: " + where + ": path '" + shown +
                 "' escapes the bundle folder or is not a plain relative path");
  }
  return norm;
}

std::string join_path(const std::string &dir, const std::string &rel) {
  if (dir.empty()) return rel;
  return dir.back() == '/' ? dir + rel : dir + "/" + rel;
}

bool path_exists(const std::string &path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

bool is_dir(const std::string &path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_regular_file(const std::string &path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string resolve(const std::string &path) {
  std::unique_ptr<char, decltype(&std::free)> p(::realpath(path.c_str(), nullptr), &std::free);
  return p ? std::string(p.get()) : std::string();
}

bool is_inside(const std::string &parent, const std::string &child) {
  if (parent.empty() || child.empty()) return false;
  std::string prefix = parent == "/" ? parent : parent + "/";
  return child.size() > prefix.size() && child.compare(0, prefix.size(), prefix) == 0;
}

}  // namespace sdedge
