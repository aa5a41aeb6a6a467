#!/usr/bin/env bash
# Coverage-guided fuzzing of every decoder of outside bytes (AFL++ through
# cargo-afl; the targets are `arbor::fuzz::TARGETS`, built by `fuzz/`).
#
#   tools/fuzz.sh [--seconds N] [--minimize] [TARGET ...]
#
# Runs each target (all by default) for N seconds (default 20) from its
# committed corpus `fuzz/corpus/TARGET/`, and fails if any input crashed or
# hung it; those inputs are copied to `fuzz/findings/TARGET/` (not
# committed) to replay with `arbor-fuzz TARGET < FILE`. With --minimize the
# corpus is replaced by the smallest set of inputs (old and new) that keeps
# the coverage seen (afl-cmin), named by content: the long run's way to
# grow the committed corpus. Prints each target's executions, paths and
# findings. tools/setup.sh --test installs cargo-afl (which builds AFL++).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=20
minimize=false
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --minimize) minimize=true; shift ;;
    -*) echo "usage: tools/fuzz.sh [--seconds N] [--minimize] [TARGET ...]" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done

# As cargo finds it: on PATH or in $CARGO_HOME/bin.
cargo afl --version >/dev/null 2>&1 || {
  echo "fuzz: cargo-afl is missing; run tools/setup.sh --test" >&2
  exit 1
}

# Instrumented builds differ from the suite's: their own target directory.
export CARGO_TARGET_DIR="${ARBOR_FUZZ_TARGET_DIR:-/var/cache/arbor/fuzz-target}"
(cd fuzz && cargo afl build --release --locked --quiet)
bin="$CARGO_TARGET_DIR/release/arbor-fuzz"

if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(ls fuzz/corpus)
fi

# AFL++ in a container: no CPU governor to check, cores may dump through a
# pipe, no screen to draw on.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1
export AFL_NO_AFFINITY=1 AFL_QUIET=1

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0
for t in "${targets[@]}"; do
  [ -d "fuzz/corpus/$t" ] || { echo "fuzz: no corpus for target $t" >&2; exit 2; }
  out="$work/$t"
  # -t: an input that runs over 2 s is a hang.
  cargo afl fuzz -V "$seconds" -t 2000 -i "fuzz/corpus/$t" -o "$out" -- "$bin" "$t" \
    >"$work/$t.log" 2>&1 || {
    echo "fuzz: afl-fuzz failed on $t:" >&2
    tail -n 20 "$work/$t.log" >&2
    exit 1
  }
  stats="$out/default/fuzzer_stats"
  stat() { sed -n "s/^$1 *: *//p" "$stats"; }
  found=()
  for kind in crashes hangs; do
    for f in "$out/default/$kind"/id*; do
      [ -e "$f" ] || continue
      mkdir -p "fuzz/findings/$t"
      cp "$f" "fuzz/findings/$t/$kind-$(sha1sum "$f" | cut -c1-16)"
      found+=("$kind")
    done
  done
  printf 'fuzz: %-12s %8s execs  %5s paths  %s crashes  %s hangs  (%ss)\n' \
    "$t" "$(stat execs_done)" "$(stat corpus_count)" "$(stat saved_crashes)" \
    "$(stat saved_hangs)" "$seconds"
  if [ ${#found[@]} -gt 0 ]; then
    echo "fuzz: $t: inputs that crash or hang it are in fuzz/findings/$t/" >&2
    failed=1
  elif $minimize; then
    all="$work/$t.all"
    mkdir -p "$all"
    cp "fuzz/corpus/$t"/* "$all/"
    cp "$out/default/queue"/id* "$all/" 2>/dev/null || true
    cargo afl cmin -i "$all" -o "$work/$t.min" -t 2000 -- "$bin" "$t" >/dev/null 2>&1
    # Seeds keep their names; what the fuzzer found is named by content.
    find "fuzz/corpus/$t" -type f ! -name 'seed-*' -delete
    for f in "$work/$t.min"/*; do
      name=$(basename "$f")
      case "$name" in seed-*) ;; *) name="found-$(sha1sum "$f" | cut -c1-16)" ;; esac
      cp "$f" "fuzz/corpus/$t/$name"
    done
    echo "fuzz: $t: corpus minimized to $(ls "fuzz/corpus/$t" | wc -l) inputs"
  fi
done
exit $failed
