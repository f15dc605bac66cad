// hostinfo.hpp: names of the machine for device names and profile file names (common/hostinfo.py).
#pragma once

#include <string>

namespace sdedge {

// Lower-case filesystem-safe form: "(r)", "(tm)", "(c)" dropped, runs of anything but [a-z0-9.] -> "-".
std::string slug(const std::string &text, std::size_t max_len = 48);
// The CPU's marketing name (/proc/cpuinfo), the board's model on ARM boards, else the architecture.
std::string cpu_model();
// CPUs this process may run on (sched_getaffinity).
int available_cpus();
// Name of NVIDIA GPU `index` from the driver, "gpu<index>" when unknown.
std::string gpu_name(int index = 0);

}  // namespace sdedge
