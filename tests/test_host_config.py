"""host-config: every host file for the design note's server against golden files, and per-machine content."""

from __future__ import annotations

from pathlib import Path

import pytest

from bmslice.cli import host_cmds
from bmslice.model.spec import load_spec, spec_from_data
from bmslice.plan.planner import make_plan
from bmslice.render.exporter_unit import EXPORTER_UNIT_PATH
from bmslice.render.host_files import render_host_files, runtime_settings
from bmslice.topology.sysfs import read_host_tree
from golden import assert_golden
from hosttrees import MACHINES, plan_for

EXAMPLES = Path(__file__).parents[1] / "examples" / "server1"
SERVER1_FILES = {
    "etc/bmslice/hugepages",
    "etc/bmslice/kernel-args",
    "etc/default/grub.d/bmslice.cfg",
    "etc/modprobe.d/bmslice-vfio.conf",
    "etc/modules-load.d/bmslice-vfio.conf",
    "etc/systemd/system.conf.d/50-bmslice-cpus.conf",
    "etc/systemd/system/init.scope.d/50-bmslice-cpus.conf",
    "etc/systemd/system/irqbalance.service.d/50-bmslice-banned-cpus.conf",
    "etc/systemd/system/system.slice.d/50-bmslice-cpus.conf",
    "etc/systemd/system/user.slice.d/50-bmslice-cpus.conf",
    "etc/tuned/bmslice/tuned.conf",
    "etc/tuned/cpu-partitioning-variables.conf",
}


@pytest.fixture(scope="module")
def server1_files() -> dict[str, str]:
    topo = read_host_tree(EXAMPLES / "host")
    return render_host_files(make_plan(topo, load_spec(EXAMPLES / "spec.yaml")), topo)


def test_server1_renders_every_file(server1_files: dict[str, str]) -> None:
    assert set(server1_files) == SERVER1_FILES


@pytest.mark.parametrize("rel", sorted(SERVER1_FILES))
def test_server1_golden(server1_files: dict[str, str], rel: str) -> None:
    assert_golden(f"host-config/server1/{rel}", server1_files[rel])


def test_server1_values(server1_files: dict[str, str]) -> None:
    grub = server1_files["etc/default/grub.d/bmslice.cfg"]
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT intel_iommu=on iommu=pt isolcpus=2-11,14-23' in grub
    assert server1_files["etc/bmslice/kernel-args"].split()[-1] == "irqaffinity=0-1,12-13"
    assert (
        "IRQBALANCE_BANNED_CPULIST=2-11,14-23\n"
        in server1_files["etc/systemd/system/irqbalance.service.d/50-bmslice-banned-cpus.conf"]
    )
    tuned = server1_files["etc/tuned/cpu-partitioning-variables.conf"]
    assert "isolated_cores=2-11,14-23\n" in tuned and "no_balance_cores=2-11,14-23\n" in tuned
    for unit in ("system", "user"):
        assert (
            "[Slice]\nAllowedCPUs=0-1,12-13\n"
            in server1_files[f"etc/systemd/system/{unit}.slice.d/50-bmslice-cpus.conf"]
        )
    # eno1 and eno2 (both X540, 8086:1528) go to VMs; the I350s (8086:1521) stay with the host.
    vfio = server1_files["etc/modprobe.d/bmslice-vfio.conf"]
    assert "options vfio-pci ids=8086:1528\n" in vfio and "softdep ixgbe pre: vfio-pci\n" in vfio
    assert server1_files["etc/modules-load.d/bmslice-vfio.conf"].endswith("vfio-pci\n")
    assert "none planned" in server1_files["etc/bmslice/hugepages"]


def test_shared_pci_id_is_not_bound_by_id(tmp_path: Path) -> None:
    """Passing eno1 alone: ids=8086:1528 would also grab eno2, which the host keeps."""
    topo = read_host_tree(EXAMPLES / "host")
    spec = spec_from_data(
        {"vms": [{"name": "a", "vcpus": 2, "memory": "2GiB", "nics": [{"passthrough": "eno1"}]}]}, "s"
    )
    vfio = render_host_files(make_plan(topo, spec), topo)["etc/modprobe.d/bmslice-vfio.conf"]
    assert "options vfio-pci" not in vfio
    assert "the host keeps 0000:01:00.1" in vfio


@pytest.mark.parametrize("name", sorted(MACHINES))
def test_machines_render_consistently(tmp_path: Path, name: str) -> None:
    machine = MACHINES[name]()
    plan, topo = plan_for(machine, tmp_path)
    files = render_host_files(plan, topo)
    args = files["etc/bmslice/kernel-args"].split()
    amd = machine.host.vendor == "AuthenticAMD"
    iommu = [a for a in args if a.partition("=")[0] in ("intel_iommu", "amd_iommu", "iommu")]
    if any(vm.devices for vm in plan.vms):  # AMD's IOMMU is on by default: only pass-through mode to ask for
        assert iommu == (["iommu=pt"] if amd else ["intel_iommu=on", "iommu=pt"])
    else:  # nothing is passed through: no reason to change how the IOMMU boots
        assert iommu == []
    assert f"isolcpus={plan.host.isolated_cpus}" in args
    for setting in runtime_settings(plan):
        assert f"/{setting.path} {setting.value}\n" in files["etc/bmslice/hugepages"]
    if any(h.size_kib == 1048576 for h in plan.host.hugepages):
        assert "hugepagesz=1G" in args and not runtime_settings(plan)


def test_amd_hugepages_per_node(tmp_path: Path) -> None:
    plan, _ = plan_for(MACHINES["amd-nps2"](), tmp_path)
    assert [(s.path, s.value) for s in runtime_settings(plan)] == [
        ("sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages", 4096),
        ("sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages", 2048),
    ]


def test_cli_host_config_writes_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = host_cmds.main(
        ["host-config", str(EXAMPLES / "spec.yaml"), "--host-root", str(EXAMPLES / "host"), "--out", str(out)]
    )
    assert code == 0
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert written == SERVER1_FILES | {EXPORTER_UNIT_PATH}  # the CLI adds the exporter's unit
    printed = capsys.readouterr().out
    assert all(str(out / rel) in printed for rel in written)


@pytest.mark.parametrize(
    ("spec_text", "extra", "message"),
    [
        ("vms: [{name: a, vcpus: 0, memory: 1GiB}]\n", [], "vms[0].vcpus"),
        ("vms: [{name: a, vcpus: 2, memory: 1GiB, colour: red}]\n", [], "unknown key"),
        ("vms: [{name: a, vcpus: 64, memory: 1GiB}]\n", [], "error: "),
        ("vms: [{name: a, vcpus: 2, memory: 1GiB}]\n", ["--host-root", "/nonexistent/root"], "no such directory"),
    ],
)
def test_cli_host_config_refuses_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spec_text: str, extra: list[str], message: str
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text)
    out = tmp_path / "out"
    root = extra if extra else ["--host-root", str(EXAMPLES / "host")]
    assert host_cmds.main(["host-config", str(spec), *root, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_cli_usage_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        host_cmds.main(["host-config", "spec.yaml"])  # --out missing
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_host_text_in_a_comment_stays_in_the_comment() -> None:
    """A CPU vendor string (libvirt's XML may carry a newline) cannot add a line to the GRUB drop-in."""
    from dataclasses import replace

    topo = read_host_tree(EXAMPLES / "host")
    forged = replace(topo, cpu_vendor='GenuineIntel\nGRUB_CMDLINE_LINUX_DEFAULT="init=/bin/sh"')
    grub = render_host_files(make_plan(forged, load_spec(EXAMPLES / "spec.yaml")), forged)[
        "etc/default/grub.d/bmslice.cfg"
    ]
    settings = [line for line in grub.splitlines() if not line.startswith("#")]
    assert len(settings) == 1 and settings[0].startswith('GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT ')
    assert "init=/bin/sh" not in settings[0]
    assert '# Kernel args for CPU vendor GenuineIntel\\nGRUB_CMDLINE_LINUX_DEFAULT="init=/bin/sh"; ' in grub
