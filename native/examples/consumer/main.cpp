// A robot-loop-shaped C++ user of the sdedge C API, built with find_package(sdedge) (see CMakeLists.txt).
//
//   sdedge_consumer               prints the library's ABI version (no bundle needed)
//   sdedge_consumer BUNDLE [N]    answers N synthetic frames, each within a 5 ms deadline
#include <sdedge/sdedge.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

namespace {

struct SessionDeleter {
  void operator()(sdedge_session *s) const { sdedge_session_free(s); }
};
using Session = std::unique_ptr<sdedge_session, SessionDeleter>;

int fail(const char *what) {
  std::fprintf(stderr, "sdedge_consumer: %s: %s\n", what, sdedge_last_error());
  return 1;
}

}  // namespace

int main(int argc, char **argv) {
  std::printf("sdedge ABI %u (header %d)\n", static_cast<unsigned>(sdedge_abi_version()), SDEDGE_ABI_VERSION);
  if (sdedge_abi_version() < SDEDGE_ABI_VERSION) return 1;  // a newer library keeps older ABIs
  if (argc < 2) return 0;

  sdedge_session_options so;
  sdedge_session_options_init(&so);
  so.intra_op_threads = 1;
  sdedge_session *raw = nullptr;
  if (sdedge_session_create(argv[1], &so, &raw) != SDEDGE_OK) return fail("loading the bundle");
  Session session(raw);

  int32_t exits = 0, classes = 0;
  int64_t chw[3] = {0, 0, 0};
  if (sdedge_session_info(session.get(), &exits, &classes, chw) != SDEDGE_OK) return fail("info");
  std::vector<std::uint8_t> frame(static_cast<std::size_t>(chw[0] * chw[1] * chw[2]));

  const int frames = argc > 2 ? std::atoi(argv[2]) : 4;
  for (int i = 0; i < frames; ++i) {
    for (std::size_t k = 0; k < frame.size(); ++k) frame[k] = static_cast<std::uint8_t>((k * 7 + i * 13) & 0xff);
    sdedge_infer_options io;
    sdedge_infer_options_init(&io);
    io.deadline_ns = sdedge_now_ns() + 5'000'000;  // this frame's deadline: 5 ms from now
    sdedge_result r;
    if (sdedge_session_infer_u8(session.get(), frame.data(), 1, &io, &r, nullptr) != SDEDGE_OK) return fail("infer");
    std::printf("frame %d: label %d exit %d/%d deadline %s %.3f ms\n", i, r.label, r.exit_index, exits,
                r.deadline_met == 1 ? "met" : "missed", r.latency_ms);
  }
  return 0;
}
