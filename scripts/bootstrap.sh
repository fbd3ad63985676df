#!/usr/bin/env bash
# Idempotent setup for nfx on a Debian-like machine, as root: system packages, kernel headers
# that BCC can compile against, bpffs/tracefs mounts, and a venv that sees the distro's bcc.
# Every failure says what failed and what to do; nothing ends without a word.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${NFX_VENV:-$here/.venv}
log() { printf 'bootstrap: %s\n' "$*" >&2; }
fail() { log "FAILED: $1"; log "what to do: $2"; exit 1; }
trap 'rc=$?; log "FAILED (exit $rc) at line $LINENO: $BASH_COMMAND"; log "what to do: rerun with bash -x scripts/bootstrap.sh to see the step, fix it, rerun (the script is idempotent)"; exit $rc' ERR

[ "$(id -u)" = 0 ] || fail "must run as root" "XDP, netns and bpffs need CAP_SYS_ADMIN: run it with sudo or as root"
command -v apt-get >/dev/null || fail "no apt-get" "nfx's setup expects a Debian-like machine (Debian 12 is what it is tested on)"

export DEBIAN_FRONTEND=noninteractive
lists_fresh=0
refresh_lists() {
  # Package lists of any age (or none) may be on the machine: query only fresh ones.
  [ "$lists_fresh" = 1 ] && return 0
  log "refreshing package lists (apt-get update)"
  apt-get update -qq >/dev/null 2>&1 || apt-get update -qq ||
    fail "apt-get update did not succeed" "check the machine's apt sources and that it reaches the Debian mirror, then rerun"
  lists_fresh=1
}

# etcd-server: the etcd that clusters keep global state in (nfx starts its own on free ports)
need=(python3-bpfcc bpfcc-tools iproute2 ethtool iperf3 nftables tcpdump iputils-ping python3-venv etcd-server)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done

kver=$(uname -r)
build=/lib/modules/$kver/build

# Headers for BCC: the kernel's own if the distro has them, else the newest Debian generic
# headers (XDP/tc programs use only the stable UAPI structs).
pick_headers() {
  local names
  if apt-cache show "linux-headers-$kver" >/dev/null 2>&1; then echo "linux-headers-$kver"; return; fi
  names=$(apt-cache pkgnames linux-headers- 2>/dev/null || true)
  # a versioned metapackage (linux-headers-6.12-amd64) follows security updates of that series
  { printf '%s\n' "$names" | grep -E '^linux-headers-[0-9]+\.[0-9]+-amd64$' ||
    printf '%s\n' "$names" | grep -E '^linux-headers-[0-9][0-9.+a-z-]*-amd64$' | grep -v -e '-rt-' -e '-cloud-' ||
    true; } | sort -V | tail -n1
}

hdr_pkg=""
if [ ! -e "$build/include" ]; then
  refresh_lists
  hdr_pkg=${NFX_HEADERS_PKG:-$(pick_headers)}
  [ -n "$hdr_pkg" ] || fail "no linux-headers package found for kernel $kver in the package lists" \
    "set NFX_HEADERS_PKG=<a linux-headers-*-amd64 package> or link /lib/modules/$kver/build to a headers tree yourself"
  log "kernel $kver has no headers of its own here: using $hdr_pkg"
  missing+=("$hdr_pkg")
fi

if [ ${#missing[@]} -gt 0 ]; then
  refresh_lists
  log "installing: ${missing[*]}"
  mkdir -p /run/nfx
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/run/nfx/apt.log 2>&1 ||
    { tail -n 20 /run/nfx/apt.log >&2
      fail "apt-get install ${missing[*]}" "apt's whole output is in /run/nfx/apt.log"; }
  # etcd-server's postinst starts a system etcd on 2379 where systemd runs: nfx does not use it
  # (it starts private ones on free ports), so the one this run installed does not stay running
  if [[ " ${missing[*]} " == *" etcd-server "* ]] && [ -d /run/systemd/system ]; then
    systemctl disable --now etcd >/dev/null 2>&1 || log "could not stop the system etcd service (harmless: nfx does not use port 2379)"
  fi
fi
/usr/bin/etcd --version >/dev/null 2>&1 ||
  fail "/usr/bin/etcd does not run" "reinstall it: apt-get install --reinstall etcd-server"

if [ ! -e "$build/include" ]; then
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1 || true)
  arch=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | grep -v -e '-rt-' -e '-cloud-' | sort -V | tail -n1 || true)
  [ -n "$arch" ] && [ -n "$common" ] ||
    fail "no kernel headers under /usr/src after installing $hdr_pkg" "check 'dpkg -L $hdr_pkg', or link /lib/modules/$kver/build yourself"
  mkdir -p "/lib/modules/$kver"
  ln -sfn "$arch" "/lib/modules/$kver/build"
  ln -sfn "$common" "/lib/modules/$kver/source"
  log "linked /lib/modules/$kver/build -> $arch"
fi

mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf ||
  fail "cannot mount bpffs on /sys/fs/bpf" "nfx pins its maps there: the kernel needs CONFIG_BPF_SYSCALL and you need root"
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || log "tracefs not mounted (optional)"

if [ ! -x "$venv/bin/python" ]; then
  log "creating venv $venv"
  /usr/bin/python3 -m venv --system-site-packages "$venv" ||
    fail "creating the venv $venv" "check that python3-venv is installed, or remove a half-made $venv and rerun"
fi
"$venv/bin/python" -c 'import bcc' 2>/dev/null ||
  fail "the venv cannot import bcc" "the venv must use /usr/bin/python3 with system site packages: remove $venv and rerun"
log "installing nfx into $venv (pip's output: $venv/pip.log)"
"$venv/bin/pip" install --disable-pip-version-check -e "$here[test]" >"$venv/pip.log" 2>&1 ||
  { tail -n 20 "$venv/pip.log" >&2
    fail "pip install -e .[test]" "pip needs to reach PyPI; its whole output is in $venv/pip.log"; }
log "ready: $venv/bin/nfx"
