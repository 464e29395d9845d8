# ruff: noqa: F811 - test parameters take the names of the fixtures imported from libvirt_fixtures
"""Other people's data and interrupted runs, on the real libvirtd (issue 12).

- A volume under a slice's disk or seed name that bmslice did not make is refused by
  apply and left in place by destroy; a copy of a bmslice volume under another slice's
  name is not taken for that slice's.
- A seed is reused only when it is exactly this run's; a killed upload, a zero-filled
  seed or changed keys make the next apply rebuild it. Seeds over libvirt's 32 MiB
  message limit upload in pieces.
- SIGINT / SIGTERM during apply roll back; SIGKILL leaves only what apply or destroy
  then finishes or removes.
- libvirtd lost mid-command: one `error:` line; a rollback that could not finish says so.
  libvirtd "goes away" through a relay socket that closes every connection at a chosen
  call (tests/libvirt_proxy.py), so the shared daemon itself keeps running.
- One lock per host, whatever the URI spelling.
"""

from __future__ import annotations

import io
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from bmslice.apply.ownership import PVD_OFFSET, SECTOR, iso_is_whole, iso_mark, qcow2_mark
from libvirt_fixtures import (  # the fixtures are imported here; pytest finds them by name
    QEMU_URI,
    SSH_KEY,
    Cli,
    Run,
    Slices,
    bmslice_cli,  # noqa: F401
    bmslice_lock_dir,  # noqa: F401
    one_error,
    qemu_conn,  # noqa: F401
    qemu_slices,  # noqa: F401
    steps,
    vm_entry,
    with_disk,
    write_spec,
)
from libvirt_proxy import relay

libvirtd = pytest.mark.libvirtd
IMAGES = Path("/var/lib/libvirt/images")
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtherKeyOtherKeyOtherKeyOtherKeyOtherKey0 other@bmslice"


def big_seed_spec(tmp_path: Path, vm: str, mib: int = 40) -> tuple[Path, Path]:
    """A slice whose seed carries a `mib` MiB file: over libvirt's 32 MiB message limit, and slow enough to catch."""
    big = tmp_path / "big.txt"
    line = (vm * 8)[:63] + "\n"
    with big.open("w") as f:
        for i in range((mib << 20) // 64):
            f.write(f"{i:08d}" + line[8:])
    entry = with_disk(vm_entry(vm))
    entry["cloud_init"] = {"ssh_authorized_keys": [SSH_KEY], "seed_files": {"big.txt": "big.txt"}}
    return write_spec(tmp_path / "spec.yaml", [entry]), big


def seed_files(vm: str) -> dict[str, bytes]:
    """The seed as the guest will read it: the file on the host, opened as an ISO (Joliet names)."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO((IMAGES / f"{vm}-seed.iso").read_bytes()))
    try:
        out = {}
        for child in iso.list_children(joliet_path="/"):
            name = child.file_identifier().decode("utf-16-be")
            if name in (".", "..", "\x00", "\x01"):
                continue
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, joliet_path=f"/{name}")
            out[name] = buf.getvalue()
        return out
    finally:
        iso.close()


def assert_valid_seed(vm: str, *, key: str = SSH_KEY, big: Path | None = None) -> None:
    files = seed_files(vm)
    assert key.encode() in files["user-data"], files["user-data"]
    assert vm.encode() in files["meta-data"]
    if big is not None:
        assert files["big.txt"] == big.read_bytes()
    image = (IMAGES / f"{vm}-seed.iso").read_bytes()
    mark = iso_mark(image[PVD_OFFSET : PVD_OFFSET + SECTOR])
    assert mark is not None and mark.vm == vm and iso_is_whole(image, mark)


def pool(slices: Slices) -> Any:
    return slices.conn.storagePoolLookupByName("default")


def create_volume(slices: Slices, name: str, fmt: str, size: str = "1MiB") -> Any:
    value, unit = size[:-3], size[-3:]
    xml = (
        f"<volume><name>{name}</name><capacity unit='{unit}'>{value}</capacity>"
        f"<target><format type='{fmt}'/></target></volume>"
    )
    vol = pool(slices).createXML(xml, 0)
    pool(slices).refresh(0)
    return vol


def upload(slices: Slices, vol: Any, data: bytes, offset: int = 0) -> None:
    stream = slices.conn.newStream(0)
    vol.upload(stream, offset, len(data), 0)
    for at in range(0, len(data), 1 << 20):
        stream.send(data[at : at + (1 << 20)])
    stream.finish()


# --- other people's volumes -------------------------------------------------------------------


def _one_vm(slices: Slices, tmp_path: Path) -> tuple[str, Path]:
    """A spec with one slice that has a disk: its name and the spec's path."""
    vm = slices.name("a")
    return vm, write_spec(tmp_path / "spec.yaml", [with_disk(vm_entry(vm))])


def _applied(slices: Slices, cli: Cli, tmp_path: Path) -> tuple[str, Path]:
    """The same, applied."""
    vm, spec = _one_vm(slices, tmp_path)
    assert cli("apply", spec).returncode == 0
    return vm, spec


@libvirtd
@pytest.mark.parametrize("which", ["empty qcow2 under the disk name", "raw with data under the seed name"])
def test_foreign_volume_is_refused_and_still_there_after_destroy(
    which: str, qemu_slices: Slices, bmslice_cli: Cli, tmp_path: Path
) -> None:
    vm, spec = _one_vm(qemu_slices, tmp_path)
    if which.startswith("empty qcow2"):  # holds no data, yet is someone's: not proof enough either
        name = f"{vm}.qcow2"
        vol = create_volume(qemu_slices, name, "qcow2", "64MiB")
    else:
        name = f"{vm}-seed.iso"
        vol = create_volume(qemu_slices, name, "raw")
        upload(qemu_slices, vol, b"their own cloud-init seed\n" * 100)
    path = Path(vol.path())
    before = path.read_bytes()

    run = bmslice_cli("apply", spec)
    error = one_error(run)
    assert error.startswith(f"error: volume default/{name} already exists and bmslice did not create it"), run
    assert "(it carries no bmslice mark)" in error
    assert steps(run) == [] and qemu_slices.domains() == []
    assert qemu_slices.volumes() == [str(path)]  # nothing made, nothing taken

    run = bmslice_cli("destroy", spec)
    assert run.returncode == 0, run
    assert f"keep volume default/{name}: bmslice did not create it (it carries no bmslice mark)" in steps(run)
    assert "nothing to destroy" in run.lines
    assert qemu_slices.volumes() == [str(path)] and path.read_bytes() == before


@libvirtd
def test_a_copy_of_a_bmslice_volume_is_not_taken_for_another_slice(
    qemu_slices: Slices, bmslice_cli: Cli, tmp_path: Path
) -> None:
    """Someone copies slice A's disk file under B's name (cp): B's apply refuses it, B's destroy keeps it."""
    first, second = qemu_slices.name("a"), qemu_slices.name("b")
    spec_a = write_spec(tmp_path / "a.yaml", [with_disk(vm_entry(first))])
    spec_b = write_spec(tmp_path / "b.yaml", [with_disk(vm_entry(second))])
    assert bmslice_cli("apply", spec_a).returncode == 0
    shutil.copyfile(IMAGES / f"{first}.qcow2", IMAGES / f"{second}.qcow2")
    pool(qemu_slices).refresh(0)
    copy = pool(qemu_slices).storageVolLookupByName(f"{second}.qcow2")
    mark = qcow2_mark(Path(copy.path()).read_bytes()[:65536])
    assert mark is not None and mark.vm == first  # a byte-for-byte copy, mark included
    assert bmslice_cli("destroy", spec_a).returncode == 0  # this host has room for one slice only
    assert qemu_slices.volumes() == [copy.path()]

    run = bmslice_cli("apply", spec_b)
    error = one_error(run)
    assert f"volume default/{second}.qcow2 already exists and bmslice did not create it" in error
    assert f"its bmslice mark is for {first}'s default/{first}.qcow2" in error
    run = bmslice_cli("destroy", spec_b)
    assert run.returncode == 0, run
    assert qemu_slices.volumes() == [copy.path()] and qemu_slices.domains() == []


@libvirtd
def test_a_kept_disk_is_reused_and_removed_later(qemu_slices: Slices, bmslice_cli: Cli, tmp_path: Path) -> None:
    vm, spec = _applied(qemu_slices, bmslice_cli, tmp_path)
    run = bmslice_cli("destroy", spec, "--keep-disks")
    assert run.returncode == 0 and qemu_slices.volumes() == [str(IMAGES / f"{vm}.qcow2")], run
    run = bmslice_cli("apply", spec)
    assert run.returncode == 0, run
    assert steps(run)[:3] == [
        f"define {vm}",
        f"reuse volume default/{vm}.qcow2",
        f"create cloud-init seed default/{vm}-seed.iso",
    ]
    run = bmslice_cli("destroy", spec)
    assert run.returncode == 0 and qemu_slices.leftovers() == [], run


@libvirtd
def test_destroy_removes_bmslice_volumes_whose_domain_is_gone(
    qemu_slices: Slices, bmslice_cli: Cli, tmp_path: Path
) -> None:
    """No domain names them any more (undefined by hand, or a rollback cut short): the marks still prove them."""
    vm, spec = _applied(qemu_slices, bmslice_cli, tmp_path)
    dom = qemu_slices.conn.lookupByName(vm)
    dom.destroy()
    dom.undefine()
    run = bmslice_cli("destroy", spec)
    assert run.returncode == 0, run
    assert steps(run) == [
        f"{vm}: not defined",
        f"delete volume {IMAGES}/{vm}.qcow2 (its domain is gone)",
        f"delete volume {IMAGES}/{vm}-seed.iso (its domain is gone)",
    ]
    assert qemu_slices.leftovers() == []


@libvirtd
@pytest.mark.parametrize("other_metadata", [False, True])
def test_a_domain_of_the_same_name_that_bmslice_did_not_define_is_refused(
    qemu_slices: Slices, bmslice_cli: Cli, tmp_path: Path, other_metadata: bool
) -> None:
    vm = qemu_slices.name("a")
    metadata = "<metadata><other:x xmlns:other='https://example.com/other'>{}</other:x></metadata>"
    qemu_slices.conn.defineXML(
        f"<domain type='qemu'><name>{vm}</name>{metadata if other_metadata else ''}<memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64'>hvm</type></os></domain>"
    )
    foreign = (
        f"a domain named {vm} already exists and bmslice did not define it (it carries no bmslice metadata); "
        "bmslice does not take over another's domain"
    )
    spec = write_spec(tmp_path / "spec.yaml", [with_disk(vm_entry(vm))])
    run = bmslice_cli("apply", spec)
    assert one_error(run) == f"error: {foreign}: rename one of them"
    assert qemu_slices.volumes() == []
    run = bmslice_cli("verify", spec)  # it is defined (not "not defined"), just not bmslice's
    assert run.returncode == 1 and foreign in run.lines and f"{vm} is not defined" not in run.stdout, run
    run = bmslice_cli("status", spec)
    assert run.returncode == 1 and re.search(rf"{re.escape(vm)}\s+│ not bmslice's ", run.stdout), run
    run = bmslice_cli("destroy", spec)
    assert run.returncode == 0 and f"{vm}: {foreign}; left as it is, with its volumes" in steps(run), run
    assert qemu_slices.domains() == [vm]


def _replace_disk(slices: Slices, vm: str, *, data: bool) -> Path:
    """Swap the slice's disk file for a fresh qcow2 without bmslice's mark (qemu-img, as a person would)."""
    disk = IMAGES / f"{vm}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=1.1", str(disk), "64M"], check=True)
    if data:
        subprocess.run(["qemu-io", "-c", "write -P 0x5a 0 64k", str(disk)], check=True, capture_output=True)
    pool(slices).refresh(0)
    return disk


@libvirtd
def test_an_unmarked_disk_under_an_existing_slice_is_finished_only_when_empty(
    qemu_slices: Slices, bmslice_cli: Cli, tmp_path: Path
) -> None:
    """Empty: what a run killed between creating and marking the disk leaves; apply marks it.
    Holding data (a swapped file, a disk from before marks): used as it is, never changed or deleted."""
    vm, spec = _applied(qemu_slices, bmslice_cli, tmp_path)
    qemu_slices.conn.lookupByName(vm).destroy()
    disk = _replace_disk(qemu_slices, vm, data=False)
    run = bmslice_cli("apply", spec)
    assert run.returncode == 0, run
    assert steps(run) == [
        f"mark volume default/{vm}.qcow2 as bmslice's (an interrupted run left it unmarked)",
        f"start {vm}",
    ]
    mark = qcow2_mark(disk.read_bytes()[:65536])
    assert mark is not None and mark.vm == vm

    qemu_slices.conn.lookupByName(vm).destroy()
    _replace_disk(qemu_slices, vm, data=True)
    before = disk.read_bytes()
    run = bmslice_cli("apply", spec)
    assert run.returncode == 0 and steps(run) == [f"start {vm}"], run
    assert (
        f"warning: volume default/{vm}.qcow2 is not bmslice's (it carries no bmslice mark): the slice goes on "
        "using it; bmslice does not change it, and destroy keeps it"
    ) in run.stderr
    run = bmslice_cli("destroy", spec)
    assert run.returncode == 0, run
    assert f"keep volume {disk}: bmslice did not create it (it carries no bmslice mark)" in steps(run)
    assert qemu_slices.domains() == [] and qemu_slices.volumes() == [str(disk)]
    assert disk.read_bytes()[65536:] == before[65536:]  # the guest's data untouched


@libvirtd
def test_a_disk_deleted_under_a_running_slice_is_not_replaced_by_an_empty_one(
    qemu_slices: Slices, bmslice_cli: Cli, tmp_path: Path
) -> None:
    vm, spec = _applied(qemu_slices, bmslice_cli, tmp_path)
    pool(qemu_slices).storageVolLookupByName(f"{vm}.qcow2").delete(0)  # QEMU still has the file open
    run = bmslice_cli("apply", spec)
    assert run.returncode == 0 and steps(run) == [], run
    assert f"warning: volume default/{vm}.qcow2 is gone from under the running {vm}" in run.stderr
    qemu_slices.conn.lookupByName(vm).destroy()
    run = bmslice_cli("apply", spec)  # stopped: now the slice gets a new, empty disk
    assert run.returncode == 0 and steps(run) == [f"create volume default/{vm}.qcow2 (64 MiB qcow2)", f"start {vm}"], (
        run
    )
    assert bmslice_cli("destroy", spec).returncode == 0
    assert qemu_slices.leftovers() == []


# --- seeds: reused only when exactly this run's -------------------------------------------------


def _freeze_during_seed_upload(run: Any, seed: Path, total: int) -> None:
    """Stop the run once the seed upload is under way (data in the file, not all of it), then kill it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            written = seed.stat().st_blocks * 512
        except FileNotFoundError:
            written = 0
        if written > 2 << 20:  # past the mark written first: the main upload has begun
            run.signal(signal.SIGSTOP)
            run.signal(signal.SIGKILL)
            return
        time.sleep(0.001)
    run.signal(signal.SIGKILL)
    pytest.fail(f"the seed upload into {seed} never began")


@libvirtd
def test_killed_seed_upload_then_apply_gives_a_valid_seed(
    qemu_slices: Slices, bmslice_cli: Cli, tmp_path: Path
) -> None:
    vm = qemu_slices.name("a")
    spec, big = big_seed_spec(tmp_path, vm)
    seed = IMAGES / f"{vm}-seed.iso"
    run = bmslice_cli.start("apply", spec)
    run.wait_line(f"create cloud-init seed default/{vm}-seed.iso")
    _freeze_during_seed_upload(run, seed, big.stat().st_size)
    killed = run.finish()
    assert killed.returncode == -signal.SIGKILL, killed
    # what SIGKILL left: the domain (defined first), its disk, and a seed cut short
    assert qemu_slices.domains() == [vm] and not qemu_slices.conn.lookupByName(vm).isActive()
    assert seed.stat().st_blocks * 512 < big.stat().st_size, "the upload finished before the kill"

    run = bmslice_cli("apply", spec)
    assert run.returncode == 0, run
    assert steps(run) == [
        f"rebuild cloud-init seed default/{vm}-seed.iso (it is incomplete: an interrupted upload)",
        f"start {vm}",
        f"set autostart on {vm}",
    ]
    assert_valid_seed(vm, big=big)
    assert bmslice_cli("verify", spec).returncode == 0
    assert bmslice_cli("destroy", spec).returncode == 0
    assert qemu_slices.leftovers() == []


@libvirtd
def test_zero_filled_or_outdated_seed_is_rebuilt_and_a_good_one_kept(
    qemu_slices: Slices, bmslice_cli: Cli, tmp_path: Path
) -> None:
    vm, spec = _applied(qemu_slices, bmslice_cli, tmp_path)
    seed = IMAGES / f"{vm}-seed.iso"
    mtime = seed.stat().st_mtime_ns

    run = bmslice_cli("apply", spec)  # exactly this run's seed: left alone
    assert run.returncode == 0 and steps(run) == [] and seed.stat().st_mtime_ns == mtime, run

    # a killed run between creating the seed and its first byte leaves it all zeros
    qemu_slices.conn.lookupByName(vm).destroy()
    pool(qemu_slices).storageVolLookupByName(seed.name).wipe(0)
    assert not any(seed.read_bytes())
    run = bmslice_cli("apply", spec)
    assert run.returncode == 0, run
    assert steps(run)[0] == f"rebuild cloud-init seed default/{vm}-seed.iso (an interrupted run left it empty)"
    assert_valid_seed(vm)

    # new keys: the seed must carry them
    changed = with_disk(vm_entry(vm))
    changed["cloud_init"] = {"ssh_authorized_keys": [OTHER_KEY]}
    write_spec(spec, [changed])
    run = bmslice_cli("apply", spec)
    assert run.returncode == 0, run
    assert steps(run) == [f"rebuild cloud-init seed default/{vm}-seed.iso (its content differs from this run's)"]
    assert_valid_seed(vm, key=OTHER_KEY)
    assert SSH_KEY.encode() not in seed.read_bytes()
    assert bmslice_cli("destroy", spec).returncode == 0
    assert qemu_slices.leftovers() == []


# --- signals ---------------------------------------------------------------------------------------


@libvirtd
@pytest.mark.parametrize(
    ("sig", "during"),
    [
        (signal.SIGINT, "create cloud-init seed"),
        (signal.SIGTERM, "create cloud-init seed"),
        (signal.SIGINT, "define"),
        (signal.SIGINT, "start"),
    ],
)
def test_signal_mid_apply_leaves_nothing(
    sig: signal.Signals, during: str, qemu_slices: Slices, bmslice_cli: Cli, tmp_path: Path
) -> None:
    vm = qemu_slices.name("a")
    spec, _big = big_seed_spec(tmp_path, vm)
    run = bmslice_cli.start("apply", spec)
    run.wait_line(f"  {during} ")
    run.signal(sig)
    done = run.finish()
    error = one_error(done)
    assert f"interrupted by {sig.name}" in error and "rolled back" in error, done
    assert "ROLLBACK INCOMPLETE" not in error
    assert "applied:" not in done.stdout
    assert qemu_slices.leftovers() == []


# --- libvirtd lost mid-command ------------------------------------------------------------------------


def _cut_runs(bmslice_cli: Cli, tmp_path: Path, *args: str | Path, cut_at: int | None) -> tuple[Run, int]:
    with relay(tmp_path / "libvirt.sock", cut_at) as proxy:
        run = bmslice_cli(*args, "--connect", proxy.uri)
        return run, proxy.calls


def _clean_error(run: Run) -> str:
    assert "Traceback" not in run.stderr + run.stdout, run
    return one_error(run)


@libvirtd
def test_losing_libvirtd_during_verify_or_status_is_one_error_line(
    qemu_slices: Slices, bmslice_cli: Cli, tmp_path: Path
) -> None:
    _vm, spec = _applied(qemu_slices, bmslice_cli, tmp_path)
    for command, stride in (("verify", 1), ("status", 3)):  # status reads through verify: a sample
        full, calls = _cut_runs(bmslice_cli, tmp_path, command, spec, cut_at=None)
        assert full.returncode == 0 and calls > 5, full
        for cut in range(1, calls, stride):  # the last call closes the connection: nothing left to lose
            run, _ = _cut_runs(bmslice_cli, tmp_path, command, spec, cut_at=cut)
            error = _clean_error(run)
            assert error.startswith("error: "), (cut, run)
            assert "ok:" not in run.stdout and "slice" not in run.stdout, (cut, run)  # no half report
    assert bmslice_cli("destroy", spec).returncode == 0


@libvirtd
def test_losing_libvirtd_during_destroy_is_one_error_line_and_the_next_destroy_finishes(
    qemu_slices: Slices, bmslice_cli: Cli, tmp_path: Path
) -> None:
    _vm, spec = _applied(qemu_slices, bmslice_cli, tmp_path)
    full, calls = _cut_runs(bmslice_cli, tmp_path, "destroy", spec, cut_at=None)
    assert full.returncode == 0 and qemu_slices.leftovers() == [], full
    for cut in range(1, calls, 4):  # a sample: each cut needs a fresh slice (a QEMU start)
        assert bmslice_cli("apply", spec).returncode == 0
        run, _ = _cut_runs(bmslice_cli, tmp_path, "destroy", spec, cut_at=cut)
        _clean_error(run)
        again = bmslice_cli("destroy", spec)
        assert again.returncode == 0, (cut, run, again)
        assert qemu_slices.leftovers() == [], (cut, run, again)


@libvirtd
def test_losing_libvirtd_during_apply_never_claims_a_rollback_it_did_not_do(
    qemu_slices: Slices, bmslice_cli: Cli, tmp_path: Path
) -> None:
    """Cut at every other call of an apply: one error line; whatever is left, the message says
    ROLLBACK INCOMPLETE, never "rolled back"; and `destroy` then removes all of it."""
    _vm, spec = _one_vm(qemu_slices, tmp_path)
    full, calls = _cut_runs(bmslice_cli, tmp_path, "apply", spec, cut_at=None)
    assert full.returncode == 0, full
    assert bmslice_cli("destroy", spec).returncode == 0
    incomplete = 0
    for cut in range(1, calls, 2):
        run, _ = _cut_runs(bmslice_cli, tmp_path, "apply", spec, cut_at=cut)
        error = _clean_error(run)
        left = qemu_slices.leftovers()
        if left:
            assert "ROLLBACK INCOMPLETE" in error and "rolled back" not in error, (cut, left, run)
            incomplete += 1
        again = bmslice_cli("destroy", spec)
        assert again.returncode == 0, (cut, run, again)
        assert qemu_slices.leftovers() == [], (cut, run, again)
    assert incomplete > 0  # some cuts did land between a change and its undo


# --- one lock per host ----------------------------------------------------------------------------------


@libvirtd
@pytest.mark.parametrize(
    "second_uri",
    [
        "qemu:///system",
        "qemu:///system?",
        "qemu+unix:///system",
        "qemu+unix:///system?socket=/run/libvirt/libvirt-sock",
    ],
)
def test_two_applies_with_equivalent_uris_serialise(
    second_uri: str, qemu_slices: Slices, bmslice_cli: Cli, tmp_path: Path
) -> None:
    vm, spec = _one_vm(qemu_slices, tmp_path)
    first = bmslice_cli.start("apply", spec, "--connect", QEMU_URI)
    first.wait_line(f"define {vm}")
    first.signal(signal.SIGSTOP)  # mid-run, holding the lock
    try:
        second = bmslice_cli("apply", spec, "--connect", second_uri)
    finally:
        first.signal(signal.SIGCONT)
    error = one_error(second)
    assert "another bmslice run holds the lock for host qemu@" in error, second
    assert f"(pid {first.proc.pid} via {QEMU_URI})" in error
    assert steps(second) == []
    done = first.finish()
    assert done.returncode == 0 and "applied: 5 step(s)" in done.lines, done
    assert bmslice_cli("destroy", spec, "--connect", second_uri).returncode == 0
    assert qemu_slices.leftovers() == []


def test_which_uris_are_this_machine() -> None:
    from bmslice.apply.uri import is_local, is_local_system

    local = [
        "qemu:///system",
        "qemu:///system?",
        "qemu+unix:///system",
        "qemu+unix:///system?socket=/x",
        "qemu:///session",
    ]
    remote = ["qemu+ssh://server1/system", "qemu://localhost/system", "qemu+tcp://h/system", "test:///default"]
    assert all(is_local(u) for u in local) and not any(is_local(u) for u in remote)
    assert is_local_system("qemu+unix:///system?socket=/x") and not is_local_system("qemu:///session")
