"""Scenario: a real reboot. What `host-apply` and `apply` placed comes back by itself.

The boot lab runs this machine's systemd as PID 1 on a root disk kept across `bmslice lab
reboot` (2 GiB per node: a 1 GiB hugepage needs a free, aligned gigabyte on its node). Its
bootloader is the lab's kernel command line, and `lab reboot --append` takes what host-apply
wrote for any bootloader (`/etc/bmslice/kernel-args`), as `update-grub` would take the GRUB
drop-in on a server.

1. `host-apply` of two slices over both nodes, one on 1 GiB and one on 2 MiB hugepages (so
   each node needs both sizes), each with a VF of one igb NIC (MAC, VLAN, trust, spoofchk):
   2 MiB pages now, the files for the rest; a second run changes nothing.
2. Reboot with the planned kernel args: the 1 GiB pages come from them, the 2 MiB pages from
   bmslice-hugepages.service, the 1 GiB hugetlbfs from its mount unit; `apply`.
3. Reboot again, and prove without any command of bmslice's: the pages per node and size,
   the mount, the units having run before libvirtd, the VFs with their MAC/VLAN/trust/spoofchk,
   the slices running on them (autostart), the CPU affinity of PID 1 and system.slice; then
   `bmslice verify` and `audit` exit 0, and audit catches a process started on an isolated
   CPU and an IRQ moved there. The exporter's unit (placed by host-apply, wanted by the boot
   target before that reboot, as `systemctl enable` makes it on a server) runs under systemd
   with its hardening: every thread on the host's CPUs, /metrics answering with both slices
   running and no drift.
"""

from __future__ import annotations

import re
import time
from functools import partial
from pathlib import Path
from typing import Any

from bmslice.cpuset import CpuSet
from bmslice.lab.units import TARGET
from lab import labctl, specs
from lab.conftest import BOOT, L3, Lane, use
from metrics_fixtures import samples, value

QEMU = "qemu:///system"
SPEC_PATH = "/var/lib/bmslice-lab-test/reboot.yaml"
VMS = ("boot-1g", "boot-2m")
HOST = {"reserved_cores_per_node": 1, "reserved_memory_per_node": "256MiB", "domain_type": "qemu"}

# Facts after a boot, as the kernel, systemd and libvirt give them (not bmslice).
FACTS = r"""
echo "cmdline $(cat /proc/cmdline)"
for f in /sys/devices/system/node/node*/hugepages/hugepages-*/nr_hugepages; do
    node=${f#*/node/node}; node=${node%%/*}; size=${f#*hugepages-}; size=${size%%kB*}
    echo "pages $node $size $(cat "$f")"
done
awk '$3 == "hugetlbfs" {print "mount", $2, $4}' /proc/mounts
for unit in bmslice-hugepages.service dev-hugepages1G.mount libvirtd.service; do
    echo "unit $unit $(systemctl show -p ActiveState --value $unit) $(systemctl show -p ActiveEnterTimestampMonotonic --value $unit)"
done
echo "after $(systemctl show -p After --value libvirtd.service)"
echo "pid1 $(awk '/^Cpus_allowed_list/ {print $2}' /proc/1/status)"
echo "system.slice $(systemctl show -p AllowedCPUs --value system.slice) $(cat /sys/fs/cgroup/system.slice/cpuset.cpus.effective 2>/dev/null)"
for vm in $(virsh -c qemu:///system list --name --all); do
    echo "domain $vm $(virsh -c qemu:///system domstate $vm) $(virsh -c qemu:///system dominfo $vm | awk '/^Autostart/ {print $2}')"
done
for pf in enp65s0 enp97s0; do echo "vfs $pf $(cat /sys/class/net/$pf/device/sriov_numvfs)"; done
for dev in /sys/bus/pci/devices/*; do
    [ -e "$dev/physfn" ] && echo "vf ${dev##*/} $(basename "$(readlink "$dev/driver" 2>/dev/null)")"
done
"""

# Move the first IRQ that has a handler and accepts it to CPU $1; print "<irq> <old affinity>".
MOVE_IRQ = r"""
for dir in /proc/irq/*/; do
    irq=$(basename "$dir")
    ls -d "$dir"*/ >/dev/null 2>&1 || continue
    old=$(cat "$dir/smp_affinity_list")
    if echo "$1" >"$dir/smp_affinity_list" 2>/dev/null && [ "$(cat "$dir/effective_affinity_list")" = "$1" ]; then
        echo "$irq $old"
        exit 0
    fi
done
exit 1
"""

EXPORTER = "bmslice-exporter.service"
MARK = "=== bmslice-lab"
# The exporter as systemd runs it after the boot: its state, its threads' CPUs, one scrape.
SCRAPE = rf"""
python=$1
get() {{ $python -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9963/metrics', timeout=120).read().decode())"; }}
for i in $(seq 300); do
    [ "$(systemctl show -p ActiveState --value {EXPORTER})" = active ] && get >/dev/null 2>&1 && break
    sleep 2
done
echo "{MARK} state $(systemctl show -p ActiveState --value {EXPORTER}) $(systemctl show -p NRestarts --value {EXPORTER})"
pid=$(systemctl show -p MainPID --value {EXPORTER})
echo "{MARK} pinned"; grep -h Cpus_allowed_list /proc/$pid/task/*/status
echo "{MARK} metrics"; get
echo "{MARK} log"; journalctl -u {EXPORTER} --no-pager -n 20 2>&1
"""


def _marked(out: str) -> dict[str, str]:
    """SCRAPE's output by mark: "state" holds its mark line's words, the others the lines below it."""
    parts: dict[str, str] = {}
    current = ""
    for line in out.splitlines(keepends=True):
        if line.startswith(MARK):
            current, _, rest = line[len(MARK) :].strip().partition(" ")
            parts[current] = rest
        elif current:
            parts[current] += line
    return parts


def spec() -> dict[str, Any]:
    # Two slices over both nodes (a share of 2 vCPUs, one core, on each; the emulator on the
    # host's core): one on 1 GiB pages, one on 2 MiB pages, so each node needs pages of both
    # sizes; each holds a VF of one igb, with MAC, VLAN, trust and spoofchk set.
    vf_1g = {"pf": specs.VF_PF, "vlan": 100, "mac": "02:00:00:0b:00:0a", "trust": True, "spoofchk": False, "count": 1}
    vf_2m = {"pf": specs.PT_NIC, "vlan": 200, "count": 1}
    vm = {"vcpus": 4, "numa_nodes": 2, "emulator": "host"}
    return {
        "host": HOST,
        "vms": [
            {**vm, "name": "boot-1g", "memory": "2GiB", "hugepages": "1G", "nics": [{"sriov": vf_1g}]},
            {**vm, "name": "boot-2m", "memory": "128MiB", "hugepages": "2M", "nics": [{"sriov": vf_2m}]},
        ],
    }


def _facts(text: str) -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(" ")
        out.setdefault(key, []).append(rest.split())
    return out


def _reboot(*append: str) -> None:
    args = ["lab", "reboot", "--name", BOOT, "--boot-timeout", "1200"]
    labctl.host(*args, *(("--append", " ".join(append)) if append else ()), timeout=1800).expect()


def _wait_running(names: tuple[str, ...], seconds: int = 900) -> None:
    """libvirtd starts autostart domains after it answers; they take a while under TCG."""
    deadline = time.monotonic() + seconds
    running: list[str] = []
    while time.monotonic() < deadline:
        result = labctl.run("virsh", "-c", QEMU, "list", "--name", "--state-running", lab=BOOT)
        running = sorted(result.out.split())
        if sorted(names) == running:
            return
        time.sleep(10)
    raise AssertionError(f"after {seconds} s running: {running}, autostart should have started {names}")


def test_a_real_reboot_brings_back_what_bmslice_placed(lane: Lane, tmp_path: Path) -> None:
    use(lane, BOOT, then=(L3,), done=(labctl.LAB,))
    run = partial(labctl.run, lab=BOOT)
    bmslice = partial(labctl.bmslice, lab=BOOT)
    path = specs.write(tmp_path, "reboot.yaml", spec())

    plan = bmslice("plan", path.name, "--json", files=[path]).expect().json()
    want_pages = {(h["node"], h["size_kib"]): h["pages"] for h in plan["host"]["hugepages"]}
    assert want_pages == {(0, 2048): 32, (1, 2048): 32, (0, 1048576): 1, (1, 1048576): 1}, want_pages
    vfs = [d for vm in plan["vms"] for d in vm["devices"]]
    assert [d["type"] for d in vfs] == ["vf", "vf"], vfs

    # host-apply from where the spec lives on a server: one path, kept on the root disk (each
    # `lab run` has a directory of its own, and the exporter's unit names the spec's path)
    run("install", "-D", "-m", "0644", path.name, SPEC_PATH, files=[path]).expect()
    first = bmslice("host-apply", SPEC_PATH).expect()
    second = bmslice("host-apply", SPEC_PATH).expect()
    assert "no changes" in second.out, second.report()
    args = run("cat", "/etc/bmslice/kernel-args").expect().out.split()
    assert set(plan["host"]["kernel_args"]) == set(args), (plan["host"]["kernel_args"], args)
    labctl.say(
        f"checked: host-apply wrote the host files ({first.out.count(chr(10))} lines), a second run changes nothing"
    )

    _reboot(*args)  # the lab's bootloader takes the kernel-args file, as update-grub takes the drop-in
    applied = bmslice("apply", path.name, "--connect", QEMU, files=[path], timeout=1800)
    applied.expect()
    labctl.say("checked: after a reboot with the planned args, apply placed the two slices (autostart on)")
    # the operator's choice (bmslice places the unit, never enables it): `systemctl enable` on a
    # server, whose default target pulls it in; the lab boots bmslice-lab.target instead
    run("systemctl", "add-wants", TARGET, EXPORTER).expect()

    _reboot()  # the same kernel args: nothing of bmslice's runs from here on
    _wait_running(VMS)
    facts = _facts(labctl.sh(FACTS, lab=BOOT).expect().out)
    cmdline = facts["cmdline"][0]
    assert set(args) <= set(cmdline), (args, cmdline)
    pages = {(int(n), int(size)): int(count) for n, size, count in facts["pages"]}
    assert {key: pages[key] for key in want_pages} == want_pages, pages
    labctl.say(f"checked: after the reboot, hugepages per node and size as planned: {want_pages}")
    mounts = {where: options for where, options in facts["mount"]}
    assert "pagesize=1024M" in mounts.get("/dev/hugepages1G", ""), mounts
    units = {unit: (state, int(stamp)) for unit, state, stamp in facts["unit"]}
    assert all(state == "active" for state, _ in units.values()), units
    after = set(facts["after"][0])
    assert {"bmslice-hugepages.service", "dev-hugepages1G.mount"} <= after, after
    assert units["bmslice-hugepages.service"][1] < units["libvirtd.service"][1], units
    assert units["dev-hugepages1G.mount"][1] < units["libvirtd.service"][1], units
    labctl.say("checked: the 1 GiB hugetlbfs is mounted; the hugepages unit and the mount ran before libvirtd")

    housekeeping = CpuSet.parse(",".join(map(str, plan["host"]["reserved_cpus"]))).format()
    assert facts["pid1"][0] == [housekeeping], facts["pid1"]
    assert facts["system.slice"][0][-1] == housekeeping, facts["system.slice"]
    labctl.say(f"checked: PID 1 and system.slice run on the host's CPUs {housekeeping} (system.conf.d, slice drop-in)")

    states = {vm: (state, autostart) for vm, state, autostart in facts["domain"]}
    assert states == {vm: ("running", "enable") for vm in VMS}, states
    drivers = dict(facts["vf"])
    assert {pf: count for pf, count in facts["vfs"]} == {specs.VF_PF: "1", specs.PT_NIC: "1"}, facts["vfs"]
    for dev in vfs:
        assert drivers.get(dev["address"]) == "vfio-pci", (dev["address"], drivers)
        shown = run("ip", "-j", "-d", "link", "show", dev["interface"]).expect().json()[0]
        vf = next(v for v in shown.get("vfinfo_list", []) if v["vf"] == dev["vf_index"])
        vlans = [v.get("vlan") for v in vf.get("vlan_list", [])]
        have = (vf["address"], vlans, vf["trust"], vf["spoofchk"])
        assert have == (dev["mac"], [dev["vlan"]], dev["trust"], dev["spoofchk"]), (vf, dev)
    labctl.say("checked: the slices autostarted on their VFs (vfio-pci), MAC/VLAN/trust/spoofchk as planned")

    verified = bmslice("verify", path.name, "--connect", QEMU, files=[path]).expect()
    audit = bmslice("audit", path.name, files=[path]).expect()
    assert audit.out.rstrip().endswith("audit: isolation holds"), audit.report()
    labctl.say(f"checked: verify exit 0 ({verified.out.strip().splitlines()[-1]}) and audit exit 0 after the reboot")

    python = str(labctl.VENV_BIN / "python")
    scraped = run("/bin/sh", "scrape.sh", python, files=[labctl.write(tmp_path, "scrape.sh", SCRAPE)], timeout=900)
    parts = _marked(scraped.expect().out)
    assert parts.get("state", "").split() == ["active", "0"], scraped.report()
    lists = re.findall(r"Cpus_allowed_list:\s*(\S+)", parts["pinned"])
    assert lists and {CpuSet.parse(c) for c in lists} == {CpuSet.parse(housekeeping)}, scraped.report()
    metrics = samples(parts["metrics"])
    for vm in VMS:
        assert value(metrics, "bmslice_slice_state", slice=vm, state="running") == 1, scraped.report()
    drift = {key: v for key, v in metrics.items() if key[0] == "bmslice_slice_drift" and v}
    assert drift == {}, scraped.report()
    assert value(metrics, "bmslice_reboot_pending") == 0, scraped.report()
    assert value(metrics, "bmslice_isolation_foreign_threads") == 0, scraped.report()
    labctl.say(
        f"checked: {EXPORTER} came up under systemd with its hardening, its {len(lists)} thread(s) on the host's "
        f"CPUs {housekeeping}; /metrics: both slices running, no drift, no reboot pending, isolation holds"
    )

    victim = str(min(plan["host"]["isolated_cpus"]))
    script = labctl.write(tmp_path, "move-irq.sh", MOVE_IRQ)
    # a unit of its own: systemd ends what a finished `lab run` job leaves in its cgroup, and
    # system.slice may only use the host's CPUs
    started = labctl.sh(
        f"systemd-run --quiet --collect --slice=machine.slice --unit=bmslice-lab-sleeper taskset -c {victim} sleep 900"
        " && sleep 2 && systemctl show -p MainPID --value bmslice-lab-sleeper",
        lab=BOOT,
    )
    sleeper = started.expect().out.split()[-1]
    irq, old = run("/bin/sh", "move-irq.sh", victim, files=[script]).expect().out.split()
    try:
        caught = bmslice("audit", path.name, "--json", files=[path]).expect(1).json()
        checks = {v["check"]: v["message"] for v in caught["violations"]}
        assert f"irq {irq}" in checks and f"effective affinity {victim}" in checks[f"irq {irq}"], caught
        assert f"(sleep) may run on isolated CPU(s) {victim}" in checks.get(f"thread {sleeper}", ""), caught
        labctl.say(f"checked: audit catches sleep (pid {sleeper}) on isolated CPU {victim} and IRQ {irq} moved there")
    finally:
        labctl.sh(f"kill {sleeper}; echo {old} > /proc/irq/{irq}/smp_affinity_list", lab=BOOT)
