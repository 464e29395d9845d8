#!/usr/bin/env bash
# One command for a newcomer: set up this machine, then slice the design note's server.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup-host.sh
B=.venv/bin/bmslice
EX=examples/server1

echo; echo "== discover: the design note's server (a sysfs tree built from the note's facts)"
$B discover --host-root $EX/host
echo; echo "== plan: Red and Blue, 8 vCPUs each, one passthrough NIC each"
$B plan $EX/spec.yaml --host-root $EX/host
echo; echo "== render: libvirt domain XML and kernel args into out/server1/"
$B render $EX/spec.yaml --host-root $EX/host --out out/server1
echo; echo "== apply --dry-run (libvirt's test driver stands in for the server's libvirtd)"
$B apply $EX/spec.yaml --host-root $EX/host --connect test:///default --dry-run
