#!/usr/bin/env bash
# Demo: strata's servers wired into a private containerd (Debian's build, unpacked into a
# cache, nothing installed system-wide), then an image imported and a container run through
# them. Run as root:  scripts/demo.sh [--version 1.7|2] [--keep]
#   --version  containerd to run (default 2)
#   --keep     leave everything running and print how to use it; stop with scripts/demo.sh --stop
set -euo pipefail
cd "$(dirname "$0")/.."

version=2 keep=0 stop=0
while (($#)); do
  case $1 in
    --version) version=${2:?--version needs 1.7 or 2}; shift 2 ;;
    --keep) keep=1; shift ;;
    --stop) stop=1; shift ;;
    -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo: unknown argument $1" >&2; exit 2 ;;
  esac
done

demo=/run/strata-demo
env_sh=tests/scripts/containerd-env.sh
bin=target/release

stop_all() {
  "$env_sh" clean "$demo/ctd" 2>/dev/null || true
  local f pid
  for f in "$demo"/*.pid; do
    [[ -e $f ]] || continue
    pid=$(cat "$f")
    # Only signal what this demo started: the pid must still run one of our binaries.
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "strata-.*--address $demo/"; then
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  sleep 1
  rm -rf "$demo"
}

if ((stop)); then stop_all; echo "demo stopped"; exit 0; fi
[[ $(id -u) == 0 ]] || { echo "demo: run as root (containerd, mounts, runc)" >&2; exit 1; }
[[ ! -e $demo ]] || stop_all

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "installing prerequisites and containerd $version (cached after the first run)"
scripts/install-deps.sh >/dev/null
step "building strata (release)"
cargo build --release --bins --locked -q

mkdir -p "$demo"
((keep)) || trap stop_all EXIT

step "starting strata-snapshotter, strata-content, strata-differ on $demo/*.sock"
for name in snapshotter content differ; do
  extra=()
  # The differ writes through containerd's content service and reads layer blobs straight
  # from strata-content's directory.
  [[ $name == differ ]] && extra=(--content-address "$demo/ctd/containerd.sock"
                                  --content-root "$demo/state/content")
  "$bin/strata-$name" --address "$demo/$name.sock" --root "$demo/state/$name" \
    --log-level info "${extra[@]}" 2>"$demo/$name.log" &
  echo $! >"$demo/$name.pid"
done
for name in snapshotter content differ; do
  for _ in $(seq 100); do [[ -S $demo/$name.sock ]] && break; sleep 0.1; done
  [[ -S $demo/$name.sock ]] || { cat "$demo/$name.log"; echo "demo: strata-$name did not start" >&2; exit 1; }
  echo "strata-$name: pid $(cat "$demo/$name.pid"), log $demo/$name.log"
done

"$bin/strata-containerd-config" --containerd "$version" --snapshotter "$demo/snapshotter.sock" \
  --content "$demo/content.sock" --differ "$demo/differ.sock" >"$demo/proxy.toml"
step "starting containerd $version with strata in [proxy_plugins] (its own content store disabled)"
sed 's/^/    /' "$demo/proxy.toml"
CTD_LOG_LEVEL=info CTD_EXTRA_DISABLED=io.containerd.content.v1.content \
  "$env_sh" start "$version" "$demo/ctd" "$demo/proxy.toml" >/dev/null
ctr() { "$env_sh" ctr "$demo/ctd" -n strata-demo "$@"; }

step "ctr plugins ls (proxy plugins)"
ctr plugins ls | awk 'NR == 1 || /strata/'

step "building the busybox image fixture; importing it into strata (content, differ, snapshots)"
"$bin/strata-mkimage" busybox --compression gzip --out "$demo/busybox.tar" >/dev/null
ctr images import --snapshotter strata "$demo/busybox.tar"
image=$(ctr images ls -q | head -n1)
echo "layers applied by strata-differ: $(grep -c 'strata-differ applied layer' "$demo/differ.log" || true)" \
     "(read from blob files: $(grep 'strata-differ applied layer' "$demo/differ.log" | grep -c 'source="file"' || true))"

step "blobs served by strata-content (ctr content ls) and stored under its root"
ctr content ls
find "$demo/state/content/blobs" -type f | sed 's/^/    /'

step "snapshots served by strata-snapshotter (ctr snapshots --snapshotter strata ls)"
ctr snapshots --snapshotter strata ls

step "ctr run --rm --snapshotter strata $image"
ctr run --rm --snapshotter strata "$image" strata-demo-1 /bin/sh -c 'echo "hello from a container on strata"; uname -r'

step "a container's changes committed as a layer by strata-differ (ctr snapshots diff)"
ctr run --snapshotter strata "$image" strata-demo-2 /bin/sh -c 'echo changed > /etc/motd; rm /bin/ls'
ctr snapshots --snapshotter strata diff --keep strata-demo-2 | tar -tzvf - | sed 's/^/    /'
ctr containers rm strata-demo-2
echo "layers made by strata-differ: $(grep -c 'strata-differ made a layer' "$demo/differ.log" || true)"
# bytes_sent=0: the layer went into strata-content's directory and containerd only recorded it.
echo "bytes sent through containerd's content service: $(grep 'strata-differ made a layer' "$demo/differ.log" | grep -o 'bytes_sent=[0-9]*' | tail -1)"

if ((keep)); then
  step "left running"
  echo "  $env_sh ctr $demo/ctd -n strata-demo images ls"
  echo "  logs: $demo/*.log, $demo/ctd/containerd.log"
  echo "  stop: sudo scripts/demo.sh --stop"
else
  step "done; stopping everything"
fi
