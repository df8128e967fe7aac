# Shared by scripts/serve and scripts/test: install what is missing, nothing else.
# Each check looks for exactly the file the build loads; tests/install_checks.rs tests the checks
# on fake trees (ROOT is / on a real machine).

# Prints the libclang that bindgen (clang-sys, runtime loading) would dlopen, or fails.
# clang-sys wants libclang.so, libclang-N.so, libclang.so.N or libclang-N.so.N in $LIBCLANG_PATH or
# the usual library folders. libclang-cpp.so.N (the C++ API, in Debian's base image) is not it.
find_libclang() {
  local root=${1%/} dir file
  for dir in ${LIBCLANG_PATH:+"$LIBCLANG_PATH"} "$root"/usr/lib/llvm-*/lib "$root"/usr/lib \
    "$root"/usr/lib/*-linux-gnu "$root"/usr/local/lib; do
    for file in "$dir"/libclang.so "$dir"/libclang-[0-9]*.so "$dir"/libclang.so.[0-9]* \
      "$dir"/libclang-[0-9]*.so.[0-9]*; do
      [ -e "$file" ] && { echo "$file"; return 0; }
    done
  done
  return 1
}

# True when openssl-sys can build: the headers and pkg-config's openssl.pc (both from libssl-dev).
has_openssl_dev() {
  local root=${1%/}
  [ -f "$root"/usr/include/openssl/ssl.h ] &&
    ls "$root"/usr/lib/*-linux-gnu/pkgconfig/openssl.pc "$root"/usr/lib/pkgconfig/openssl.pc \
      "$root"/usr/share/pkgconfig/openssl.pc 2>/dev/null | grep -q .
}

ensure_build_deps() {
  local missing=()
  command -v cc >/dev/null 2>&1 || missing+=(build-essential)
  find_libclang / >/dev/null || missing+=(libclang-dev)
  # The EdgeBase Rust SDK (a dev-dependency of the game interop tests) links OpenSSL via native-tls;
  # openssl-sys finds it through pkg-config's openssl.pc (from libssl-dev).
  command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
  has_openssl_dev / || missing+=(libssl-dev)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing system packages: ${missing[*]}" >&2
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  command -v cargo >/dev/null 2>&1 || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
}

# The interop tests drive the real npm clients and reference server with Node.js.
ensure_node_deps() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "installing nodejs and npm" >&2
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm >/dev/null
  fi
  if [ ! -d tests/interop/node_modules ] || [ tests/interop/package-lock.json -nt tests/interop/node_modules ]; then
    (cd tests/interop && npm ci --no-audit --no-fund --loglevel=error)
  fi
}
