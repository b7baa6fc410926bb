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
  systemd                    # systemd-socket-activate in the server lifecycle tests
  ca-certificates gcc make pkg-config  # -sys crates build C code
  nasm autoconf automake libtool       # isal-sys builds ISA-L (the differ's gzip inflate)
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
