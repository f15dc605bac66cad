// hostinfo.cpp: CPU/GPU names and CPU count, read as common/hostinfo.py reads them.
#include "hostinfo.hpp"

#include <glob.h>
#include <sched.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <memory>
#include <vector>

namespace sdedge {

namespace {
std::string trim(const std::string &s) {
  std::size_t i = 0, j = s.size();
  while (i < j && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  while (j > i && std::isspace(static_cast<unsigned char>(s[j - 1]))) --j;
  return s.substr(i, j - i);
}

std::string lower(std::string s) {
  for (char &c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string board_model() {
  for (const char *path : {"/proc/device-tree/model", "/sys/firmware/devicetree/base/model"}) {
    std::ifstream f(path, std::ios::binary);
    if (!f) continue;
    std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    while (!text.empty() && text.back() == '\0') text.pop_back();
    text = trim(text);
    if (!text.empty()) return text;
  }
  return "";
}
}  // namespace

std::string slug(const std::string &text, std::size_t max_len) {
  std::string s = lower(text);
  for (const char *mark : {"(r)", "(tm)", "(c)"}) {
    for (std::size_t p; (p = s.find(mark)) != std::string::npos;) s.erase(p, std::char_traits<char>::length(mark));
  }
  std::string out;
  for (char c : s) {
    const bool keep = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.';
    if (keep) out += c;
    else if (out.empty() || out.back() != '-') out += '-';
  }
  auto strip = [](std::string &v, bool front) {
    if (front) while (!v.empty() && (v.front() == '-' || v.front() == '.')) v.erase(v.begin());
    while (!v.empty() && (v.back() == '-' || v.back() == '.')) v.pop_back();
  };
  strip(out, true);
  if (out.size() > max_len) out.resize(max_len);
  strip(out, false);
  return out.empty() ? "unknown" : out;
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    const std::string key = lower(trim(line.substr(0, colon))), value = trim(line.substr(colon + 1));
    if ((key == "model name" || key == "hardware" || key == "cpu model") && !value.empty()) return value;
  }
  std::string board = board_model();
  if (!board.empty()) return board;
  struct utsname u {};
  if (::uname(&u) == 0 && u.machine[0]) return u.machine;
  return "unknown";
}

int available_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  const long n = ::sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<int>(n) : 1;
}

std::string gpu_name(int index) {
  std::vector<std::string> names;
  glob_t g{};
  if (::glob("/proc/driver/nvidia/gpus/*/information", 0, nullptr, &g) == 0) {
    for (std::size_t i = 0; i < g.gl_pathc; ++i) {
      std::ifstream f(g.gl_pathv[i]);
      for (std::string line; std::getline(f, line);) {
        if (lower(line).rfind("model:", 0) == 0) {
          names.push_back(trim(line.substr(6)));
          break;
        }
      }
    }
  }
  ::globfree(&g);
  if (names.empty() && ::access("/dev/nvidia0", F_OK) == 0) names.push_back("nvidia-gpu");
  if (names.empty() && ::access("/etc/nv_tegra_release", F_OK) == 0) {
    std::string b = board_model();
    names.push_back(b.empty() ? "nvidia-jetson" : b);
  }
  return index >= 0 && static_cast<std::size_t>(index) < names.size() ? names[static_cast<std::size_t>(index)]
                                                                        : "gpu" + std::to_string(index);
}

}  // namespace sdedge
