#!/usr/bin/env bash
# The full run of docs/reliability.md's proofs, one after another, for a quiet machine (about
# 2 h on 2 cores): hostile layers, bad requests, 200 kill cycles per server, 20 rounds of
# load by 64 clients per server, and every fuzz target for FUZZ_SECONDS (default 600). CI runs
# each of them in a short form through scripts/test.sh; this is the long form whose figures
# docs/reliability.md reports. Run as root after scripts/install-deps.sh (the tests mount
# filesystems and start containerd). Stops at the first failure; each step's output is in the
# terminal, the figures on the lines the tests print with --nocapture.
#
#   scripts/reliability.sh
#   FUZZ_SECONDS=60 KILL_CYCLES=20 LOAD_ROUNDS=5 scripts/reliability.sh   # a shorter pass
set -euo pipefail
cd "$(dirname "$0")/.."

fuzz_seconds=${FUZZ_SECONDS:-600}
kill_cycles=${KILL_CYCLES:-200}
load_rounds=${LOAD_ROUNDS:-20}

step() { printf '\n== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

step "building the servers (the tests start them): debug, and release for the load step"
cargo build --locked --workspace --bins
cargo build --locked --release --workspace --bins

step "hostile layers: the differ's own cases and through a real containerd"
cargo test --locked -p strata-differ -- --nocapture hostile breakout hard_link
cargo test --locked -p strata-tests --test hostile_layers -- --nocapture

step "bad requests on every RPC of the three services"
cargo test --locked -p strata-tests --test bad_requests -- --nocapture

step "kill cycles: $kill_cycles per server"
STRATA_KILL_CYCLES=$kill_cycles cargo test --locked -p strata-tests --test kill_cycles \
  -- --nocapture --test-threads 1

step "load: 64 clients per server, $load_rounds rounds each (release builds)"
STRATA_LOAD_ROUNDS=$load_rounds cargo test --locked --release -p strata-tests --test load \
  -- --nocapture --test-threads 1

step "fuzzing: every target for $fuzz_seconds s"
scripts/fuzz.sh "$fuzz_seconds"

step "every proof held"
