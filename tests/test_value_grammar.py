"""Every value that reaches a generated file is checked against that file's grammar (faults.md 16).

As an attacker would try it, each value read from outside is refused where it is read, with
the file and the value, and nothing is written:
- host trees whose driver names, PCI ids, class codes, interface names or link addresses carry
  a newline with an `install ... sh -c` line for modprobe.d, a space, a shell metacharacter, a
  ':' or a name too long for the kernel; the same in hwloc and libvirt node device XML;
- fleet files whose URI carries Jinja, a newline or a space, whose switch port has a unit
  (ge-0/0/9.0) or whose switch, host or VLAN name is too long or climbs out of fabric/;
- placement files (bmslice's own output, read back) with a VM name holding a newline or Jinja,
  a PF or address outside their grammar, or numbers of the wrong type;
- values the readers never saw (a plan recorded in libvirt metadata) meet the same grammar at
  the render edge of modprobe.d, the udev rule, the VF settings and the Junos lines;
- Ansible: every value the inventory takes from the fleet file is `!unsafe`, proven with the
  real ansible-playbook and ansible-inventory: a lookup in a path is never run.
The clean render goes through the real tools: `modprobe --showconfig` parses the modprobe.d file.
"""

from __future__ import annotations

import doctest
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from bmslice.cli import fleet_cmd
from bmslice.cpuset import CpuSet
from bmslice.errors import RenderError, TopologyError
from bmslice.fleet.fabric import junos_config
from bmslice.model import grammar
from bmslice.model.plan import DeviceAssignment, HostPlan, PfPlan, Plan
from bmslice.render.host_files import VFIO_OPTIONS, render_host_files
from bmslice.render.sriov_files import udev_rules, vf_settings
from bmslice.topology.hwloc import topology_from_hwloc
from bmslice.topology.libvirt_xml import topology_from_libvirt
from bmslice.topology.sysfs import read_host_tree
from cli_errors import one_error
from inventory_yaml import load_inventory
from test_fleet_example import EXAMPLE, example_data
from treebuilder import server1_spec, write_tree

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "examples" / "server1" / "spec.yaml"
BIN = Path(sys.executable).parent
DATA = Path(__file__).parent / "data"
INSTALL = "\ninstall vfio-pci /bin/sh -c 'touch /tmp/bmslice-pwned'"
NIC = "sys/bus/pci/devices/0000:01:00.0"  # eno1, which the spec passes through


def bmslice(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "bmslice.cli.main", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120, cwd=cwd)


# --- host trees ------------------------------------------------------------------------------


def _real(tree: Path, rel: str) -> Path:
    return Path(os.path.realpath(tree / rel))


def _relink(link: Path, name: str) -> None:
    target = Path(os.readlink(link)).parent / name
    link.unlink()
    link.symlink_to(target)


def _driver(name: str) -> Callable[[Path], str]:
    def change(tree: Path) -> str:
        _relink(_real(tree, NIC) / "driver", name)
        return f"{NIC}/driver"

    return change


def _attribute(attr: str, value: str) -> Callable[[Path], str]:
    def change(tree: Path) -> str:
        (_real(tree, NIC) / attr).write_text(value + "\n")
        return f"{NIC}/{attr}"

    return change


def _interface(name: str) -> Callable[[Path], str]:
    """Another interface of the passed-through NIC, named `name` (in its net/ and in class/net)."""

    def change(tree: Path) -> str:
        device = _real(tree, NIC)
        (device / "net" / name).mkdir()
        (tree / "sys/class/net" / name).symlink_to(device / "net" / name)
        return "sys/class/net"

    return change


def _master(name: str) -> Callable[[Path], str]:
    def change(tree: Path) -> str:
        (_real(tree, "sys/class/net/eno4") / "master").symlink_to(f"../../../virtual/net/{name}")
        return "sys/class/net/eno4/master"

    return change


def _route(name: str) -> Callable[[Path], str]:
    def change(tree: Path) -> str:
        route = tree / "proc/net/route"
        route.write_text(route.read_text().replace("eno3\t", f"{name}\t", 1))
        return "proc/net/route"

    return change


def _mac(value: str) -> Callable[[Path], str]:
    def change(tree: Path) -> str:
        (_real(tree, "sys/class/net/eno1") / "address").write_text(value + "\n")
        return "sys/class/net/eno1/address"

    return change


HOSTILE_TREES: list[tuple[str, Callable[[Path], str], str]] = [
    ("driver + modprobe install line", _driver("ixgbe\ninstall ixgbe sh -c reboot"), "not a kernel driver name"),
    ("driver with a space", _driver("ixgbe evil"), "not a kernel driver name"),
    ("driver with a shell metacharacter", _driver("ixgbe;reboot"), "not a kernel driver name"),
    ("driver with $()", _driver("$(reboot)"), "not a kernel driver name"),
    ("vendor id + install line", _attribute("vendor", "0x8086" + INSTALL), "not a PCI id"),
    ("vendor id of 5 digits", _attribute("vendor", "0x80861"), "not a PCI id"),
    ("device id with a space", _attribute("device", "0x1528 ids=dead:beef"), "not a PCI id"),
    ("device id in fullwidth digits", _attribute("device", "0x\uff11528"), "not a PCI id"),
    ("class code with a newline", _attribute("class", "0x020000\nx"), "not a PCI class code"),
    ("interface with a newline", _interface("eth9\ninstall"), "not an interface name"),
    ("interface with a space", _interface("eth 9"), "not an interface name"),
    ("interface with a colon", _interface("eth9:1"), "not an interface name"),
    ("interface of 16 bytes", _interface("abcdefghijklmnop"), "not an interface name"),
    ("interface with a no-break space", _interface("eth\u00a09"), "not an interface name"),
    ("bond master with a newline", _master("bond0\nx"), "not an interface name"),
    ("default route on an alias", _route("eno3:1"), "not an interface name"),
    ("MAC address + a line", _mac("02:00:00:00:00:01\nset x"), "not a link-layer address"),
]


@pytest.mark.parametrize(("case", "change", "reason"), HOSTILE_TREES, ids=[c[0] for c in HOSTILE_TREES])
def test_a_tree_value_outside_its_grammar_is_refused_where_it_is_read(
    tmp_path: Path, case: str, change: Callable[[Path], str], reason: str
) -> None:
    tree = write_tree(server1_spec(), tmp_path / "host")
    rel = change(tree)
    with pytest.raises(TopologyError) as refused:
        read_host_tree(tree)
    assert str(refused.value).startswith(str(tree / rel)) and reason in str(refused.value)
    out = tmp_path / "out"
    line = one_error(bmslice("host-config", SPEC, "--host-root", tree, "--out", out), str(tree / rel), reason)
    assert "\\n" in line or "\n" not in case  # the value is shown escaped, on the one line
    assert not (out / VFIO_OPTIONS).exists()


def _modprobe_config(directory: Path) -> list[str]:
    """What kmod's own parser makes of a modprobe.d directory: bmslice's lines (vfio, softdep, install)."""
    modprobe = shutil.which("modprobe") or "/usr/sbin/modprobe"
    shown = subprocess.run([modprobe, "-C", str(directory), "--showconfig"], capture_output=True, text=True, check=True)
    return [line for line in shown.stdout.splitlines() if line.startswith(("options vfio", "softdep", "install"))]


def test_the_clean_tree_renders_modprobe_d_that_kmod_reads_as_written(tmp_path: Path) -> None:
    tree = write_tree(server1_spec(), tmp_path / "host")
    out = tmp_path / "out"
    result = bmslice("host-config", SPEC, "--host-root", tree, "--out", out)
    assert result.returncode == 0, result.stderr
    assert _modprobe_config((out / VFIO_OPTIONS).parent) == [
        "options vfio_pci ids=8086:1528",
        "softdep ixgbe pre: vfio-pci",
    ]


# --- the render edge: values no reader saw (a plan recorded in libvirt metadata) ------------


def _passthrough_plan(tmp_path: Path, driver: str = "ixgbe") -> tuple[Plan, Any]:
    """Both ports of the X540 (one PCI id) passed through, each recorded with `driver`."""
    topo = read_host_tree(write_tree(server1_spec(), tmp_path / "host"))
    devices = tuple(
        DeviceAssignment(f"0000:01:00.{f}", "passthrough", 0, interface=f"eno{f + 1}", driver=driver) for f in (0, 1)
    )
    host = HostPlan(CpuSet.of(0), CpuSet.parse("1-23"), (), False)
    return Plan(host, (replace(_any_vm(), devices=devices),)), topo


def _any_vm() -> Any:
    from bmslice.model.plan import GuestTopology, VmPlan

    return VmPlan("red", (0,), (2,), CpuSet.of(4), CpuSet.of(4), 1, GuestTopology(1, 1, 1), 1024, None, (), "host")


def test_a_recorded_driver_with_a_line_in_it_never_reaches_modprobe_d(tmp_path: Path) -> None:
    plan, topo = _passthrough_plan(tmp_path, driver="ixgbe" + INSTALL)
    with pytest.raises(RenderError) as refused:
        render_host_files(plan, topo)
    assert str(refused.value).startswith(f'refusing to write {VFIO_OPTIONS}: driver: "ixgbe\\ninstall vfio-pci')


def test_a_pci_id_no_reader_checked_never_reaches_modprobe_d(tmp_path: Path) -> None:
    plan, topo = _passthrough_plan(tmp_path)
    bad = replace(topo.pci("0000:01:00.0"), vendor="0x8086" + INSTALL)
    topo = replace(topo, pci_devices=tuple(bad if d.address == bad.address else d for d in topo.pci_devices))
    with pytest.raises(RenderError) as refused:
        render_host_files(plan, topo)
    assert str(refused.value).startswith(f'refusing to write {VFIO_OPTIONS}: PCI id: "0x8086\\ninstall vfio-pci')


def test_a_driver_that_is_no_module_name_gets_a_comment_not_a_softdep(tmp_path: Path) -> None:
    plan, topo = _passthrough_plan(tmp_path, driver="ixgbe.v2")
    text = render_host_files(plan, topo)[VFIO_OPTIONS]
    assert "# driver ixgbe.v2 is not a module name: no softdep for it\n" in text
    (tmp_path / "modprobe.d").mkdir()
    (tmp_path / "modprobe.d" / "bmslice-vfio.conf").write_text(text)
    assert _modprobe_config(tmp_path / "modprobe.d") == ["options vfio_pci ids=8086:1528"]


@pytest.mark.parametrize(
    ("render", "message"),
    [
        (lambda: udev_rules([PfPlan('0000:01:00.1", RUN+="/bin/sh', "eno2", 0, 4)]), "70-bmslice-sriov.rules: PF:"),
        (lambda: udev_rules([PfPlan("01:00.1", "eno2", 0, 4)]), "PF: '01:00.1' is not a PCI address"),
        (lambda: vf_settings(_vf_plan("red worker", "0000:01:00.1")), "vf-settings: domain: 'red worker'"),
        (lambda: vf_settings(_vf_plan("red\nblue", "0000:01:00.1")), "vf-settings: domain: 'red\\nblue'"),
        (lambda: vf_settings(_vf_plan("red", "0000:01:00.1 1 on")), "vf-settings: PF: '0000:01:00.1 1 on'"),
    ],
)
def test_the_sriov_files_refuse_a_word_their_readers_would_split(render: Callable[[], str], message: str) -> None:
    with pytest.raises(RenderError) as refused:
        render()
    assert message in str(refused.value)


def _vf_plan(vm: str, pf: str) -> Plan:
    vf = DeviceAssignment("0000:01:10.1", "vf", 0, interface="eno2", pf=pf, vf_index=0)
    return Plan(HostPlan(CpuSet.of(0), CpuSet.of(1), (), False), (replace(_any_vm(), name=vm, devices=(vf,)),))


def _switch(**port: Any) -> dict[str, Any]:
    entry = {"port": "ge-0/0/9", "host": "server1", "nic": "eno1", "mode": "access", "vlans": [100], "vms": ["red-1"]}
    return {"name": "sw1", "vlans": [{"id": 100, "name": "RED"}], "ports": [{**entry, **port}]}


@pytest.mark.parametrize(
    ("switch", "message"),
    [
        (_switch(port="ge-0/0/9.0"), "port: 'ge-0/0/9.0' is not a Junos physical port"),
        (_switch(port="ge-0/0/9 unit 0"), "port: 'ge-0/0/9 unit 0'"),
        (_switch(host='server1" ; set system'), "host: 'server1\" ; set system'"),
        (_switch(nic="eno1\nset system services telnet"), "NIC: 'eno1\\nset system services telnet'"),
        (_switch(vms=["red-1", "x\ny"]), "VM: 'x\\ny'"),
        (_switch(mode="access; set x"), "mode: 'access; set x'"),
        ({**_switch(), "vlans": [{"id": 100, "name": "RED\nset x"}]}, "VLAN name: 'RED\\nset x'"),
        ({**_switch(), "name": "../../etc/cron.d/x"}, "switch: '../../etc/cron.d/x'"),
    ],
)
def test_every_word_of_a_junos_line_is_asserted_at_the_render_edge(switch: dict[str, Any], message: str) -> None:
    with pytest.raises(RenderError) as refused:
        junos_config(switch)
    assert message in str(refused.value)


# --- hwloc and libvirt XML -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('name="eno1"', 'name="eno1&#10;install x"', "name: 'eno1\\ninstall x' is not an interface name"),
        ('name="eno1"', 'name="eno1:0"', "name: 'eno1:0' is not an interface name"),
        ('name="eno1"', 'name="an-interface-name-too-long"', "is not an interface name"),
    ],
)
def test_hwloc_interface_names_meet_the_kernel_rule(old: str, new: str, message: str) -> None:
    xml = (DATA / "hwloc" / "pci-locality.xml").read_text()
    assert old in xml
    with pytest.raises(TopologyError) as refused:
        topology_from_hwloc(xml.replace(old, new, 1), "x")
    assert message in str(refused.value) and "line " in str(refused.value)


LIBVIRT = DATA / "libvirt"


@pytest.mark.parametrize(
    ("device", "old", "new", "message"),
    [
        ("pci_0000_01_00_0.xml", "<name>vfio-pci</name>", "<name>vfio-pci&#10;install x</name>", "driver:"),
        ("pci_0000_01_00_0.xml", "<name>vfio-pci</name>", "<name>vfio pci</name>", "'vfio pci' is not a kernel driver"),
        ("pci_0000_01_00_0.xml", "id='0x1528'", "id='0x15288'", "product id: '0x15288' is not a PCI id"),
        ("pci_0000_01_00_0.xml", "id='0x8086'", "id='8086 x'", "vendor id: '8086 x' is not a PCI id"),
        ("pci_0000_01_00_0.xml", "<bus>1</bus>", "<bus>300</bus>", "PCI address 0:300:0.0 is out of range"),
        ("net_eno3_ac_1f_6b_00_00_03.xml", "<interface>eno3", "<interface>eno 3", "interface: 'eno 3'"),
        ("net_eno3_ac_1f_6b_00_00_03.xml", "AC:1F:6B:00:00:03", "AC:1F:6B:00:00:03 x", "address: 'AC:1F:6B"),
    ],
)
def test_libvirt_node_device_values_meet_their_grammar(device: str, old: str, new: str, message: str) -> None:
    names = ("pci_0000_00_01_0.xml", "pci_0000_01_00_0.xml", "pci_0000_08_00_0.xml", "net_eno3_ac_1f_6b_00_00_03.xml")
    xmls = [(LIBVIRT / n).read_text() for n in names]
    index = names.index(device)
    assert old in xmls[index]
    xmls[index] = xmls[index].replace(old, new, 1)
    with pytest.raises(TopologyError) as refused:
        topology_from_libvirt((LIBVIRT / "server1-capabilities.xml").read_text(), xmls, "fixture")
    assert message in str(refused.value)


# --- fleet and placement files ---------------------------------------------------------------


def _fleet_main(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str]:
    """`bmslice fleet ...` in this process (the fleet commands' own entry point): exit code, stderr."""
    code = fleet_cmd.main(["fleet", *map(str, args)])
    return code, capsys.readouterr().err


def _one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    for needle in needles:
        assert needle in err, (needle, err)


JINJA = "{{ lookup('pipe', 'touch pwned') }}"
BAD_FLEETS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    (
        "Jinja in a URI",
        lambda d: d["inventory"][1].update(uri=f"qemu+ssh://root@server1/system?x={JINJA}"),
        "inventory[1].uri: \"qemu+ssh://root@server1/system?x={{ lookup('pipe'",
    ),
    ("newline in a URI", lambda d: d["inventory"][1].update(uri="qemu:///system\n"), "'qemu:///system\\n' is not a"),
    ("space in a URI", lambda d: d["inventory"][1].update(uri="qemu+ssh://a b/system"), "is not a libvirt URI"),
    # a URI's host and user reach ssh's command line (Ansible puts the host before the command, no "--")
    (
        "an ssh option as a URI's host",
        lambda d: d["inventory"][1].update(uri="qemu+ssh://-oProxyCommand=x/system"),
        "its host starts with '-'",
    ),
    (
        "an escaped ssh option as a URI's host",
        lambda d: d["inventory"][1].update(uri="qemu+ssh://%2DoProxyCommand=x/system"),
        "its host starts with '-'",
    ),
    (
        "an ssh option as a URI's user",
        lambda d: d["inventory"][1].update(uri="qemu+ssh://-oProxyCommand=x@server1/system"),
        "its user starts with '-'",
    ),
    ("a URI's port not a number", lambda d: d["inventory"][1].update(uri="qemu+ssh://server1:ssh/system"), "Port"),
    ("a URI's port out of range", lambda d: d["inventory"][1].update(uri="qemu+ssh://server1:65536/system"), "Port"),
    (
        "an escaped newline in a URI's keyfile",
        lambda d: d["inventory"][1].update(uri="qemu+ssh://server1/system?keyfile=/k%0AEVIL:%201"),
        "control character",
    ),
    (
        "an escaped line separator in a URI",
        lambda d: d["inventory"][1].update(uri="qemu+ssh://server1/system?keyfile=/k%E2%80%A8x"),
        "control character",
    ),
    (
        "a port with a unit",
        lambda d: d["inventory"][1]["nics"]["eno1"].update(port="ge-0/0/9.0"),
        "inventory[1].nics.eno1.port: 'ge-0/0/9.0' is not a Junos physical port",
    ),
    (
        "a port with a second word",
        lambda d: d["inventory"][1]["nics"]["eno1"].update(port="ge-0/0/9 disable"),
        "'ge-0/0/9 disable' is not a Junos physical port",
    ),
    (
        "a switch that climbs out of fabric/",
        lambda d: d["inventory"][1]["nics"]["eno1"].update(switch="a/../../../etc/x"),
        "'a/../../../etc/x' is not a switch name",
    ),
    (
        "a switch name too long",
        lambda d: d["inventory"][1]["nics"]["eno1"].update(switch="s" * 64),
        "is not a switch name",
    ),
    ("a host name too long", lambda d: d["inventory"][1].update(name="h" * 64), "inventory[1].name:"),
    ("a VLAN name too long", lambda d: d["clusters"][0].update(vlan_name="V" * 64), "clusters[0].vlan_name:"),
    (
        "a NIC named '..'",
        lambda d: d["inventory"][1]["nics"].update({"..": d["inventory"][1]["nics"].pop("eno1")}),
        "'..' is not an interface name",
    ),
]


@pytest.mark.parametrize(("case", "change", "message"), BAD_FLEETS, ids=[c[0] for c in BAD_FLEETS])
def test_a_fleet_value_outside_its_grammar_is_refused(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    change: Callable[[dict[str, Any]], None],
    message: str,
) -> None:
    data = example_data()
    change(data)
    fleet, out = tmp_path / "fleet.yaml", tmp_path / "out"
    fleet.write_text(yaml.safe_dump(data))
    _one_line(*_fleet_main(capsys, "plan", fleet, "--no-check", "--out", out), f"error: {fleet}: ", message)
    assert not out.exists()


def _vm(data: dict[str, Any]) -> dict[str, Any]:
    return data["vms"][0]


def _nic(data: dict[str, Any]) -> dict[str, Any]:
    nic: dict[str, Any] = _vm(data)["nics"][0]
    return nic


BAD_PLACEMENTS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    (
        "VM name with a newline",
        lambda d: _vm(d).update(name="red-control-1\nset x"),
        "vms[0].name: 'red-control-1\\nset x'",
    ),
    ("VM name with Jinja", lambda d: _vm(d).update(name=JINJA), "vms[0].name: \"{{ lookup('pipe'"),
    ("VM name too long", lambda d: _vm(d).update(name="v" * 64), "vms[0].name:"),
    ("host with a space", lambda d: _vm(d).update(host="server1 x"), "vms[0].host: 'server1 x' is not a host name"),
    ("cluster with a quote", lambda d: _vm(d).update(cluster='red"'), "vms[0].cluster:"),
    ("PF with a newline", lambda d: _nic(d).update(pf="eno1\nset x"), "vms[0].nics[0].pf: 'eno1\\nset x' is neither"),
    (
        "PF address not canonical",
        lambda d: _nic(d).update(address="01:00.0"),
        "vms[0].nics[0].address: '01:00.0' is not a PCI",
    ),
    (
        "VLAN 5000",
        lambda d: _nic(d).update(vlan=5000),
        "vms[0].nics[0].vlan: Expected `int` <= 4094",
    ),
    ("count as text", lambda d: _nic(d).update(count="2"), "vms[0].nics[0].count: Expected `int"),
    ("numa_node a boolean", lambda d: _vm(d).update(numa_node=True), "vms[0].numa_node: Expected `int"),
    ("index a fraction", lambda d: _vm(d).update(index=1.5), "vms[0].index: Expected `int"),
    ("guest cores not numbers", lambda d: _vm(d).update(guest_cores=["0,x"]), "vms[0].guest_cores[0]: '0,x'"),
    ("an unknown key", lambda d: _vm(d).update(script="x"), "vms[0].script: unknown key"),
    ("vms not a list", lambda d: d.update(vms={"a": 1}), "vms: Expected `array`, got `object`"),
]


@pytest.fixture(scope="module")
def planned_example(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The example fleet file and the placement `fleet plan` wrote for it, planned once."""
    tmp = tmp_path_factory.mktemp("planned")
    fleet = tmp / "fleet.yaml"
    fleet.write_text(yaml.safe_dump(example_data()))
    assert fleet_cmd.main(["fleet", "plan", str(fleet), "--no-check", "--out", str(tmp / "out")]) == 0
    return fleet, json.loads((tmp / "out" / "placement.json").read_text())


@pytest.mark.parametrize("command", ["plan", "verify"])
@pytest.mark.parametrize(("case", "change", "message"), BAD_PLACEMENTS, ids=[c[0] for c in BAD_PLACEMENTS])
def test_a_placement_read_back_goes_through_the_fleet_grammar(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    planned_example: tuple[Path, dict[str, Any]],
    command: str,
    case: str,
    change: Callable[[dict[str, Any]], None],
    message: str,
) -> None:
    fleet, written = planned_example
    data = json.loads(json.dumps(written))
    change(data)
    placement = tmp_path / "placement.json"
    placement.write_text(json.dumps(data))
    _one_line(*_fleet_main(capsys, command, fleet, "--placement", placement), f"error: {placement}: {message}")


# --- Ansible never templates a value of the fleet file ---------------------------------------


def _hostile_fleet_paths(tmp_path: Path) -> Path:
    """The example with server1's host tree and the red join file under names holding a lookup."""
    data = example_data()
    tree = tmp_path / f"tree{JINJA}"
    shutil.copytree(EXAMPLE / "hosts" / "server1", tree, symlinks=True)
    data["inventory"][1]["host_root"] = str(tree)
    join = tmp_path / f"join{JINJA}"
    join.write_text("kubeadm join 10.0.0.1:6443 --token abcdef.0123456789abcdef\n")
    join.chmod(0o600)
    data["clusters"][0]["kubeadm_join_file"] = str(join)
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(data))
    out = tmp_path / "ansible"
    result = bmslice("fleet", "ansible", tmp_path / "fleet.yaml", "--out", out)
    assert result.returncode == 0, result.stderr
    return out


def _ansible_env(work: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": str(REPO),
        "ANSIBLE_HOME": str(work / "ansible-home"),
        "ANSIBLE_NOCOLOR": "1",
    }


def test_a_lookup_in_a_fleet_path_is_never_run_by_ansible(tmp_path: Path) -> None:
    out = _hostile_fleet_paths(tmp_path)
    inventory = load_inventory((out / "inventory.yml").read_text())
    server1 = inventory["all"]["children"]["bmslice_fleet"]["children"]["bmslice_worker"]["hosts"]["server1"]
    assert server1["bmslice_host_root"] == str(tmp_path / f"tree{JINJA}")
    assert "bmslice_host_root: !unsafe" in (out / "inventory.yml").read_text()
    listed = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", "inventory.yml", "--host", "server1"],
        cwd=out,
        env=_ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["bmslice_host_root"] == str(tmp_path / f"tree{JINJA}")
    played = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            *("-i", "inventory.yml", "site.yml", "--check"),
            *("-e", f"bmslice_command={BIN / 'bmslice'}", "-e", f"bmslice_base_dir={tmp_path / 'base'}"),
        ],
        cwd=out,
        env=_ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert played.returncode == 0, played.stdout + played.stderr  # server1 planned on the tree of that name
    assert not (out / "pwned").exists() and not (tmp_path / "pwned").exists()


def test_worked_examples_of_the_grammar_hold() -> None:
    assert doctest.testmod(grammar).failed == 0
