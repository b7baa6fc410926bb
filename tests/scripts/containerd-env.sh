#!/usr/bin/env bash
# containerd-env.sh - run isolated stock containerd daemons (Debian builds) for strata's
# end-to-end tests, baseline measurements and for wiring our proxy plugins by hand.
# The Rust harness (crate strata-tests) calls `ensure` and `path`; it starts and stops its
# daemons itself.
#
# VERSION is "1.7" (Debian trixie) or "2" (whatever 2.x Debian sid carries; "2.1" and "2.x"
# are accepted as aliases of "2"). Installs are cached: delete $CTD_PREFIX/VERSION to refresh.
#
# Subcommands:
#   install VERSION            fetch Debian's containerd .deb (1.7 -> trixie, 2 -> sid)
#                              and dpkg -x it into $CTD_PREFIX/VERSION (idempotent).
#                              Nothing system-wide changes: apt runs against a private
#                              sources list / lists dir / cache under a temp dir; the
#                              mirror URI is derived from the machine's own apt config.
#   deps                       apt-get install (from the machine's default release)
#                              runc, busybox-static, zstd, hyperfine.
#   ensure VERSION             what a test needs, idempotent and safe to run concurrently:
#                              checks root, installs the missing ones of runc, busybox-static,
#                              zstd (apt-get update first), installs VERSION, checks runc.
#                              Prints only the bin dir on stdout.
#   start VERSION DIR [EXTRA_TOML]
#                              generate DIR/config.toml (v2 for 1.7, v3 for 2.x), append
#                              EXTRA_TOML (e.g. a [proxy_plugins] section), start containerd
#                              with root=DIR/root state=DIR/state grpc=DIR/containerd.sock,
#                              ttrpc=DIR/containerd.sock.ttrpc, debug=DIR/debug.sock, log to
#                              DIR/containerd.log; wait for `ctr version`; print the pid.
#   stop DIR                   kill remaining tasks, then SIGTERM (then SIGKILL) the daemon
#                              whose pid is in DIR/containerd.pid. Never kills by name.
#   clean DIR                  stop + unmount anything below DIR + rm -rf DIR.
#   ctr DIR ARGS...            run the matching ctr against DIR/containerd.sock.
#   env DIR                    print shell exports (CTR=..., CTD_SOCK=...) for DIR.
#   path VERSION               print the bin dir of an installed VERSION.
#   loopfs-up IMG MNT [SIZE]   create (if missing) a journaled ext4 image IMG, attach it
#                              to a loop device (direct-io) and mount it on MNT.
#   loopfs-down MNT            unmount MNT and detach its loop device.
#
# Isolation: each DIR has its own root, state, grpc/ttrpc/debug sockets and opt dir, and CRI + NRI
# are disabled. Still global when running containers: runc state (/run/containerd/runc/<ns>),
# ctr fifos (/run/containerd/fifo) and cgroup paths (/<ns>/<id>). Use a distinct namespace
# (ctr -n) or unique container ids when two daemons run containers at the same time.
#
# Environment overrides:
#   CTD_PREFIX     install prefix  (default ${STRATA_CTD_CACHE:-/var/cache/strata/containerd})
#   CTD_LOG_LEVEL  containerd log level        (default debug)
#   CTD_MIRROR     Debian mirror URI           (default: derived from apt config)
#   CTD_KEYRING    archive keyring for apt     (default: derived / debian-archive-keyring.gpg)
#   CTD_SUITE_1_7  suite for 1.7 (default trixie), CTD_SUITE_2 (default sid)
#   CTD_DISABLE_CRI  1 (default) disables CRI + NRI plugins so daemons don't clash
#   CTD_EXTRA_DISABLED  space-separated plugin IDs added to disabled_plugins
#                  (e.g. io.containerd.content.v1.content when a proxy content store is used)
#   CTD_START_TIMEOUT seconds to wait for the socket (default 30)
set -euo pipefail

CTD_PREFIX=${CTD_PREFIX:-${STRATA_CTD_CACHE:-/var/cache/strata/containerd}}
CTD_LOG_LEVEL=${CTD_LOG_LEVEL:-debug}
CTD_DISABLE_CRI=${CTD_DISABLE_CRI:-1}
CTD_START_TIMEOUT=${CTD_START_TIMEOUT:-30}

die() { echo "containerd-env: $*" >&2; exit 1; }
log() { echo "containerd-env: $*" >&2; }

# The canonical key of a version argument (the name of its install dir).
norm_ver() {
  case "$1" in
    1.7) echo 1.7 ;;
    2 | 2.1 | 2.x) echo 2 ;;
    *) die "unsupported version '$1' (use 1.7 or 2)" ;;
  esac
}

suite_for() {
  case "$(norm_ver "$1")" in
    1.7) echo "${CTD_SUITE_1_7:-trixie}" ;;
    2) echo "${CTD_SUITE_2:-sid}" ;;
  esac
}

major_of() { echo "${1%%.*}"; }

# --- mirror discovery -------------------------------------------------------
# Print "URI KEYRING" of the main (non-security) Debian archive, read from the
# machine's apt configuration (deb822 *.sources first, then one-line .list files).
discover_mirror() {
  local uri="" keyring="" f
  if [[ -n "${CTD_MIRROR:-}" ]]; then
    uri=$CTD_MIRROR
  else
    for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list.d/*.sources; do
      [[ -r $f ]] || continue
      # deb822 paragraphs: pick the first URIs whose Suites has no "-security"
      read -r uri keyring < <(awk '
        function flush() {
          if (uris != "" && types ~ /(^| )deb( |$)/ && suites !~ /-security/ && !done) {
            n = split(uris, u, " "); print u[1], (signed == "" ? "-" : signed); done = 1
          }
          uris = ""; suites = ""; types = ""; signed = ""
        }
        /^[[:space:]]*#/ { next }
        /^[[:space:]]*$/ { flush(); next }
        tolower($1) == "uris:"      { $1 = ""; sub(/^ +/, ""); uris = $0 }
        tolower($1) == "suites:"    { $1 = ""; suites = $0 }
        tolower($1) == "types:"     { $1 = ""; types = $0 }
        tolower($1) == "signed-by:" { $1 = ""; sub(/^ +/, ""); signed = $0 }
        END { flush() }' "$f") || true
      [[ -n $uri ]] && break
    done
    if [[ -z $uri ]]; then
      for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r $f ]] || continue
        uri=$(awk '$1 == "deb" && $0 !~ /-security/ {
                for (i = 2; i <= NF; i++) if ($i ~ /^[a-z+]+:\/\//) { print $i; exit } }' "$f")
        [[ -n $uri ]] && break
      done
    fi
  fi
  [[ -n $uri ]] || die "could not derive a Debian mirror URI from /etc/apt (set CTD_MIRROR)"
  if [[ -n "${CTD_KEYRING:-}" ]]; then
    keyring=$CTD_KEYRING
  elif [[ -z $keyring || $keyring == "-" || ! -r $keyring ]]; then
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  fi
  echo "$uri $keyring"
}

# --- install ----------------------------------------------------------------
cmd_install() {
  local ver
  ver=$(norm_ver "${1:?usage: install VERSION}")
  local suite dest marker
  suite=$(suite_for "$ver")
  dest=$CTD_PREFIX/$ver
  marker=$dest/.deb
  if [[ -x $dest/usr/bin/containerd && -s $marker ]]; then
    log "containerd $ver already installed in $dest ($(cat "$marker"))"
    "$dest/usr/bin/containerd" --version >&2
    return 0
  fi
  local uri keyring tmp
  # discover_mirror's die only ends the process substitution: check its result here
  read -r uri keyring < <(discover_mirror) || true
  [[ -n ${uri:-} ]] || die "could not derive a Debian mirror URI from /etc/apt (set CTD_MIRROR)"
  tmp=$(mktemp -d /tmp/ctd-apt.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" RETURN
  mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/empty.d" "$tmp/dl"
  echo "deb [signed-by=$keyring] $uri $suite main" >"$tmp/sources.list"
  local -a aptopts=(
    -o "Dir::Etc::sourcelist=$tmp/sources.list"
    -o "Dir::Etc::sourceparts=$tmp/empty.d"
    -o "Dir::Etc::preferences=/dev/null"
    -o "Dir::Etc::preferencesparts=$tmp/empty.d"
    -o "Dir::State::Lists=$tmp/lists"
    -o "Dir::Cache=$tmp/cache"
    -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
    -o "APT::Get::List-Cleanup=0"
    -o "Debug::NoLocking=1"
    -o "Acquire::Languages=none"
    -o "APT::Sandbox::User=root"
  )
  log "isolated apt update: $uri $suite (keyring $keyring)"
  apt-get "${aptopts[@]}" -qq update >&2 ||
    die "apt-get update of $suite failed (no network to the Debian mirror?)"
  (cd "$tmp/dl" && apt-get "${aptopts[@]}" -qq download "containerd/$suite" >&2) ||
    die "download of containerd/$suite failed (no network to the Debian mirror, or no such package in $suite?)"
  local deb
  deb=$(ls "$tmp"/dl/containerd_*.deb 2>/dev/null | head -n1)
  [[ -n $deb ]] || die "download of containerd/$suite failed"
  rm -rf "$dest.tmp"
  mkdir -p "$dest.tmp"
  dpkg -x "$deb" "$dest.tmp"
  basename "$deb" >"$dest.tmp/.deb"
  rm -rf "$dest"
  mv "$dest.tmp" "$dest"
  log "installed $(cat "$marker") into $dest"
  "$dest/usr/bin/containerd" --version >&2
}

# apt-get install PACKAGES... from the machine's own sources; apt-get update first, because a
# fresh machine may have no (or stale) package lists.
apt_install() {
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get -qq update >&2 ||
    die "apt-get update failed (no network to the Debian mirror?)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2 ||
    die "apt-get install $* failed"
}

pkg_installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]; }

cmd_deps() {
  apt_install runc busybox-static zstd hyperfine
}

cmd_ensure() {
  local ver p
  ver=$(norm_ver "${1:?usage: ensure VERSION}")
  [[ $(id -u) == 0 ]] || die "must run as root (containerd, runc and mounts need it)"
  mkdir -p "$CTD_PREFIX"
  # test binaries run in parallel: one installer at a time, the others find its result
  exec {lockfd}>"$CTD_PREFIX/.lock"
  flock "$lockfd"
  local -a missing=()
  for p in runc busybox-static zstd; do
    pkg_installed "$p" || missing+=("$p")
  done
  ((${#missing[@]} == 0)) || apt_install "${missing[@]}"
  cmd_install "$ver" >&2
  PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" command -v runc >/dev/null ||
    die "runc is not on PATH after installing it"
  exec {lockfd}>&-
  bindir "$ver"
}

bindir() {
  local ver
  ver=$(norm_ver "$1")
  local d=$CTD_PREFIX/$ver/usr/bin
  [[ -x $d/containerd ]] || die "containerd $ver not installed in $CTD_PREFIX/$ver (run: $0 install $ver)"
  echo "$d"
}

# --- config -------------------------------------------------------------------
write_config() {
  local ver=$1 dir=$2 extra=${3:-} major disabled
  major=$(major_of "$(norm_ver "$ver")")
  if [[ $CTD_DISABLE_CRI == 1 ]]; then
    if [[ $major -ge 2 ]]; then
      disabled='"io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.nri.v1.nri", "io.containerd.podsandbox.controller.v1.podsandbox"'
    else
      disabled='"io.containerd.grpc.v1.cri", "io.containerd.nri.v1.nri"'
    fi
  else
    disabled=''
  fi
  # extra plugin IDs to disable, e.g. CTD_EXTRA_DISABLED="io.containerd.content.v1.content"
  # (top-level keys cannot go into EXTRA_TOML: it is appended after the [tables])
  local p
  for p in ${CTD_EXTRA_DISABLED:-}; do
    disabled="${disabled:+$disabled, }\"$p\""
  done
  {
    if [[ $major -ge 2 ]]; then echo "version = 3"; else echo "version = 2"; fi
    cat <<EOF
# generated by containerd-env.sh for containerd $ver
root = "$dir/root"
state = "$dir/state"
disabled_plugins = [$disabled]

[grpc]
  address = "$dir/containerd.sock"

[ttrpc]
  address = "$dir/containerd.sock.ttrpc"

[debug]
  address = "$dir/debug.sock"
  level = "$CTD_LOG_LEVEL"

[metrics]
  address = ""

EOF
    # the opt plugin would otherwise create /opt/containerd (both 1.7 and 2.x)
    cat <<EOF
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"

EOF
    if [[ -n $extra ]]; then
      echo "# ---- appended from $extra ----"
      cat "$extra"
    fi
  } >"$dir/config.toml"
}

pid_alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }

cmd_start() {
  local ver=${1:?usage: start VERSION DIR [EXTRA_TOML]} dir=${2:?usage: start VERSION DIR [EXTRA_TOML]} extra=${3:-}
  local bin
  bin=$(bindir "$ver")
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  [[ -z $extra ]] || [[ -r $extra ]] || die "extra toml '$extra' not readable"
  if [[ -s $dir/containerd.pid ]] && pid_alive "$(cat "$dir/containerd.pid")"; then
    die "containerd already running in $dir (pid $(cat "$dir/containerd.pid"))"
  fi
  # unix socket paths are limited to 108 bytes
  (( ${#dir} + 24 < 108 )) || die "DIR path too long for unix sockets: $dir"
  mkdir -p "$dir/root" "$dir/state"
  write_config "$ver" "$dir" "$extra"
  echo "$ver" >"$dir/version"
  rm -f "$dir/containerd.sock" "$dir/containerd.sock.ttrpc" "$dir/debug.sock"
  # own bin dir first on PATH so the matching containerd-shim-runc-v2 is used;
  # runc comes from the system PATH.
  PATH="$bin:$PATH" setsid "$bin/containerd" --config "$dir/config.toml" \
    --log-level "$CTD_LOG_LEVEL" >>"$dir/containerd.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$dir/containerd.pid"
  local t=0
  until "$bin/ctr" --address "$dir/containerd.sock" version >/dev/null 2>&1; do
    if ! pid_alive "$pid"; then
      tail -n 30 "$dir/containerd.log" >&2 || true
      rm -f "$dir/containerd.pid"
      die "containerd $ver exited during startup (see $dir/containerd.log)"
    fi
    sleep 0.1
    t=$((t + 1))
    if (( t > CTD_START_TIMEOUT * 10 )); then
      tail -n 30 "$dir/containerd.log" >&2 || true
      die "containerd $ver did not answer within ${CTD_START_TIMEOUT}s (pid $pid)"
    fi
  done
  echo "$pid"
}

dir_version() {
  local dir=$1
  [[ -s $dir/version ]] || die "$dir has no version file (not started by this script?)"
  cat "$dir/version"
}

cmd_ctr() {
  local dir=${1:?usage: ctr DIR ARGS...}
  shift
  local ver bin
  ver=$(dir_version "$dir")
  bin=$(bindir "$ver")
  exec "$bin/ctr" --address "$dir/containerd.sock" "$@"
}

cmd_env() {
  local dir=${1:?usage: env DIR} ver bin
  dir=$(cd "$dir" && pwd)
  ver=$(dir_version "$dir")
  bin=$(bindir "$ver")
  echo "export CTD_DIR='$dir' CTD_VERSION='$ver' CTD_BIN='$bin' CTD_SOCK='$dir/containerd.sock'"
  echo "export CTR='$bin/ctr --address $dir/containerd.sock'"
}

kill_tasks() {
  local dir=$1 ver bin ctr ns id
  ver=$(dir_version "$dir")
  bin=$(bindir "$ver")
  ctr=("$bin/ctr" --address "$dir/containerd.sock")
  for ns in $("${ctr[@]}" namespaces ls -q 2>/dev/null); do
    for id in $("${ctr[@]}" -n "$ns" tasks ls -q 2>/dev/null); do
      "${ctr[@]}" -n "$ns" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
      sleep 0.2
      "${ctr[@]}" -n "$ns" tasks delete -f "$id" >/dev/null 2>&1 || true
    done
  done
}

cmd_stop() {
  local dir=${1:?usage: stop DIR} pid i
  [[ -d $dir ]] || die "no such dir $dir"
  dir=$(cd "$dir" && pwd)
  if [[ ! -s $dir/containerd.pid ]]; then
    log "no pid file in $dir; nothing to stop"
    return 0
  fi
  pid=$(cat "$dir/containerd.pid")
  if pid_alive "$pid"; then
    # only signal the pid if it really is a containerd started with this config
    if ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--config $dir/config.toml"; then
      die "pid $pid does not look like the containerd of $dir; refusing to kill"
    fi
    kill_tasks "$dir" || true
    kill -TERM "$pid"
    for ((i = 0; i < 200; i++)); do
      pid_alive "$pid" || break
      sleep 0.1
    done
    if pid_alive "$pid"; then
      log "pid $pid did not exit after SIGTERM; sending SIGKILL"
      kill -KILL "$pid" || true
    fi
  fi
  rm -f "$dir/containerd.pid"
  log "stopped containerd in $dir (pid $pid)"
}

cmd_clean() {
  local dir=${1:?usage: clean DIR} m
  [[ -d $dir ]] || return 0
  dir=$(cd "$dir" && pwd)
  [[ $dir != / ]] || die "refusing to clean /"
  cmd_stop "$dir" || true
  # unmount anything still mounted below DIR, deepest first
  for m in $(awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" || true
  done
  rm -rf "$dir"
}

cmd_path() { bindir "${1:?usage: path VERSION}"; }

# A dedicated journaled ext4 on a loop device, for benchmark roots. Useful where the
# host root fs is odd (e.g. ext4 without a journal, where inode allocation right after
# mass deletion is pathologically slow), and to keep benchmark I/O off other work.
cmd_loopfs_up() {
  local img=${1:?usage: loopfs-up IMAGE MOUNTPOINT [SIZE] [MKFS_TYPE]} mnt=${2:?usage: loopfs-up IMAGE MOUNTPOINT [SIZE]}
  local size=${3:-20G} fstype=${4:-ext4} dev
  mkdir -p "$mnt"
  if mountpoint -q "$mnt"; then log "$mnt already mounted"; return 0; fi
  if [[ ! -e $img ]]; then
    truncate -s "$size" "$img"
    case $fstype in
      ext4) mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$img" ;;
      *) "mkfs.$fstype" -q "$img" ;;
    esac
  fi
  dev=$(losetup --direct-io=on -f --show "$img")
  mount "$dev" "$mnt"
  log "mounted $img ($dev, $fstype) on $mnt"
}

cmd_loopfs_down() {
  local mnt=${1:?usage: loopfs-down MOUNTPOINT} dev
  mountpoint -q "$mnt" || { log "$mnt not mounted"; return 0; }
  dev=$(findmnt -n -o SOURCE --target "$mnt")
  # give freed blocks back to the (sparse) backing image before detaching
  fstrim "$mnt" 2>/dev/null || true
  umount "$mnt"
  case $dev in /dev/loop*) losetup -d "$dev" ;; esac
  log "unmounted $mnt ($dev)"
}

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

main() {
  local sub=${1:-}
  [[ -n $sub ]] || { usage; exit 2; }
  shift
  case "$sub" in
    install) cmd_install "$@" ;;
    deps) cmd_deps "$@" ;;
    ensure) cmd_ensure "$@" ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    clean) cmd_clean "$@" ;;
    ctr) cmd_ctr "$@" ;;
    env) cmd_env "$@" ;;
    path) cmd_path "$@" ;;
    loopfs-up) cmd_loopfs_up "$@" ;;
    loopfs-down) cmd_loopfs_down "$@" ;;
    mirror) discover_mirror ;;
    -h | --help | help) usage ;;
    *) die "unknown subcommand '$sub'" ;;
  esac
}

main "$@"
