# Sourced by tools/setup.sh and tools/env.sh: `arbor_libclang` prints the
# libclang that bindgen (RocksDB's C API) can load, or fails.
#
# bindgen loads libclang at build time through clang-sys,
# which looks in $LIBCLANG_PATH alone when it is set, else in
# `llvm-config --prefix`/{bin,lib,lib64}, $LD_LIBRARY_PATH, $LIBRARY_PATH and
# /usr/local/llvm*/lib*, /usr/{local/,}lib*{,/*,/*/*}, for libclang.so,
# libclang-*.so, libclang.so.* or libclang-*.so.*, skipping names with
# "-cpp." (libclang-cpp is the C++ interface, which bindgen cannot use) and
# libraries of another ELF class. This mirrors that search, and also requires
# the C API bindgen calls, which a look-alike (LLVM 13's libclang-cpp13.so
# passes clang-sys's name filter) lacks. Among several, clang-sys loads the
# highest version; a look-alike parses as version 0, below any real one.
arbor_libclang() {
  local dirs=() d f name
  if [ -n "${LIBCLANG_PATH:-}" ] && [ -f "$LIBCLANG_PATH" ]; then
    if grep -qa clang_createIndex "$LIBCLANG_PATH"; then echo "$LIBCLANG_PATH"; return 0; fi
    return 1
  elif [ -n "${LIBCLANG_PATH:-}" ]; then
    dirs=("$LIBCLANG_PATH")
  else
    if command -v llvm-config >/dev/null 2>&1; then
      local prefix
      prefix=$(llvm-config --prefix 2>/dev/null | head -n 1)
      [ -n "$prefix" ] && dirs+=("$prefix/bin" "$prefix/lib" "$prefix/lib64")
    fi
    local IFS=:
    for d in ${LD_LIBRARY_PATH:-} ${LIBRARY_PATH:-}; do [ -n "$d" ] && dirs+=("$d"); done
    unset IFS
    shopt -s nullglob
    for d in /usr/local/llvm*/lib* /usr/local/lib*/*/* /usr/local/lib*/* /usr/local/lib* \
      /usr/lib*/*/* /usr/lib*/* /usr/lib*; do
      [ -d "$d" ] && dirs+=("$d")
    done
    shopt -u nullglob
  fi
  shopt -s nullglob
  for d in "${dirs[@]}"; do
    for f in "$d"/libclang.so "$d"/libclang-*.so "$d"/libclang.so.* "$d"/libclang-*.so.*; do
      name=$(basename "$f")
      case "$name" in *-cpp.*) continue ;; esac
      # EI_CLASS (byte 4 of the ELF header): 2 is 64-bit, as this build is.
      [ "$(od -An -j4 -N1 -tu1 "$f" 2>/dev/null | tr -d ' ')" = 2 ] || continue
      # The C API bindgen calls. clang-sys's name filter lets through
      # libclang-cppNN.so (LLVM 13's C++ interface library): its dynamic
      # symbols lack clang_createIndex.
      grep -qa clang_createIndex "$f" 2>/dev/null || continue
      shopt -u nullglob
      echo "$f"
      return 0
    done
  done
  shopt -u nullglob
  return 1
}

