"""host-apply on host trees: writes exactly what it reports, a second run is a no-op, failures change nothing."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from bmslice.apply.host_apply import REBOOT_PENDING, Bootloader, apply_host, detect_bootloader
from bmslice.cli import host_cmds
from bmslice.render.host_files import render_host_files, runtime_settings
from bmslice.topology.fsroot import FsRoot
from hosttrees import MACHINES, build, clean_runtime
from treebuilder import RuntimeSpec

EXAMPLES = Path(__file__).parents[1] / "examples" / "server1"


@pytest.fixture(autouse=True)
def _lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bmslice.apply.lock.LOCK_DIR", tmp_path / "locks")


def snapshot(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_file():
                out[rel] = path.read_bytes()
            else:
                out[rel] = "dir"
    return out


def changed_files(before: dict[str, bytes | str], after: dict[str, bytes | str]) -> set[str]:
    return {rel for rel in set(before) | set(after) if before.get(rel) != after.get(rel) and after.get(rel) != "dir"}


def reported(stdout: str) -> set[str]:
    return {m.group(2) for m in re.finditer(r"^  (create|update|set|remove) /(\S+)", stdout, re.M)}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = host_cmds.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def server1_root(tmp_path: Path) -> Path:
    root = tmp_path / "server1"
    shutil.copytree(EXAMPLES / "host", root, symlinks=True)
    (root / "etc").mkdir()
    (root / "etc" / "debian_version").write_text("12.5\n")
    return root


def test_server1_writes_exactly_what_it_reports_then_nothing(
    server1_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = str(EXAMPLES / "spec.yaml")
    before = snapshot(server1_root)
    code, out, err = run(capsys, "host-apply", spec, "--host-root", str(server1_root))
    assert code == 0
    assert "warning: no /etc/default/grub: this host may not boot with GRUB" in err
    after = snapshot(server1_root)
    assert changed_files(before, after) == reported(out)
    assert "etc/default/grub.d/bmslice.cfg" in reported(out) and REBOOT_PENDING in reported(out)
    assert "next: bootloader not touched: run `update-grub` (it reads /etc/default/grub.d/bmslice.cfg)" in out
    pending_line = next(line for line in out.splitlines() if line.startswith("reboot pending: "))
    assert "isolcpus=2-11,14-23" in pending_line and "intel_iommu" not in pending_line  # already active
    pending = (server1_root / REBOOT_PENDING).read_text()
    assert "intel_iommu" not in pending and "nohz_full=2-11,14-23" in pending

    code, out, _ = run(capsys, "host-apply", spec, "--host-root", str(server1_root))
    assert code == 0
    # the exporter's unit and init.scope's drop-in among them
    assert "no changes: 14 file(s) and setting(s) already as planned" in out
    assert reported(out) == set()
    assert snapshot(server1_root) == after


def test_dry_run_writes_nothing(server1_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(server1_root)
    code, out, _ = run(capsys, "host-apply", str(EXAMPLES / "spec.yaml"), "--host-root", str(server1_root), "--dry-run")
    assert code == 0
    assert "  would create /etc/tuned/cpu-partitioning-variables.conf" in out
    assert "dry run: 14 change(s), nothing written" in out
    assert snapshot(server1_root) == before


@pytest.mark.parametrize("name", sorted(MACHINES))
def test_machines_apply_then_noop(tmp_path: Path, name: str) -> None:
    built = build(tmp_path, MACHINES[name](), boot_args=False, hugepages=False)
    files, settings = render_host_files(built.plan, built.topo), runtime_settings(built.plan)
    before = snapshot(built.root)
    first = apply_host(built.plan, files, settings, built.root)
    after = snapshot(built.root)
    assert changed_files(before, after) == {c.path for c in first.changes}
    assert {c.path for c in first.changes} >= set(files)
    for setting in settings:
        assert (built.root / setting.path).read_text() == f"{setting.value}\n"
    second = apply_host(built.plan, files, settings, built.root)
    assert second.changes == [] and snapshot(built.root) == after


def test_hugepages_only_raised(tmp_path: Path) -> None:
    built = build(tmp_path, MACHINES["amd-nps2"](), boot_args=True, hugepages=False)
    node0 = built.root / "sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages"
    node0.write_text("5000\n")  # more than planned: pages others use, left alone
    result = apply_host(built.plan, render_host_files(built.plan, built.topo), runtime_settings(built.plan), built.root)
    sets = {c.path: c.detail for c in result.changes if c.action == "set"}
    assert list(sets) == ["sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages"]
    assert sets[next(iter(sets))].startswith("0 -> 2048")
    assert node0.read_text() == "5000\n"


def test_reboot_pending_cleared_when_args_active(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    built = build(tmp_path, MACHINES["amd-small"](), boot_args=True)
    (built.root / "var/lib/bmslice").mkdir(parents=True)
    (built.root / REBOOT_PENDING).write_text("stale\n")
    code, out, _ = run(capsys, "host-apply", str(built.spec_path), "--host-root", str(built.root))
    assert code == 0
    assert f"  remove /{REBOOT_PENDING}" in out and "reboot pending" not in out
    assert not (built.root / REBOOT_PENDING).exists()


@pytest.mark.parametrize(
    ("distro", "kind", "says"),
    [
        ("debian", Bootloader.DEBIAN, "run `update-grub`"),
        ("rhel", Bootloader.RHEL, "run `grubby --update-kernel=ALL --args='isolcpus=1-3"),
        (None, Bootloader.UNKNOWN, "add the args in /etc/bmslice/kernel-args to the bootloader"),
    ],
)
def test_bootloader_detection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], distro: str | None, kind: Bootloader, says: str
) -> None:
    built = build(tmp_path, MACHINES["amd-small"](), lambda p, t: RuntimeSpec(distro=distro), boot_args=False)
    assert detect_bootloader(FsRoot(built.root)) is kind
    code, out, _ = run(capsys, "host-apply", str(built.spec_path), "--host-root", str(built.root))
    assert code == 0 and says in out
    assert not (built.root / "boot").exists()  # never touches the bootloader itself


def test_failure_puts_everything_back(server1_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (server1_root / "etc/tuned/cpu-partitioning-variables.conf").mkdir(parents=True)
    before = snapshot(server1_root)
    code, _, err = run(capsys, "host-apply", str(EXAMPLES / "spec.yaml"), "--host-root", str(server1_root))
    assert code == 2
    assert err.startswith("error: host-apply failed: ") and "is a directory" in err and err.count("\n") == 1
    assert "nothing was left changed" in err
    assert snapshot(server1_root) == before


def test_missing_sysfs_file_is_refused_and_rolled_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    built = build(tmp_path, MACHINES["amd-nps2"](), boot_args=False, hugepages=False)
    (built.root / "sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages").unlink()
    before = snapshot(built.root)
    code, _, err = run(capsys, "host-apply", str(built.spec_path), "--host-root", str(built.root))
    assert code == 2 and "node 1 2 MiB hugepages" in err and err.count("\n") == 1
    assert snapshot(built.root) == before


def test_bad_spec_writes_nothing(server1_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("vms: [{name: a, vcpus: 2, memory: lots}]\n")
    before = snapshot(server1_root)
    code, _, err = run(capsys, "host-apply", str(spec), "--host-root", str(server1_root))
    assert code == 2 and err.startswith("error: ") and "vms[0].memory" in err and err.count("\n") == 1
    assert snapshot(server1_root) == before


def test_runtime_state_does_not_disturb_apply(tmp_path: Path) -> None:
    built = build(tmp_path, MACHINES["server1"](), clean_runtime)
    result = apply_host(built.plan, render_host_files(built.plan, built.topo), (), built.root)
    assert result.reboot_pending == () and REBOOT_PENDING not in {c.path for c in result.changes}
