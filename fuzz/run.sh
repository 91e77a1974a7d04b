#!/usr/bin/env bash
# Builds every fuzz target of fuzz/ and runs each for SECONDS_PER_TARGET seconds (default 15),
# starting from the seeds in fuzz/corpus/<target>; fails when any target crashes, hangs or runs
# out of memory. What each target covers, and how to fuzz for longer: docs/testing.md, "Fuzzing".
#
#   fuzz/run.sh [SECONDS_PER_TARGET]
#
# - cargo-fuzz at the version below is installed with `cargo install --locked` when missing.
# - The targets need the nightly toolchain. Without one the run is skipped with a message, except
#   under CI=true, where that is a failure.
# - Builds go to $CARGO_TARGET_DIR/fuzz (default fuzz/target). Inputs found during the run go to
#   a temporary directory, not into the committed seeds; a crashing input is kept in
#   fuzz/artifacts/<target>/ and the command that replays it is printed.
set -euo pipefail
cd "$(dirname "$0")"

CARGO_FUZZ_VERSION=0.13.2
seconds=${1:-15}

log() { printf '\n==> %s\n' "$*"; }
die() { printf 'fuzz/run.sh: %s\n' "$*" >&2; exit 1; }

[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || die "SECONDS_PER_TARGET must be a whole number of seconds, got '$seconds'"

if ! cargo +nightly --version >/dev/null 2>&1; then
  [ "${CI:-}" != true ] || die "no nightly toolchain, which the fuzz targets need (rustup toolchain install nightly)"
  printf 'fuzz/run.sh: SKIPPED: no nightly toolchain (rustup toolchain install nightly)\n' >&2
  exit 0
fi

# Built with the pinned stable toolchain (rust-toolchain.toml), into ~/.cargo/bin.
if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION (cargo install, a minute or two)"
  env -u CARGO_TARGET_DIR cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

# No sanitizer: orch's crates forbid unsafe code, so a sanitizer would mostly slow the build and
# the run down; what is looked for here are panics, hangs and memory blow-ups, which libFuzzer
# catches by itself. Overflow checks and debug assertions are on (cargo-fuzz's default).
# A short run is a smoke test: the dev profile (no optimisation) builds several times faster
# than release, which matters more than executions per second for a few seconds per target.
# ORCH_FUZZ_RELEASE=1 builds optimised targets, for long runs.
fuzz=(cargo +nightly fuzz)
opts=(--sanitizer none --target-dir "${CARGO_TARGET_DIR:-$PWD/target}/fuzz")
[ "${ORCH_FUZZ_RELEASE:-}" = 1 ] || opts+=(--dev)

log "building the fuzz targets ($(cargo +nightly --version))"
start=$SECONDS
"${fuzz[@]}" build "${opts[@]}"
echo "built in $((SECONDS - start)) s"

mapfile -t targets < <("${fuzz[@]}" list)
[ ${#targets[@]} -gt 0 ] || die "cargo fuzz list found no targets"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for target in "${targets[@]}"; do
  log "fuzzing $target for $seconds s"
  mkdir -p "$scratch/$target"
  # New inputs go to the first directory (scratch); the seeds are only read. -timeout: one
  # input taking this long is a hang; -rss_limit_mb: a parser must not need more memory.
  # libFuzzer's progress lines run to thousands: they go to a file, shown only on a crash.
  if "${fuzz[@]}" run "${opts[@]}" "$target" "$scratch/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    </dev/null >"$scratch/$target.log" 2>&1; then
    echo "$target: no crash ($(grep -m1 -o 'number_of_executed_units: *[0-9]*' "$scratch/$target.log" | tr -s ' '))"
  else
    tail -n 80 "$scratch/$target.log"
    failed+=("$target")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  printf '\nfuzz/run.sh: crashes in: %s\n' "${failed[*]}" >&2
  printf 'the inputs are in fuzz/artifacts/<target>/; replay one with\n' >&2
  printf '    cargo +nightly fuzz run --sanitizer none <target> fuzz/artifacts/<target>/<file>\n' >&2
  exit 1
fi
echo "all ${#targets[@]} fuzz targets ran ${seconds} s each without a crash"
