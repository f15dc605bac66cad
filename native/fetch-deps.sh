#!/usr/bin/env bash
# Fetch the native core's build-time headers without root: Debian packages downloaded with apt through a
# PRIVATE apt configuration (own sources list, state and cache under DEST), checked against the sha256
# pinned below, and unpacked with `dpkg-deb -x` into DEST.
#
#   native/fetch-deps.sh [DEST]          default DEST: native/.deps (git-ignored)
#   native/fetch-deps.sh --all [DEST]    fetch every package even where the system has its headers
#
#   package              suite     gives
#   libonnxruntime-dev   trixie    ONNX Runtime C API headers (the library itself is dlopen'ed at run time)
#   nlohmann-json3-dev   bookworm  nlohmann/json.hpp
#   libssl-dev           bookworm  OpenSSL headers (+ link symlinks; libssl3/libcrypto3 is on every Debian 12)
#
# The mirror is read from this machine's own apt configuration (deb822 `URIs:` in
# /etc/apt/sources.list.d/*.sources, or `deb` lines in /etc/apt/sources.list); SDEDGE_DEBIAN_MIRROR
# overrides it. Packages are signed by Debian's archive keyring
# (/usr/share/keyrings/debian-archive-keyring.gpg). The architecture is dpkg's (SDEDGE_DEPS_ARCH overrides;
# amd64 and arm64 are pinned).
#
# By default a package is skipped when its headers are already available: SDEDGE_ORT_ROOT or
# /usr/include/onnxruntime, /usr/include/nlohmann/json.hpp, /usr/include/openssl/evp.h.
# Idempotent: a package whose verified .deb and unpacked stamp are present is not fetched again.
#
# To move a pin: run `apt-cache show PACKAGE` through the private configuration this script writes
# (see APT_OPTS below, DEST/apt) and copy the `Version:` and `SHA256:` fields.
set -euo pipefail

FETCH_ALL=0
DEST=""
for arg in "$@"; do
  case "$arg" in
    --all) FETCH_ALL=1 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    -*) echo "fetch-deps.sh: unknown option $arg" >&2; exit 2 ;;
    *) DEST="$arg" ;;
  esac
done
HERE="$(cd "$(dirname "$0")" && pwd)"
DEST="${DEST:-$HERE/.deps}"
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"

if [ -n "${SDEDGE_DEPS_ARCH:-}" ]; then
  ARCH="$SDEDGE_DEPS_ARCH"
elif command -v dpkg >/dev/null 2>&1; then
  ARCH="$(dpkg --print-architecture)"
else
  case "$(uname -m)" in
    x86_64) ARCH=amd64 ;;
    aarch64|arm64) ARCH=arm64 ;;
    *) ARCH="$(uname -m)" ;;
  esac
fi

# ---- pins: package version suite sha256, per architecture --------------------------------------------
# (values from `apt-cache show` through the private configuration; SHA256: field)
pins_for_arch() {
  case "$1" in
    amd64) cat <<'EOF'
libonnxruntime-dev 1.21.0+dfsg-1 trixie 14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08
nlohmann-json3-dev 3.11.2-2 bookworm ec57940def6b6186c30be0e0ee81d1e58f86d11a54a145b28686a1e3e4aae801
libssl-dev 3.0.20-1~deb12u2 bookworm 43ef5c109056b1507a0972631ee8292e727029aeda1516b4672cb041730ae3af
EOF
    ;;
    arm64) cat <<'EOF'
libonnxruntime-dev 1.21.0+dfsg-1 trixie d4b1967893865756c0fa8536be165259a8eb0e9068e60d322ba707ef4527e44e
nlohmann-json3-dev 3.11.2-2 bookworm ec57940def6b6186c30be0e0ee81d1e58f86d11a54a145b28686a1e3e4aae801
libssl-dev 3.0.20-1~deb12u2 bookworm c6941a83bebd83d2a1cd2db56418062d8f48b3200786aacafa194b75a93a3702
EOF
    ;;
    *) return 1 ;;
  esac
}

if ! PINS="$(pins_for_arch "$ARCH")"; then
  echo "fetch-deps.sh: no pinned packages for architecture '$ARCH' (amd64 and arm64 are pinned)." >&2
  echo "  Install the headers yourself (ONNX Runtime C API, nlohmann/json, OpenSSL) and set SDEDGE_ORT_ROOT." >&2
  exit 1
fi

# ---- which packages are needed ------------------------------------------------------------------------
have_system_headers() {
  case "$1" in
    libonnxruntime-dev)
      { [ -n "${SDEDGE_ORT_ROOT:-}" ] && { [ -f "$SDEDGE_ORT_ROOT/include/onnxruntime_c_api.h" ] ||
          [ -f "$SDEDGE_ORT_ROOT/include/onnxruntime/onnxruntime_c_api.h" ] ||
          [ -f "$SDEDGE_ORT_ROOT/include/onnxruntime/core/session/onnxruntime_c_api.h" ]; }; } ||
        [ -f /usr/include/onnxruntime/onnxruntime_c_api.h ] ;;
    nlohmann-json3-dev) [ -f /usr/include/nlohmann/json.hpp ] ;;
    libssl-dev) [ -f /usr/include/openssl/evp.h ] ;;
    *) return 1 ;;
  esac
}

stamp_of() { echo "$DEST/.stamps/$1_$2_$ARCH"; }
sha_of() { sha256sum "$1" | cut -d' ' -f1; }

TODO=()
while read -r pkg ver suite sha; do
  [ -n "$pkg" ] || continue
  if [ "$FETCH_ALL" = 0 ] && have_system_headers "$pkg"; then
    echo "fetch-deps: $pkg: using the system's headers"
    continue
  fi
  stamp="$(stamp_of "$pkg" "$ver")"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sha" ]; then
    echo "fetch-deps: $pkg $ver ($ARCH): present and verified"
    continue
  fi
  TODO+=("$pkg $ver $suite $sha")
done <<< "$PINS"

if [ "${#TODO[@]}" = 0 ]; then
  exit 0
fi

for tool in apt-get dpkg-deb sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "fetch-deps.sh: '$tool' is missing: this script needs a Debian-family system." >&2
    echo "  Elsewhere install the ONNX Runtime C headers, nlohmann/json and OpenSSL headers and set SDEDGE_ORT_ROOT." >&2
    exit 1
  }
done

# ---- the mirror, from this machine's own apt configuration ---------------------------------------------
find_mirror() {
  if [ -n "${SDEDGE_DEBIAN_MIRROR:-}" ]; then echo "$SDEDGE_DEBIAN_MIRROR"; return; fi
  local f uri
  # deb822 stanzas: take the URIs of a stanza whose suites are not *-security
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri="$(awk '
      BEGIN { IGNORECASE = 1 }
      /^[[:space:]]*$/ { if (u != "" && s !~ /-security/ && t ~ /(^|[[:space:]])deb([[:space:]]|$)/) { print u; exit } u = ""; s = ""; t = ""; next }
      /^URIs:/ { sub(/^URIs:[[:space:]]*/, ""); split($0, a, /[[:space:]]+/); u = a[1] }
      /^Suites:/ { sub(/^Suites:[[:space:]]*/, ""); s = $0 }
      /^Types:/ { sub(/^Types:[[:space:]]*/, ""); t = $0 }
      END { if (u != "" && s !~ /-security/ && t ~ /(^|[[:space:]])deb([[:space:]]|$)/) print u }
    ' "$f" | head -n1)"
    case "$uri" in http://*|https://*|file:/*) echo "$uri"; return ;; esac
  done
  # one-line style: deb [options] URI suite components
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    uri="$(awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                              if ($(i+1) !~ /-security/) { print $i; exit } }' "$f")"
    case "$uri" in http://*|https://*|file:/*) echo "$uri"; return ;; esac
  done
  return 1
}

if ! MIRROR="$(find_mirror)"; then
  echo "fetch-deps.sh: found no Debian mirror in /etc/apt (sources.list, sources.list.d/*.sources)." >&2
  echo "  Set SDEDGE_DEBIAN_MIRROR to a Debian archive URL, or provide the headers and set SDEDGE_ORT_ROOT." >&2
  exit 1
fi
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
if [ ! -f "$KEYRING" ]; then
  echo "fetch-deps.sh: $KEYRING is missing (package debian-archive-keyring)." >&2
  exit 1
fi

# ---- the private apt configuration ---------------------------------------------------------------------
A="$DEST/apt"
mkdir -p "$A/etc/apt/sources.list.d" "$A/etc/apt/preferences.d" "$A/etc/apt/apt.conf.d" \
         "$A/var/lib/apt/lists/partial" "$A/var/cache/apt/archives/partial" "$A/var/lib/dpkg" "$DEST/debs" "$DEST/.stamps"
: > "$A/var/lib/dpkg/status"
SUITES="$(printf '%s\n' "${TODO[@]}" | awk '{ print $3 }' | sort -u | tr '\n' ' ' | sed 's/ $//')"
cat > "$A/etc/apt/sources.list.d/sdedge-deps.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITES
Components: main
Architectures: $ARCH
Signed-By: $KEYRING
EOF
APT_OPTS=(
  -o "Dir::Etc=$A/etc/apt"
  -o "Dir::Etc::sourcelist=/dev/null"
  -o "Dir::Etc::sourceparts=$A/etc/apt/sources.list.d"
  -o "Dir::State=$A/var/lib/apt"
  -o "Dir::Cache=$A/var/cache/apt"
  -o "Dir::State::status=$A/var/lib/dpkg/status"
  -o "APT::Architecture=$ARCH"
  -o "APT::Architectures::=$ARCH"
  -o "Debug::NoLocking=1"
  -o "Acquire::Languages=none"
)
if [ "$(id -u)" = 0 ]; then
  APT_OPTS+=(-o "APT::Sandbox::User=root")   # the _apt user cannot write into a private folder
fi

echo "fetch-deps: mirror $MIRROR, suites $SUITES, arch $ARCH, into $DEST"
apt-get "${APT_OPTS[@]}" -q update >"$A/update.log" 2>&1 || {
  cat "$A/update.log" >&2
  echo "fetch-deps.sh: apt-get update through the private configuration failed (see above)." >&2
  exit 1
}

for item in "${TODO[@]}"; do
  read -r pkg ver suite sha <<< "$item"
  # the file name apt gives a download: the epoch's colon is written %3a
  deb_arch="$(apt-cache "${APT_OPTS[@]}" show "$pkg=$ver" 2>/dev/null | awk '/^Architecture:/ { print $2; exit }')"
  if [ -z "$deb_arch" ]; then
    echo "fetch-deps.sh: $pkg $ver ($suite, $ARCH) is not on $MIRROR any more." >&2
    echo "  Move the pin in native/fetch-deps.sh: apt-cache ${APT_OPTS[*]} show $pkg" >&2
    exit 1
  fi
  file="$DEST/debs/${pkg}_${ver//:/%3a}_${deb_arch}.deb"
  if [ ! -f "$file" ] || [ "$(sha_of "$file")" != "$sha" ]; then
    rm -f "$file"
    echo "fetch-deps: downloading $pkg $ver ($suite, $deb_arch)"
    (cd "$DEST/debs" && apt-get "${APT_OPTS[@]}" -q download "$pkg=$ver" >"$A/download.log" 2>&1) || {
      cat "$A/download.log" >&2
      echo "fetch-deps.sh: apt-get download $pkg=$ver failed." >&2
      exit 1
    }
  fi
  got="$(sha_of "$file")"
  if [ "$got" != "$sha" ]; then
    rm -f "$file"
    echo "fetch-deps.sh: sha256 mismatch for $pkg $ver ($ARCH): got $got, pinned $sha. Refusing it." >&2
    exit 1
  fi
  dpkg-deb -x "$file" "$DEST"
  echo "$sha" > "$(stamp_of "$pkg" "$ver")"
  echo "fetch-deps: $pkg $ver ($ARCH): verified sha256 $sha, unpacked"
done
