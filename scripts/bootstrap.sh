#!/usr/bin/env bash
# Idempotent setup for nfx on a Debian-like machine, as root: system packages, kernel headers
# that BCC can compile against, bpffs/tracefs mounts, and a venv that sees the distro's bcc.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${NFX_VENV:-$here/.venv}
log() { printf 'bootstrap: %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { log "must run as root (XDP, netns and bpffs need CAP_SYS_ADMIN)"; exit 1; }

export DEBIAN_FRONTEND=noninteractive
need=(python3-bpfcc bpfcc-tools iproute2 ethtool iperf3 nftables tcpdump iputils-ping python3-venv)
missing=()
for p in "${need[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done

kver=$(uname -r)
build=/lib/modules/$kver/build
hdr_pkg=""
if [ ! -e "$build/include" ]; then
  if apt-cache show "linux-headers-$kver" >/dev/null 2>&1; then
    hdr_pkg="linux-headers-$kver"
  else
    # No matching headers: take the nearest Debian generic headers (XDP/tc only use stable UAPI).
    hdr_pkg=${NFX_HEADERS_PKG:-}
    if [ -z "$hdr_pkg" ]; then
      # newest versioned Debian header metapackage (e.g. linux-headers-6.12-amd64)
      hdr_pkg=$(apt-cache pkgnames linux-headers- 2>/dev/null | grep -E '^linux-headers-[0-9]+\.[0-9]+-amd64$' | sort -V | tail -n1)
      [ -n "$hdr_pkg" ] || hdr_pkg=linux-headers-amd64
    fi
  fi
  missing+=("$hdr_pkg")
fi

if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -e "$build/include" ]; then
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
  arch=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
  [ -n "$arch" ] && [ -n "$common" ] || { log "no kernel headers found under /usr/src"; exit 1; }
  mkdir -p "/lib/modules/$kver"
  ln -sfn "$arch" "/lib/modules/$kver/build"
  ln -sfn "$common" "/lib/modules/$kver/source"
  log "linked /lib/modules/$kver/build -> $arch"
fi

mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || log "tracefs not mounted (optional)"

if [ ! -x "$venv/bin/python" ]; then
  log "creating venv $venv"
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
"$venv/bin/python" -c 'import bcc' || { log "venv cannot import bcc"; exit 1; }
"$venv/bin/pip" install -q -e "$here[test]"
log "ready: $venv/bin/nfx"
