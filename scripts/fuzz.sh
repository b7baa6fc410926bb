#!/usr/bin/env bash
# Fuzzes what strata reads from untrusted bytes (fuzz/: cargo-fuzz targets, libFuzzer): every
# target runs for SECONDS (default 60) from its committed corpus fuzz/corpus/<target>/, new
# inputs going to a temporary directory so the committed corpus never grows. Fails when any
# target crashes (a panic, a broken invariant, a sanitizer report, an input over -timeout or
# -rss_limit_mb); the input is kept in fuzz/artifacts/<target>/ and printed in base64.
#
#   scripts/fuzz.sh [SECONDS]          # all targets
#   FUZZ_TARGETS="apply_tar" scripts/fuzz.sh 600
#
# Reproduce a crash: fuzz/target/.../<target> fuzz/artifacts/<target>/crash-... (or
# `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>` in fuzz/). Run as root: apply_tar writes
# owners, devices and trusted.* xattrs like the differ does, and each target runs in a private
# mount namespace where / is read-only, so an escape from a temporary root cannot touch the
# machine (the targets work on tmpfs under /dev/shm).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
[[ $seconds =~ ^[0-9]+$ ]] || { echo "usage: $0 [SECONDS]" >&2; exit 2; }
read -r -a targets <<<"${FUZZ_TARGETS:-apply_tar filter_parse fieldpath content_requests snapshot_requests}"

# cargo-fuzz, built once into a cache outside the repo (like install-deps.sh's garage).
CARGO_FUZZ_VERSION=0.13.2
fuzz_root=/var/cache/strata/cargo-fuzz-$CARGO_FUZZ_VERSION
if [[ ! -x $fuzz_root/bin/cargo-fuzz ]]; then
  mkdir -p /var/cache/strata
  (cd /var/cache/strata &&
    CARGO_TARGET_DIR=/var/cache/strata/cargo-fuzz-build cargo install --locked cargo-fuzz \
      --version "$CARGO_FUZZ_VERSION" --root "$fuzz_root")
  rm -rf /var/cache/strata/cargo-fuzz-build
fi
export PATH=$fuzz_root/bin:$PATH

# cargo-fuzz passes -Z flags (sanitizer, coverage passes), which the stable toolchain takes
# with RUSTC_BOOTSTRAP. The C code (ISA-L, zstd, SQLite) stays uninstrumented: cc would add
# -fsanitize=address, which ISA-L's configure cannot link with its -static.
export RUSTC_BOOTSTRAP=1
export CFLAGS=-fno-sanitize=address
# Kept between runs (CI clones afresh): only strata's own crates are rebuilt then.
fuzz_target_dir=${STRATA_FUZZ_TARGET_DIR:-/var/cache/strata/fuzz-target}
(cd fuzz && cargo fetch --locked >/dev/null && cargo fuzz build --target-dir "$fuzz_target_dir")
bin=$fuzz_target_dir/x86_64-unknown-linux-gnu/release

work=$(mktemp -d "${STRATA_FUZZ_WORK:-/dev/shm}/strata-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Each target in a mount namespace of its own with / read-only, if this machine allows it.
sandbox=(unshare --mount --propagation private -- sh -c 'mount -o remount,bind,ro / && exec "$@"' sh)
if ! "${sandbox[@]}" true 2>/dev/null; then
  echo "fuzz: cannot make / read-only in a mount namespace; fuzzing without that guard" >&2
  sandbox=()
fi

failed=()
start=$SECONDS
for t in "${targets[@]}"; do
  [[ -d fuzz/corpus/$t ]] || { echo "fuzz: no corpus for target $t" >&2; exit 2; }
  mkdir -p "$work/$t/new" "$work/$t/artifacts" "$work/$t/tmp"
  dict=()
  [[ -f fuzz/dict/$t.dict ]] && dict=("-dict=fuzz/dict/$t.dict")
  echo "fuzz: $t for ${seconds}s"
  status=0
  TMPDIR=$work/$t/tmp STRATA_FUZZ_TMP=$work/$t/tmp ASAN_OPTIONS=detect_odr_violation=0 \
    "${sandbox[@]}" "$bin/$t" \
    -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=30 -print_final_stats=1 \
    "${dict[@]}" -artifact_prefix="$work/$t/artifacts/" \
    "$work/$t/new" "fuzz/corpus/$t" >"$work/$t/log" 2>&1 || status=$?
  grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)' \
    "$work/$t/log" | sed "s/^/  /" || true
  if ((status != 0)); then
    failed+=("$t")
    tail -n 60 "$work/$t/log"
  fi
  # Crashes, and inputs slower than libFuzzer's -report_slow_units (kept, not failures).
  for a in "$work/$t/artifacts"/*; do
    [[ -e $a ]] || continue
    mkdir -p "fuzz/artifacts/$t"
    cp "$a" "fuzz/artifacts/$t/"
    echo "fuzz: $t: input kept as fuzz/artifacts/$t/$(basename "$a"), base64:"
    base64 -w 0 "$a"
    echo
  done
done
echo "fuzz: ${#targets[@]} targets in $((SECONDS - start))s"
echo "fuzz: $((${#targets[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
if ((${#failed[@]})); then
  echo "fuzz: FAILED: ${failed[*]}" >&2
  exit 1
fi
