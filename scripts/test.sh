#!/usr/bin/env bash
# The whole test suite: installs its prerequisites, checks formatting and lints, builds the
# three servers and runs unit, integration and end-to-end tests (the latter against private
# containerd 1.7 and 2.x daemons). Run as root: the tests mount filesystems and run containers.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The end-to-end tests start these binaries; they look for them next to the test executables.
cargo build --workspace --bins --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
# The benchmark command in quick mode, on the debug builds: keeps it working end to end on
# both containerd releases; its figures say nothing about speed.
target/debug/strata-bench --quick --containerd 2,1.7
# Size limits need project quotas, which this machine's kernel lacks: the snapshotter's quota
# tests and a size-limited container on containerd 2.x run in a VM booting Debian's kernel.
scripts/quota-vm.sh
# Fuzzing: every target of fuzz/ for 30 s from its committed corpus; any crash fails the run.
scripts/fuzz.sh 30
