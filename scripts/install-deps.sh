#!/usr/bin/env bash
# Installs what building and testing strata needs on a Debian machine (as root): Debian
# packages from the machine's own suite, then containerd 1.7 and 2.x from Debian's archive
# into a cache (nothing system-wide; the mirror is derived from the machine's apt sources).
set -euo pipefail
cd "$(dirname "$0")/.."

[[ $(id -u) == 0 ]] || { echo "install-deps: run as root" >&2; exit 1; }

packages=(
  runc busybox-static zstd   # containers and fixtures in the end-to-end tests
  docker-registry            # a local registry on 127.0.0.1 for pull/push tests
  e2fsprogs util-linux       # loop-mounted ext4 for benchmarks, mount/umount
  xfsprogs qemu-system-x86   # size-limit tests in a VM with project quotas (quota-vm.sh)
  systemd                    # systemd-socket-activate in the server lifecycle tests
  ca-certificates gcc make pkg-config  # -sys crates build C code
  nasm autoconf automake libtool       # isal-sys builds ISA-L (the differ's gzip inflate)
  isal pigz                  # igzip and unpigz: containerd's walking differ pipes gzip through
                             # them when on PATH (2.x igzip, else unpigz), as on a tuned node;
                             # the benchmark measures the built-ins at their best
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

tests/scripts/containerd-env.sh install 1.7
tests/scripts/containerd-env.sh install 2

# Garage, the S3-compatible object store the S3 backend's tests run as a private 3-node cluster
# (tests/src/garage.rs). Built from crates.io once into a versioned cache dir, because the
# build takes about 15 minutes on two cores; tests look for the binary there (or in
# $STRATA_GARAGE). Changing the version means changing GARAGE_VERSION in tests/src/garage.rs.
GARAGE_VERSION=2.5.0
garage_root=/var/cache/strata/garage-$GARAGE_VERSION
if [[ ! -x $garage_root/bin/garage ]]; then
  command -v cargo >/dev/null || { echo "install-deps: cargo is needed to build garage" >&2; exit 1; }
  garage_target=/var/cache/strata/garage-build
  mkdir -p /var/cache/strata
  # Outside the repo, so neither its .cargo/config.toml nor its target dir are involved.
  (cd /var/cache/strata &&
    CARGO_TARGET_DIR=$garage_target cargo install --locked garage \
      --version "$GARAGE_VERSION" --root "$garage_root")
  rm -rf "$garage_target"
fi
