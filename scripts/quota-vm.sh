#!/usr/bin/env bash
# Runs strata-snapshotter's size-limit tests in a qemu VM booting Debian's kernel, because the
# kernel of our machines has no ext4 quota format (CONFIG_QFMT_V2) and no xfs quotas
# (CONFIG_XFS_QUOTA): project quotas, and so the enforcement of size limits, cannot be tested
# on it directly. Two test binaries built here run there, ignored tests included:
#   snapshotter/tests/quota.rs             the snapshotter on loop-mounted ext4 and xfs;
#   tests/tests/e2e_snapshotter.rs size_limited_container_containerd_2
#                                          containerd 2.x and a container, with the harness's
#                                          scratch dirs on a loop-mounted ext4 with prjquota.
#
# The VM (software emulation, 2 CPUs, 3 GiB) sees this machine's root file system through 9p,
# read-only, under an overlay whose upper dir is a tmpfs (so nothing it writes reaches this
# machine), and runs the tests chrooted into it as root. Debian's kernel package is downloaded
# once into /var/cache/strata/quota-vm (apt-get download; nothing is installed). Needs root,
# qemu-system-x86 and busybox-static (scripts/install-deps.sh), and containerd 2.x installed by
# tests/scripts/containerd-env.sh (scripts/install-deps.sh does both).
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

cargo build -p strata-snapshotter --bins --tests --quiet
test_binary() {
  cargo test -p "$1" --test "$2" --no-run 2>&1 | sed -n "s/.*Executable tests\/$2.rs (\(.*\))/\1/p" | tail -1
}
bin=$(test_binary strata-snapshotter quota)
e2e=$(test_binary strata-tests e2e_snapshotter)
for b in "$bin" "$e2e"; do
  [[ -n $b && -x $repo/$b ]] || { echo "quota-vm: test binary not found ($b)" >&2; exit 1; }
done

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
mkdir -p /lower /rw
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 host /lower
mount -t tmpfs rw /rw; mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /host
mount -t tmpfs tmp /host/tmp; mount -t tmpfs run /host/run
mount -t proc proc /host/proc; mount -t sysfs sys /host/sys
mount -t cgroup2 cgroup2 /host/sys/fs/cgroup; mount -t devtmpfs dev /host/dev
cp /tests.sh /host/tmp/tests.sh
echo "quota-vm: kernel \$(uname -r)"
chroot /host /bin/sh /tmp/tests.sh
poweroff -f
EOF
cat > "$work/initrd/tests.sh" <<EOF
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin RUST_BACKTRACE=1
cd $repo/snapshotter && $repo/$bin --include-ignored --test-threads=1 2>&1
rc=\$?
# The harness's scratch dirs, containerd's and strata's roots among them, on project quotas.
truncate -s 2G /var/tmp/qfs.img && mkfs.ext4 -q -F -O quota,project /var/tmp/qfs.img &&
  mkdir -p /var/tmp/qfs && mount -o loop,prjquota /var/tmp/qfs.img /var/tmp/qfs || rc=1
cd $repo/tests && STRATA_TEST_TMPDIR=/var/tmp/qfs $repo/$e2e size_limited_container --include-ignored --test-threads=1 2>&1 || rc=1
echo "quota-vm: exit \$rc"
EOF
chmod +x "$work/initrd/init"
(cd "$work/initrd" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > "$work/initrd.gz")

echo "quota-vm: booting $pkg with $bin and $e2e"
timeout 1500 qemu-system-x86_64 -machine accel=tcg -cpu max -m 3G -smp 2 -nographic -no-reboot \
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
