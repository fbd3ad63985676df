#!/usr/bin/env bash
# Install everything, then the main demo: a SHarP testbed with two NAT instances, 10k flows of
# traffic through it, the sink's report, the NAT's mappings, and the testbed removed again.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/bootstrap.sh"
nfx="$here/.venv/bin/nfx"
name=demo
trap '"$nfx" testbed down --name $name >/dev/null 2>&1 || true' EXIT
"$nfx" testbed up --name $name --topology sharp --nf nat --instances 2
"$nfx" traffic run --name $name --flows 10000 --rate 200000 --duration 5
"$nfx" nf mappings --name $name --instance nf0 --limit 5
"$nfx" nf stats --name $name --instance nf0
"$nfx" testbed down --name $name
trap - EXIT
