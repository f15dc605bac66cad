// sha256.cpp: file digests with OpenSSL EVP (EVP_MD_CTX + EVP_sha256); no hand-written crypto.
#include "sha256.hpp"

#include <openssl/evp.h>

#include <cstdio>
#include <memory>
#include <vector>

#include "errors.hpp"

namespace sdedge {

namespace {
struct CtxFree {
  void operator()(EVP_MD_CTX *c) const { EVP_MD_CTX_free(c); }
};
struct FileClose {
  void operator()(std::FILE *f) const { std::fclose(f); }
};
}  // namespace

std::string sha256_file(const std::string &path) {
  std::unique_ptr<std::FILE, FileClose> f(std::fopen(path.c_str(), "rb"));
  if (!f) bundle_error("bundle file " + path + " could not be opened for its checksum");
  std::unique_ptr<EVP_MD_CTX, CtxFree> ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) fail(Code::Internal, "OpenSSL: EVP sha256 init failed");
  std::vector<unsigned char> buf(1 << 20);
  std::size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), f.get())) > 0) {
    if (EVP_DigestUpdate(ctx.get(), buf.data(), n) != 1) fail(Code::Internal, "OpenSSL: EVP sha256 update failed");
  }
  if (std::ferror(f.get())) bundle_error("bundle file " + path + " could not be read for its checksum");
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(ctx.get(), md, &len) != 1) fail(Code::Internal, "OpenSSL: EVP sha256 final failed");
  static const char hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * len);
  for (unsigned int i = 0; i < len; ++i) {
    out += hex[md[i] >> 4];
    out += hex[md[i] & 15];
  }
  return out;
}

}  // namespace sdedge
