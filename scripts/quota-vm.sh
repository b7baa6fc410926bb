#!/usr/bin/env bash
# Runs strata-snapshotter's size-limit tests (snapshotter/tests/quota.rs, ignored tests
# included) in a qemu VM booting Debian's kernel, because the kernel of our machines has no
# ext4 quota format (CONFIG_QFMT_V2) and no xfs quotas (CONFIG_XFS_QUOTA): project quotas, and
# so the enforcement of size limits, cannot be tested on it directly.
#
# The VM (software emulation, 2 CPUs, 2 GiB) mounts this machine's root file system read-only
# over 9p, puts a tmpfs on /tmp and runs the test binary built here, chrooted, as root. Debian's
# kernel package is downloaded once into /var/cache/strata/quota-vm (apt-get download; nothing
# is installed). Needs root, qemu-system-x86 and busybox-static (scripts/install-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

[[ $(id -u) == 0 ]] || { echo "quota-vm: run as root" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "quota-vm: qemu-system-x86_64 missing (scripts/install-deps.sh)" >&2; exit 1; }

cache=/var/cache/strata/quota-vm
mkdir -p "$cache"
kernel_pkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}'; }
pkg=$(kernel_pkg)
if [[ -z $pkg ]]; then
  apt-get update -qq
  pkg=$(kernel_pkg)
fi
[[ -n $pkg ]] || { echo "quota-vm: no linux-image-amd64 in apt's lists (apt-get update)" >&2; exit 1; }
kver=${pkg#linux-image-}
kroot=$cache/$pkg
if [[ ! -f $kroot/boot/vmlinuz-$kver ]]; then
  rm -rf "$kroot" "$cache"/*.deb
  (cd "$cache" && apt-get download -q "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  dpkg-deb -x "$cache/${pkg}"_*.deb "$kroot.tmp"
  busybox depmod -b "$kroot.tmp" "$kver"
  mv "$kroot.tmp" "$kroot"
fi
moddir=$kroot/lib/modules/$kver

# The modules the VM loads, dependencies first.
declare -A dep=() done_=()
while IFS=: read -r mod deps; do dep[$mod]=$deps; done < "$moddir/modules.dep"
order=()
add() {
  local m=$1 d
  [[ -n ${done_[$m]:-} ]] && return
  done_[$m]=1
  for d in ${dep[$m]:-}; do add "$d"; done
  order+=("$m")
}
# crc32c first: libcrc32c (xfs) and ext4 ask the crypto API for it, and no modprobe runs here.
for name in crc32c_generic virtio_pci 9pnet_virtio 9p loop ext4 quota_v2 xfs overlay; do
  path=$(grep -E "(^|/)${name//_/[_-]}\.ko:" "$moddir/modules.dep" | cut -d: -f1 | head -1)
  [[ -n $path ]] || { echo "quota-vm: module $name not in $pkg" >&2; exit 1; }
  add "$path"
done

cargo build -p strata-snapshotter --tests --quiet
bin=$(cargo test -p strata-snapshotter --test quota --no-run 2>&1 | sed -n 's/.*Executable tests\/quota.rs (\(.*\))/\1/p' | tail -1)
[[ -x $repo/$bin ]] || { echo "quota-vm: test binary not found ($bin)" >&2; exit 1; }

work=$(mktemp -d /tmp/strata-quota-vm.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/initrd/{bin,mods,proc,sys,dev,host}
cp "$(command -v busybox)" "$work/initrd/bin/busybox"
: > "$work/initrd/modules.list"
for m in "${order[@]}"; do
  cp "$moddir/$m" "$work/initrd/mods/"
  basename "$m" >> "$work/initrd/modules.list"
done
cat > "$work/initrd/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in \$(cat /modules.list); do insmod /mods/\$m || echo "quota-vm: insmod \$m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 host /host
mount -t tmpfs tmp /host/tmp; mount -t proc proc /host/proc; mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
echo "quota-vm: kernel \$(uname -r)"
chroot /host /bin/sh -c 'cd $repo/snapshotter && PATH=/usr/sbin:/usr/bin:/sbin:/bin $repo/$bin --include-ignored --test-threads=1 2>&1; echo "quota-vm: exit \$?"'
poweroff -f
EOF
chmod +x "$work/initrd/init"
(cd "$work/initrd" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > "$work/initrd.gz")

echo "quota-vm: booting $pkg with $bin"
timeout 900 qemu-system-x86_64 -machine accel=tcg -cpu max -m 2G -smp 2 -nographic -no-reboot \
  -kernel "$kroot/boot/vmlinuz-$kver" -initrd "$work/initrd.gz" \
  -append "console=ttyS0 panic=-1 quiet" \
  -fsdev "local,id=hostfs,path=/,security_model=none,readonly=on,multidevs=remap" \
  -device virtio-9p-pci,fsdev=hostfs,mount_tag=host > "$work/console.log" 2>&1 || true
# The console has the test binary's output between the kernel line and the exit line.
tr -d '\r' < "$work/console.log" | sed -n '/quota-vm: kernel/,/quota-vm: exit/p'
tr -d '\r' < "$work/console.log" | grep -q '^quota-vm: exit 0$' || {
  echo "quota-vm: FAILED; console:" >&2
  tail -40 "$work/console.log" >&2
  exit 1
}
