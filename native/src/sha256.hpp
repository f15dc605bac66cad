// sha256.hpp: hex sha256 of a file through OpenSSL's EVP interface (as bundle manifests record them).
#pragma once

#include <string>

namespace sdedge {

// Lower-case hex sha256 of the file's contents, read in 1 MiB chunks; BundleError when unreadable.
std::string sha256_file(const std::string &path);

}  // namespace sdedge
