"""Scenario: the Red/Blue fabric on the wire. Two lab servers, one switch, the fleet's own files.

Three labs: a switch (a VLAN-aware Linux bridge in a network namespace of its own, over two
NICs) and two servers whose igb NIC is plugged into one of its ports (QEMU stream sockets:
a frame the server's igb sends arrives on the switch's port, and back). The lab kernel has
bridges; this machine's does not.

1. `bmslice fleet ansible` plans Red (VLAN 100) and Blue (VLAN 200), one worker of each per
   server, reading both servers through `qemu+ssh://` (each lab's sshd, forwarded to this
   machine's loopback), and writes `fabric/fabric-switch.set`. That file, parsed as a switch
   takes it, is what configures the bridge: both ports trunks of Red and Blue, tagged.
2. The playbook runs over ssh on both servers for real: the slices run, holding their VFs.
3. The guests boot no OS under TCG, so each VF stands in for its guest: the slice is stopped
   (libvirt gives the VF back to igbvf, with the MAC and VLAN bmslice set), its netdev goes
   into a network namespace, all four in one IP subnet so that only the VLANs keep them
   apart. Red reaches Red across the servers, Blue reaches Blue; Blue never reaches Red, nor
   Red Blue, in either direction.
4. The bridge's forwarding table, learned while the stand-ins sent, is written as an ELS
   switch prints `show ethernet-switching table | display json` (the switch's port and VLAN
   names); the stand-ins give their VFs back and the playbook starts the slices again.
   `fleet verify --placement --switch-table fabric-switch=TABLE` then reports both servers'
   slices as planned and every VM NIC (4 of 4) learned on its planned port and VLAN; the
   same table with one guest's MAC in the other VLAN makes it exit 1 naming that NIC.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from bmslice.lab import assets
from bmslice.lab.switch import bridge_commands, parse_junos_set, switch_table
from lab import labctl
from lab.conftest import FAB1, FAB2, L3, SSH_PORTS, SWITCH, Lane, use
from sshd_server import write_config

REPO = labctl.REPO
BIN = labctl.VENV_BIN
PORTS = {FAB1: "ge-0/0/1", FAB2: "ge-0/0/2"}
SWITCH_MACS = {"ge-0/0/1": "52:54:00:1b:fe:00", "ge-0/0/2": "52:54:00:1b:fe:01"}  # the switch lab's ports
PF = "enp65s0"  # each server's igb
ADDRESSES = {
    (FAB1, "red"): "10.9.0.11",
    (FAB2, "red"): "10.9.0.12",
    (FAB1, "blue"): "10.9.0.21",
    (FAB2, "blue"): "10.9.0.22",
}
# 82576: DTXSWC (0x3500) holds each VF's MAC anti-spoofing in bit VF and its VLAN anti-spoofing in
# bit 8+VF, which the PF driver writes for `ip link set PF vf N spoofchk on|off`; the labs trace
# every igb register write (conftest), as QEMU logs them
DTXSWC = re.compile(r"e1000e_core_write Write to register 0x3500, \d byte\(s\), value: 0x([0-9a-f]{1,8})")
BUSYBOX = assets.DEFAULT_CACHE / "root/bin/busybox"  # the lab sees this machine's files at the same paths

# In the switch lab: its two ports renamed after the switch's, moved into a namespace with the bridge.
SWITCH_UP = r"""
set -e
ip netns add fabric
for pair in "$@"; do
    mac=${pair%%=*}; name=${pair#*=}
    for dev in /sys/class/net/*; do
        [ "$(cat $dev/address)" = "$mac" ] || continue
        ip link set "${dev##*/}" down
        ip link set "${dev##*/}" name "$name"
        ip link set "$name" netns fabric
    done
done
# ageing an hour: the table fleet verify reads still holds what the guests sent
ip netns exec fabric ip link add fabric type bridge vlan_filtering 1 vlan_default_pvid 0 ageing_time 360000
ip netns exec fabric ip link set fabric up
ip netns exec fabric ip link set lo up
"""

SSHD = r"""
set -e
mkdir -p /etc/bmslice-lab-ssh /run/sshd
cp host_key authorized_keys /etc/bmslice-lab-ssh/
chmod 600 /etc/bmslice-lab-ssh/host_key
cat > /etc/bmslice-lab-ssh/sshd_config <<EOF
ListenAddress 0.0.0.0:22
HostKey /etc/bmslice-lab-ssh/host_key
AuthorizedKeysFile /etc/bmslice-lab-ssh/authorized_keys
PidFile /run/bmslice-lab-sshd.pid
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
MaxStartups 100
EOF
/usr/sbin/sshd -f /etc/bmslice-lab-ssh/sshd_config -E /var/log/bmslice-lab-sshd.log
"""

# In a server lab: the slice's VF back from libvirt, as the guest's stand-in in a namespace.
# While the slice runs, the PF says which MAC its VF carries for the guest; libvirt gives the
# VF back with the MAC it had before the guest (random, and the same in two identical labs),
# so the stand-in takes the guest's MAC again, as the guest's driver would have it.
STAND_IN = r"""
set -e
vm=$1 ns=$2 address=$3 pf=$4
pci=$(virsh -c qemu:///system dumpxml "$vm" | python3 -c '
import sys, xml.etree.ElementTree as ET
a = ET.parse(sys.stdin).find("devices/interface[@type=\"hostdev\"]/source/address")
print("%04x:%02x:%02x.%x" % tuple(int(a.get(k), 16) for k in ("domain", "bus", "slot", "function")))')
index=
for link in /sys/class/net/$pf/device/virtfn*; do
    [ "$(basename "$(readlink "$link")")" = "$pci" ] && index=${link##*virtfn}
done
set -- $(ip -j -d link show "$pf" | python3 -c '
import json, sys
vf = next(v for v in json.load(sys.stdin)[0]["vfinfo_list"] if v["vf"] == int(sys.argv[1]))
print(vf["address"], "on" if vf["trust"] else "off", "on" if vf["spoofchk"] else "off")' "$index")
mac=$1 trust=$2 spoofchk=$3
virsh -c qemu:///system destroy "$vm" >/dev/null
for _ in $(seq 1 120); do [ -d /sys/bus/pci/devices/$pci/net ] && break; sleep 0.5; done
ip link set "$pf" vf "$index" mac "$mac"
# igb refuses a VF's own MAC change once the PF has set one: igbvf reads the new one when it binds
echo "$pci" > /sys/bus/pci/drivers/igbvf/unbind
echo "$pci" > /sys/bus/pci/drivers/igbvf/bind
# trust and spoofchk written again as they were while the guest ran (the VF's reset may drop them)
ip link set "$pf" vf "$index" trust off spoofchk off
ip link set "$pf" vf "$index" trust "$trust" spoofchk "$spoofchk"
for _ in $(seq 1 120); do [ -d /sys/bus/pci/devices/$pci/net ] && break; sleep 0.5; done
dev=$(ls /sys/bus/pci/devices/$pci/net)
ip netns add "$ns"
ip link set "$dev" netns "$ns"
ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" ip link set "$dev" name guest up
ip netns exec "$ns" ip addr add "$address/24" dev guest
echo "$pci $index $mac $(ip netns exec "$ns" cat /sys/class/net/guest/address)"
"""


def _ansible_env(work: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": str(REPO),
        "ANSIBLE_HOME": str(work / "ansible-home"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_REMOTE_TEMP": "/var/tmp/bmslice-ansible",
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(work / "ansible-cp"),
        "ANSIBLE_TIMEOUT": "120",
    }


def _playbook(out: Path, work: Path) -> subprocess.CompletedProcess[str]:
    labctl.say("host: ansible-playbook site.yml over ssh to both lab servers")
    argv = [str(BIN / "ansible-playbook"), "-i", "inventory.yml", "site.yml", "-v", "-f", "2"]
    argv += ["-e", f"bmslice_command={BIN / 'bmslice'}", "-e", "bmslice_base_dir=/var/lib/bmslice-fleet"]
    argv += ["-e", f"ansible_python_interpreter={sys.executable}"]  # the same path inside each lab
    return subprocess.run(argv, cwd=out, env=_ansible_env(work), capture_output=True, text=True, timeout=3600)


def _play(out: Path, work: Path, where: dict[str, tuple[str, str]]) -> None:
    """The playbook, for real; then each server runs the slices the placement puts there."""
    played = _playbook(out, work)
    assert played.returncode == 0, played.stdout[-6000:] + played.stderr[-3000:]
    for name in (FAB1, FAB2):
        running = labctl.run("virsh", "-c", "qemu:///system", "list", "--name", lab=name).expect().out.split()
        assert sorted(running) == sorted(vm for vm, (host, _c) in where.items() if host == name), running


def _fleet(work: Path, ssh: Path, key: Path) -> Path:
    def server(name: str, rack: str) -> dict[str, Any]:
        uri = f"qemu+ssh://root@127.0.0.1:{SSH_PORTS[name]}/system?command={ssh}&keyfile={key}&no_tty=1"
        host = {"reserved_cores_per_node": 1, "reserved_memory_per_node": "256MiB", "domain_type": "qemu"}
        nics = {PF: {"switch": "fabric-switch", "port": PORTS[name]}}
        return {"name": name, "uri": uri, "role": "worker", "rack": rack, "nics": nics, "host": host}

    worker = {"count": 2, "vcpus": 2, "memory": "64MiB", "emulator": "host", "iothreads": 0}
    worker["nic"] = {"kind": "sriov", "pf": "any", "count": 1}
    spread = {"max_per_host": 1, "racks": "spread"}
    data = {
        "switches": {"fabric-switch": {"junos": "els"}},
        "inventory": [server(FAB1, "rack1"), server(FAB2, "rack2")],
        "clusters": [
            {"name": "red", "vlan": 100, "vlan_name": "Red_Tenant_Network", "workers": worker, "spread": spread},
            {"name": "blue", "vlan": 200, "vlan_name": "Blue_Tenant_Network", "workers": worker, "spread": spread},
        ],
    }
    path = work / "fleet.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _ping(lab: str, ns: str, address: str) -> bool:
    """ICMP echo from the namespace (this machine kind has no ping: the lab's own busybox has one)."""
    done = labctl.sh(f"ip netns exec {ns} {BUSYBOX} ping -c 3 -W 3 -q {address}", lab=lab, timeout=120)
    return done.rc == 0


def _fdb(config: Any, cabling: dict[str, str]) -> tuple[list[dict[str, Any]], str]:
    shown = labctl.run("ip", "netns", "exec", "fabric", "bridge", "-j", "fdb", "show", "br", "fabric", lab=SWITCH)
    fdb = json.loads(shown.expect().out or "[]")
    return fdb, switch_table(fdb, config, cabling)


def _dtxswc(lab: str, since: int) -> tuple[list[int], int]:
    """The values written to the lab's igb DTXSWC, in order, from byte `since` of its qemu.log; and where it ends."""
    with (labctl.STATE_ROOT / lab / "qemu.log").open("rb") as log:
        log.seek(since)
        data = log.read(256 << 20)
    return [int(value, 16) for value in DTXSWC.findall(data.decode(errors="replace"))], since + len(data)


def _spoof_bits(value: int, vf: int) -> tuple[bool, bool]:
    """(MAC, VLAN) anti-spoofing of VF `vf` in a DTXSWC value."""
    return bool(value >> vf & 1), bool(value >> (8 + vf) & 1)


def _fleet_verify(fleet: Path, out: Path, table: Path, *more: str) -> subprocess.CompletedProcess[str]:
    argv = [str(BIN / "bmslice"), "fleet", "verify", str(fleet), "--placement", str(out / "placement.json")]
    argv += ["--switch-table", f"fabric-switch={table}", *more]
    labctl.say(f"host: {' '.join(argv[1:])}")
    return subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)


def test_red_and_blue_on_the_wire(lane: Lane, tmp_path: Path) -> None:
    lane.prestart(SWITCH, FAB1, FAB2)  # all three boot at once (the switch and a server may be booting already)
    for name in (SWITCH, FAB1, FAB2):
        use(lane, name, done=(L3,))

    # sshd in both servers, one key pair for both, the client's known_hosts naming both ports
    keys = tmp_path / "ssh"
    keys.mkdir()
    _config, client_key, ssh = write_config(keys, SSH_PORTS[FAB1], {})
    host_key = (keys / "host_key.pub").read_text().split()
    (keys / "known_hosts").write_text(
        "".join(f"[127.0.0.1]:{SSH_PORTS[name]} {host_key[0]} {host_key[1]}\n" for name in (FAB1, FAB2))
    )
    for name in (FAB1, FAB2):
        labctl.run("/bin/sh", "-c", SSHD, files=[keys / "host_key", keys / "authorized_keys"], lab=name).expect()
    labctl.say("checked: each lab server's sshd answers on its forwarded port")

    # the fleet, planned through qemu+ssh to both labs; its switch file configures the bridge
    fleet = _fleet(tmp_path, ssh, client_key)
    out = tmp_path / "fleet-out"
    ansible = subprocess.run(
        [str(BIN / "bmslice"), "fleet", "ansible", str(fleet), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert ansible.returncode == 0, ansible.stdout + ansible.stderr
    placement = json.loads((out / "placement.json").read_text())
    where = {vm["name"]: (vm["host"], vm["cluster"]) for vm in placement["vms"]}
    assert sorted(where.values()) == sorted((host, c) for host in (FAB1, FAB2) for c in ("blue", "red")), where
    set_file = out / "fabric" / "fabric-switch.set"
    config = parse_junos_set(set_file.read_text(), str(set_file))
    assert {port: (e.mode, e.members) for port, e in config.ports.items()} == {
        port: ("trunk", ["Red_Tenant_Network", "Blue_Tenant_Network"]) for port in PORTS.values()
    }, config.ports
    cabling = {port: f"sw{port.rsplit('/', 1)[1]}" for port in PORTS.values()}  # ge-0/0/1 -> sw1
    pairs = [f"{SWITCH_MACS[port]}={dev}" for port, dev in cabling.items()]
    labctl.run("/bin/sh", "-c", SWITCH_UP, "switch-up", *pairs, lab=SWITCH).expect()
    commands = "\n".join(
        " ".join(["ip", "netns", "exec", "fabric", *c]) for c in bridge_commands("fabric", config, cabling)
    )
    labctl.sh("set -e\n" + commands, lab=SWITCH).expect()
    vlans = labctl.run("ip", "netns", "exec", "fabric", "bridge", "-j", "vlan", "show", lab=SWITCH).expect().json()
    have = {e["ifname"]: sorted(v["vlan"] for v in e["vlans"]) for e in vlans if e["ifname"] in cabling.values()}
    assert have == {dev: [100, 200] for dev in cabling.values()}, vlans
    labctl.say(f"checked: the bridge is the switch fabric-switch.set describes: {have}")

    # the playbook, for real, over ssh
    marks = {name: _dtxswc(name, 0)[1] for name in (FAB1, FAB2)}
    _play(out, tmp_path, where)
    labctl.say("checked: the fleet playbook ran over ssh on both lab servers; Red and Blue run on each")
    by_playbook: dict[str, list[int]] = {}
    for name in (FAB1, FAB2):
        by_playbook[name], marks[name] = _dtxswc(name, marks[name])

    # each VF stands in for its guest, with the MAC and VLAN bmslice set
    macs: dict[tuple[str, str], str] = {}
    vfs: dict[tuple[str, str], int] = {}
    for vm, (host, cluster) in sorted(where.items()):
        stand_in = labctl.run(
            "/bin/sh", "-c", STAND_IN, "stand-in", vm, cluster, ADDRESSES[(host, cluster)], PF, lab=host
        )
        pci, index, running, mac = stand_in.expect().out.split()
        assert mac == running, stand_in.report()  # the stand-in carries the MAC the guest had
        macs[(host, cluster)] = mac
        vfs[(host, cluster)] = int(index)
        shown = labctl.run("ip", "-j", "-d", "link", "show", PF, lab=host).expect().json()[0]
        vf = next(v for v in shown["vfinfo_list"] if v["address"] == mac)
        assert [v.get("vlan") for v in vf.get("vlan_list", [])] == [100 if cluster == "red" else 200], vf
        assert (vf["trust"], vf["spoofchk"]) == (False, True), vf
        labctl.say(
            f"checked: {vm}'s VF {pci} on {host} carries {mac}, VLAN {vf['vlan_list'][0]['vlan']}, in netns {cluster}"
        )

    assert len(set(macs.values())) == len(macs), macs  # bmslice gave each guest a MAC of its own

    # spoofchk reaches the NIC: the playbook (bmslice setting each VF, spoofchk on) left the VF's
    # anti-spoofing bits set in the last DTXSWC value the PF driver wrote; the stand-in's
    # `spoofchk off`, then `on` again, cleared and set them. (What QEMU's igb does with them: nothing,
    # see the comment on spoofed frames below.)
    for (host, cluster), vf_index in sorted(vfs.items()):
        left = by_playbook[host][-1:]
        assert [_spoof_bits(value, vf_index) for value in left] == [(True, True)], (vf_index, by_playbook[host])
        since, _end = _dtxswc(host, marks[host])
        states = [_spoof_bits(value, vf_index) for value in since]
        cleared = states.index((False, False)) if (False, False) in states else len(states)
        assert (True, True) in states[cleared:] and states[-1] == (True, True), (vf_index, since)
        labctl.say(
            f"checked: {host} VF {vf_index} ({cluster}): spoofchk on, off, on written to the igb's DTXSWC "
            f"bits {vf_index} and {8 + vf_index} (last value {since[-1]:#x})"
        )
    reach = {
        (src, dst): _ping(src[0], src[1], ADDRESSES[dst])
        for src in ((FAB1, "red"), (FAB1, "blue"), (FAB2, "red"), (FAB2, "blue"))
        for dst in ((FAB1, "red"), (FAB1, "blue"), (FAB2, "red"), (FAB2, "blue"))
        if src[0] != dst[0]
    }
    assert {pair: ok for pair, ok in reach.items()} == {pair: pair[0][1] == pair[1][1] for pair in reach}, reach
    labctl.say("checked: Red reaches Red and Blue Blue across the servers; Blue never reaches Red, nor Red Blue")

    # Spoofed source MACs are not tried here: QEMU's igb stores DTXSWC (its anti-spoofing bits set
    # as checked above) but reads only its loopback bit, so it passed frames with another source MAC
    # to the switch in this lane: what spoofchk does on a real NIC the lab cannot show (docs/lab.md).

    # the bridge's own table: each guest's MAC learned on its server's port, in its VLAN
    entries, table = _fdb(config, cabling)
    for (host, cluster), mac in sorted(macs.items()):
        port, vlan = cabling[PORTS[host]], 100 if cluster == "red" else 200
        learned = [e for e in entries if e.get("mac") == mac]
        assert any(e.get("ifname") == port and e.get("vlan") == vlan for e in learned), (host, cluster, learned)
    labctl.say("checked: the bridge learned each guest's MAC on its server's port, in its cluster's VLAN")

    # `fleet verify` as an operator runs it: the switch's table captured while the guests sent
    # (an ELS switch's `show ethernet-switching table | display json`), the slices running again
    # as the playbook leaves them, both checked against the placement that was applied.
    captured = tmp_path / "fabric-switch.json"
    captured.write_text(table)
    for host in (FAB1, FAB2):
        labctl.sh("set -e; ip netns del red; ip netns del blue", lab=host).expect()  # the VFs back to the host
    _play(out, tmp_path, where)
    labctl.say("checked: the playbook started the slices again")

    verified = _fleet_verify(fleet, out, captured, "--json")
    assert verified.returncode == 0, verified.stdout[-6000:] + verified.stderr
    report = json.loads(verified.stdout)
    assert {h["host"]: h["status"] for h in report["hosts"]} == {FAB1: "ok", FAB2: "ok"}, report["hosts"]
    assert report["fabric_counts"] == {"planned": 4, "checked": 4, "failed": 0, "tables": ["fabric-switch"]}, report
    vlan_ids = {"red": 100, "blue": 200}
    assert {(c["vm"], c["mac"], c["port"], c["vlan"], c["status"]) for c in report["fabric"]} == {
        (vm, macs[(host, cluster)], PORTS[host], vlan_ids[cluster], "learned") for vm, (host, cluster) in where.items()
    }, report["fabric"]
    labctl.say("checked: fleet verify: both servers' slices as planned; 4 of 4 VM NICs learned on their port and VLAN")

    # ...and it fails when the fabric is wrong: the same table, one guest's MAC learned in the other VLAN
    moved_vm = next(vm for vm, placed in where.items() if placed == (FAB1, "red"))
    moved_mac = macs[(FAB1, "red")]
    wrong = [{**e, "vlan": 200} if e.get("mac") == moved_mac and e.get("vlan") == 100 else e for e in entries]
    assert wrong != entries
    miscabled = tmp_path / "fabric-switch-wrong.json"
    miscabled.write_text(switch_table(wrong, config, cabling))
    refused = _fleet_verify(fleet, out, miscabled)
    assert refused.returncode == 1, refused.stdout[-6000:] + refused.stderr
    named = [line for line in refused.stdout.splitlines() if moved_mac in line and moved_vm in line]
    assert len(named) == 1 and ": elsewhere: " in named[0] and "Blue_Tenant_Network (200)" in named[0], refused.stdout
    assert "fabric: 1 of 4 checked VM NIC(s) missing or learned elsewhere" in refused.stdout, refused.stdout
    labctl.say(f"checked: with {moved_mac} moved to VLAN 200 fleet verify exits 1 naming it: {named[0].strip()}")
