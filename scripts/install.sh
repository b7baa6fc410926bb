#!/usr/bin/env bash
# Installs strata's three servers as systemd services next to containerd, or removes them.
#
#   sudo scripts/install.sh                  # build (release), install, print the containerd config
#   sudo scripts/install.sh --uninstall      # remove binaries, units and docs; keep configs and data
#
# Options:
#   --destdir DIR     install under DIR (packaging, tests); nothing is started or reloaded
#   --prefix DIR      binaries in DIR/bin, docs in DIR/share/doc/strata (default /usr/local)
#   --bin-dir DIR     take the binaries from DIR instead of building them
#   --containerd V    the containerd version to print the config for (1.7 or 2; default:
#                     what `containerd --version` says, else 2)
#
# Configs in /etc/strata are installed only where none exists (an operator's edits stay);
# containerd's own config is never touched: the tables to merge are printed.
set -euo pipefail
cd "$(dirname "$0")/.."

destdir="" prefix=/usr/local bin_dir="" containerd_version="" uninstall=0
while (($#)); do
  case $1 in
    --destdir) destdir=$2; shift 2 ;;
    --prefix) prefix=$2; shift 2 ;;
    --bin-dir) bin_dir=$2; shift 2 ;;
    --containerd) containerd_version=$2; shift 2 ;;
    --uninstall) uninstall=1; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

servers=(strata-snapshotter strata-content strata-differ)
names=(snapshotter content differ)
bin=$destdir$prefix/bin
units=$destdir/etc/systemd/system
etc=$destdir/etc/strata
doc=$destdir$prefix/share/doc/strata
# Only act on the running system when installing into it.
live=0
[[ -z $destdir && -d /run/systemd/system ]] && live=1

if ((uninstall)); then
  for n in "${names[@]}"; do
    if ((live)); then
      systemctl disable --now "strata-$n.socket" "strata-$n.service" 2>/dev/null || true
    fi
    rm -f "$units/strata-$n.socket" "$units/strata-$n.service"
  done
  for s in "${servers[@]}" strata-containerd-config; do rm -f "$bin/$s"; done
  rm -rf "$doc"
  ((live)) && systemctl daemon-reload
  echo "strata removed. Kept: $etc (configs) and /var/lib/strata (snapshots, blobs)."
  echo "Remove strata's tables from containerd's config and restart containerd."
  exit 0
fi

if [[ -z $bin_dir ]]; then
  cargo build --release --bins --locked
  bin_dir=target/release
fi
for s in "${servers[@]}" strata-containerd-config; do
  [[ -x $bin_dir/$s ]] || { echo "install.sh: $bin_dir/$s missing" >&2; exit 1; }
done

install -d -m 0755 "$bin" "$units" "$doc"
install -d -m 0750 "$etc"
for s in "${servers[@]}" strata-containerd-config; do
  install -m 0755 "$bin_dir/$s" "$bin/$s"
done
for n in "${names[@]}"; do
  for kind in socket service; do
    # The units name /usr/local; follow --prefix.
    sed "s#/usr/local/#$prefix/#g" "deploy/systemd/strata-$n.$kind" > "$units/strata-$n.$kind"
    chmod 0644 "$units/strata-$n.$kind"
  done
  if [[ -e $etc/$n.toml ]]; then
    cmp -s "deploy/strata/$n.toml" "$etc/$n.toml" ||
      echo "kept $etc/$n.toml (it differs from the shipped deploy/strata/$n.toml: compare them)"
  else
    install -m 0640 "deploy/strata/$n.toml" "$etc/$n.toml"
  fi
done
install -m 0644 README.md "$doc/README.md"
install -m 0644 content-store/README.md "$doc/content-store.md"

if [[ -z $containerd_version ]]; then
  containerd_version=2
  if command -v containerd >/dev/null && containerd --version 2>/dev/null | grep -q ' v\?1\.'; then
    containerd_version=1.7
  fi
fi

if ((live)); then
  systemctl daemon-reload
fi
cat <<EOF
strata installed: $bin/{strata-snapshotter,strata-content,strata-differ}, units in $units,
configs in $etc (strata-content: set backend = "s3" and [content.s3] there for a fleet).

Start the servers before containerd:
  systemctl enable --now strata-snapshotter.socket strata-content.socket strata-differ.socket

Merge these tables into /etc/containerd/config.toml (containerd $containerd_version), then
restart containerd (deploy/containerd/ has commented versions):

EOF
"$bin/strata-containerd-config" --containerd "$containerd_version" \
  --snapshotter /run/strata/snapshotter.sock \
  --content /run/strata/content.sock \
  --differ /run/strata/differ.sock
