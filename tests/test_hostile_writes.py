"""Files bmslice writes as root where another user could have been first (faults.md invariant 15).

The other user is real: `nobody` (uid 65534) makes directories and plants links through
`subprocess.run(user=...)`, in a directory that works like /tmp (mode 1777, under /tmp, so
that user can reach it). Each plant points at a victim file and directory only root may
write; after the refusal both are as they were, the refusal is one `error:` line and exit 2,
and nothing was written where the plant was.

Every writer of a user-named file or directory is tried: `render`, `host-config`,
`fleet plan`, `fleet ansible` (`--out DIR`) and `show --svg/--html FILE`; then the lock
directory, and host trees.
"""

from __future__ import annotations

import os
import shutil
import stat
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import bmslice.apply.lock
from bmslice.apply.lock import host_lock, lock_path
from bmslice.apply.safe_dir import TREE_RULE, open_dir
from bmslice.apply.tree_files import HostTree
from bmslice.cli.main import main
from bmslice.errors import ApplyError
from libvirt_fixtures import Cli, one_error

ROOT = Path(__file__).parents[1]
SERVER1 = ROOT / "examples/server1"
FLEET = ROOT / "examples/fleet/fleet.yaml"
STRANGER = 65534  # nobody


def as_stranger(*argv: str | Path) -> None:
    subprocess.run(
        [str(a) for a in argv],
        user=STRANGER,
        group=STRANGER,
        extra_groups=[],
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.fixture
def playground() -> Iterator[Path]:
    """A directory like /tmp: root's, mode 1777, reachable by the other user."""
    base = Path(tempfile.mkdtemp(prefix="bmslice-hostile-", dir="/tmp"))
    base.chmod(0o1777)
    try:
        yield base
    finally:
        shutil.rmtree(base)


@dataclass(frozen=True)
class Victim:
    """A file and a directory only root writes: where a planted link would send root's writes."""

    dir: Path

    @property
    def file(self) -> Path:
        return self.dir / "precious"

    def intact(self) -> bool:
        return os.listdir(self.dir) == ["precious"] and self.file.read_text() == "root's own\n"


@pytest.fixture
def victim(tmp_path: Path) -> Victim:
    found = Victim(tmp_path / "victim")
    found.dir.mkdir()
    found.file.write_text("root's own\n")
    return found


def listing(path: Path) -> dict[str, str]:
    """What is below `path` (links by target), without following links."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            entry = Path(dirpath) / name
            out[str(entry.relative_to(path))] = os.readlink(entry) if entry.is_symlink() else str(entry.lstat().st_size)
    return out


def refused(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> str:
    """Run bmslice in this process; it must refuse with one `error:` line and exit 2."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


# --- every writer of a user-named directory -------------------------------------------------------


@dataclass(frozen=True)
class Writer:
    name: str
    argv: Callable[[Path], list[str | Path]]  # the command line writing into directory DIR
    file: str  # a file it writes below DIR
    subdir: str | None  # a directory below DIR it writes through (None: it writes only into DIR)


HOST = ["--host-root", SERVER1 / "host"]
WRITERS = [
    Writer("render", lambda d: ["render", SERVER1 / "spec.yaml", *HOST, "--out", d], "kernel-args", None),
    Writer(
        "host-config",
        lambda d: ["host-config", SERVER1 / "spec.yaml", *HOST, "--out", d],
        "etc/bmslice/kernel-args",
        "etc",
    ),
    Writer("fleet plan", lambda d: ["fleet", "plan", FLEET, "--no-check", "--out", d], "summary.txt", "hosts"),
    Writer("fleet ansible", lambda d: ["fleet", "ansible", FLEET, "--out", d], "site.yml", "hosts"),
    Writer("show --svg", lambda d: ["show", SERVER1 / "spec.yaml", *HOST, "--svg", d / "p.svg"], "p.svg", None),
    Writer("show --html", lambda d: ["show", SERVER1 / "spec.yaml", *HOST, "--html", d / "r.html"], "r.html", None),
]
IDS = [w.name for w in WRITERS]


def _strangers_dir(playground: Path) -> Path:
    out = playground / "fleet"
    as_stranger("mkdir", out)
    return out


@pytest.mark.parametrize("writer", WRITERS, ids=IDS)
def test_a_file_link_planted_in_a_shared_dir_is_refused(
    writer: Writer, playground: Path, victim: Victim, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _strangers_dir(playground)
    if "/" in writer.file:
        as_stranger("mkdir", "-p", out / writer.file.rsplit("/", 1)[0])
    as_stranger("ln", "-s", victim.file, out / writer.file)
    before = listing(out)
    error = refused(capsys, *writer.argv(out), "--out-shared")  # the user's choice: still no link followed
    assert f"{out}/{writer.file} is a symbolic link; refused" in error
    assert victim.intact() and listing(out) == before


@pytest.mark.parametrize("writer", WRITERS, ids=IDS)
def test_a_directory_link_planted_on_the_way_is_refused(
    writer: Writer, playground: Path, victim: Victim, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _strangers_dir(playground)
    link = out / (writer.subdir or "sub")
    as_stranger("ln", "-s", victim.dir, link)
    before = listing(out)
    error = refused(capsys, *writer.argv(out if writer.subdir else link), "--out-shared")
    assert f"{link} is a symbolic link" in error and "refused" in error
    assert victim.intact() and listing(out) == before


@pytest.mark.parametrize("writer", WRITERS, ids=IDS)
def test_a_dir_another_user_owns_is_refused(
    writer: Writer, playground: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _strangers_dir(playground)
    error = refused(capsys, *writer.argv(out))
    assert f"{out} is owned by user nobody; refused (give --out-shared to write there anyway" in error
    assert listing(out) == {}


@pytest.mark.parametrize("writer", WRITERS, ids=IDS)
def test_a_world_writable_dir_is_refused_without_the_explicit_choice(
    writer: Writer, playground: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = playground / "open"
    out.mkdir()
    out.chmod(0o777)  # not sticky: anyone may rename or remove what root writes there
    error = refused(capsys, *writer.argv(out))
    assert f"{out} is writable by every user; refused (give --out-shared" in error
    assert listing(out) == {}


@pytest.mark.parametrize("writer", WRITERS, ids=IDS)
def test_a_dir_that_is_another_users_link_is_refused(
    writer: Writer, playground: Path, victim: Victim, capsys: pytest.CaptureFixture[str]
) -> None:
    out = playground / "fleet"
    as_stranger("ln", "-s", victim.dir, out)
    error = refused(capsys, *writer.argv(out), "--out-shared")
    assert f"{out} is a symbolic link owned by user nobody; refused" in error
    assert victim.intact()


@pytest.mark.parametrize("writer", WRITERS, ids=IDS)
def test_a_dir_inside_another_users_dir_is_refused(
    writer: Writer, playground: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Root's own /tmp/x/out in nobody's /tmp/x: once written, nobody renames it away and puts their
    own out/ (their site.yml) in its place for root to run. Refused before anything is made there."""
    theirs = _strangers_dir(playground)
    out = theirs / "out"
    if writer.name.startswith("show"):
        out.mkdir()  # show writes into an existing directory
    error = refused(capsys, *writer.argv(out))
    assert f"{theirs}, on its way, is owned by user nobody; refused (give --out-shared" in error
    assert listing(theirs) == ({"out": "4096"} if writer.name.startswith("show") else {})


@pytest.mark.parametrize("how", ["relative from inside it", "writable by every user", "an ACL for nobody"])
def test_a_dir_below_one_others_can_rename_names_in_is_refused(
    playground: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if how == "relative from inside it":
        above = _strangers_dir(playground)
        monkeypatch.chdir(above)  # `--out out`: the working directory's own path is walked too
        out: Path = Path("out")
    else:
        above = _acl_dir(playground, ACL_USER) if how == "an ACL for nobody" else playground / "open"
        if how == "writable by every user":
            above.mkdir(mode=0o777)
            above.chmod(0o777)
        out = above / "out"
    error = refused(capsys, "fleet", "plan", FLEET, "--no-check", "--out", out)
    assert f"{above}, on its way, is " in error and "refused" in error
    assert listing(above) == {}
    shared = ["fleet", "plan", str(FLEET), "--no-check", "--out", str(out), "--out-shared"]
    assert main(shared) == 0  # the user's explicit choice
    capsys.readouterr()
    assert ((above / "out") / "summary.txt").is_file()


def test_explicitly_shared_and_sticky_dirs_are_written(playground: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--out-shared writes into another user's directory; a sticky one (like /tmp) needs no flag:
    nobody else may rename or remove what root writes there."""
    out = _strangers_dir(playground)
    assert main(["host-config", str(SERVER1 / "spec.yaml"), *map(str, HOST), "--out", str(out), "--out-shared"]) == 0
    assert "isolcpus=" in (out / "etc/bmslice/kernel-args").read_text()
    assert (out / "etc").stat().st_uid == 0 and stat.S_IMODE((out / "etc").stat().st_mode) == 0o755
    assert main(["render", str(SERVER1 / "spec.yaml"), *map(str, HOST), "--out", str(playground)]) == 0
    assert (playground / "kernel-args").stat().st_uid == 0
    assert not [name for name in os.listdir(playground) if name.endswith(".bmslice")]  # no temp file left
    capsys.readouterr()


def test_a_link_root_made_above_the_dir_is_followed(playground: Path, tmp_path: Path) -> None:
    """Only links another user could have planted are refused: root's own link in a sticky directory is not."""
    real = tmp_path / "real"
    real.mkdir()
    (playground / "mine").symlink_to(real)
    assert main(["render", str(SERVER1 / "spec.yaml"), *map(str, HOST), "--out", str(playground / "mine/out")]) == 0
    assert (real / "out/kernel-args").is_file()


def test_fleet_plan_refuses_a_shared_out_before_reading_its_placement(
    playground: Path, victim: Victim, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _strangers_dir(playground)
    as_stranger("ln", "-s", victim.file, out / "placement.json")
    error = refused(capsys, "fleet", "plan", FLEET, "--out", out)
    assert f"{out} is owned by user nobody; refused" in error
    error = refused(capsys, "fleet", "plan", FLEET, "--out", out, "--out-shared")
    assert f"{out}/placement.json is a symbolic link; refused" in error  # not read through the link either


def test_a_lab_cache_another_user_owns_is_refused_before_any_fetch(
    playground: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """apt-get and dpkg-deb write into the lab's --cache as root, following links: refused at once."""
    cache = _strangers_dir(playground)
    error = refused(capsys, "lab", "assets", "--cache", cache)
    assert error == f"error: --cache {cache} is owned by user nobody; refused"
    assert listing(cache) == {}


# A POSIX ACL lets another user write in a directory whatever its owner and its other bits say
# (the group bits then show the ACL's mask): a root-owned 0775 --out with `user:nobody:rwx` was
# written without --out-shared, where nobody could swap root's temp file for a link before the
# rename and leave site.yml a link to a playbook of their own.
ACL_USER, ACL_GROUP = 0x02, 0x08


def set_acl(path: Path, named: list[tuple[int, int, int]], mask: int = 0o7) -> None:
    """Give `path` an access ACL (Linux's xattr form): owner rwx, `named` (tag, perms, id), group r-x, `mask`, other r-x."""
    entries = [
        (0x01, 7, 0xFFFFFFFF),
        *sorted(named),
        (0x04, 5, 0xFFFFFFFF),
        (0x10, mask, 0xFFFFFFFF),
        (0x20, 5, 0xFFFFFFFF),
    ]
    entries.sort(key=lambda e: e[0])
    os.setxattr(
        path, "system.posix_acl_access", struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    )


def _acl_dir(playground: Path, tag: int) -> Path:
    out = playground / "acl"
    out.mkdir()
    out.chmod(0o755)
    set_acl(out, [(tag, 7, STRANGER)])
    as_stranger("touch", out / "proof")  # the ACL is real: nobody writes there
    (out / "proof").unlink()
    return out


@pytest.mark.parametrize("writer", WRITERS, ids=IDS)
def test_a_dir_an_acl_lets_another_user_write_is_refused(
    writer: Writer, playground: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _acl_dir(playground, ACL_USER)
    error = refused(capsys, *writer.argv(out))
    assert f"{out} is writable by user nobody (an ACL entry); refused (give --out-shared" in error
    assert listing(out) == {}


def test_an_acl_for_another_group_on_a_dir_below_out_is_refused(
    playground: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = playground / "plan"
    (out / "hosts").mkdir(parents=True)
    set_acl(out / "hosts", [(ACL_GROUP, 7, STRANGER)])
    error = refused(capsys, "fleet", "plan", FLEET, "--no-check", "--out", out)
    assert f"{out}/hosts is writable by group nogroup (an ACL entry); refused" in error
    assert list(listing(out)) == ["hosts"]


def test_an_acl_whose_mask_takes_write_away_is_no_refusal_and_shared_is_the_users_choice(
    playground: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    masked = playground / "masked"
    masked.mkdir()
    set_acl(masked, [(ACL_USER, 7, STRANGER)], mask=0o5)
    with pytest.raises(subprocess.CalledProcessError):
        as_stranger("touch", masked / "proof")
    assert main(["fleet", "plan", str(FLEET), "--no-check", "--out", str(masked)]) == 0
    out = _acl_dir(playground, ACL_USER)
    assert main(["fleet", "plan", str(FLEET), "--no-check", "--out", str(out), "--out-shared"]) == 0
    assert (out / "summary.txt").is_file() and (masked / "summary.txt").is_file()
    capsys.readouterr()


def test_a_lock_dir_an_acl_lets_another_user_write_is_refused(
    playground: Path, lock_in: Callable[[Path], None]
) -> None:
    lock_dir = playground / "bmslice"
    lock_dir.mkdir(mode=0o700)
    set_acl(lock_dir, [(ACL_USER, 7, STRANGER)])
    lock_in(lock_dir)
    with pytest.raises(ApplyError, match="is writable by group or others"):
        _locked()
    assert os.listdir(lock_dir) == []


# `metrics --textfile DIR`: node_exporter's directory, which must exist and be root's alone (no
# --out-shared: the exporter's own directory is never a shared one).
def _textfile(capsys: pytest.CaptureFixture[str], directory: Path) -> str:
    argv = ["metrics", SERVER1 / "spec.yaml", *HOST, "--connect", "test:///default", "--textfile", directory]
    return refused(capsys, *argv)


@pytest.mark.parametrize("how", ["owned by nobody", "writable by every user", "an ACL for nobody"])
def test_a_textfile_dir_others_can_write_is_refused(
    playground: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    if how == "owned by nobody":
        directory = _strangers_dir(playground)
    elif how == "an ACL for nobody":
        directory = _acl_dir(playground, ACL_USER)
    else:
        directory = playground / "open"
        directory.mkdir()
        directory.chmod(0o777)
    error = _textfile(capsys, directory)
    assert f"--textfile {directory} is " in error and "refused (give node_exporter's own textfile directory" in error
    assert listing(directory) == {}


def test_a_link_planted_at_the_textfile_is_refused_never_followed(
    playground: Path, victim: Victim, capsys: pytest.CaptureFixture[str]
) -> None:
    """In a sticky directory anyone may add names to: nobody's link at bmslice.prom is left as it is."""
    as_stranger("ln", "-s", victim.file, playground / "bmslice.prom")
    error = _textfile(capsys, playground)
    assert f"{playground}/bmslice.prom is a symbolic link; refused" in error
    assert (playground / "bmslice.prom").is_symlink() and victim.intact()


# --- the lock directory -------------------------------------------------------------------------


@pytest.fixture
def lock_in(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    def use(directory: Path) -> None:
        monkeypatch.setattr(bmslice.apply.lock, "LOCK_DIR", directory)

    return use


def _locked(key: str = "host-root:/nowhere") -> None:
    with host_lock(key):
        pass


def test_the_lock_dir_is_made_private(playground: Path, lock_in: Callable[[Path], None]) -> None:
    lock_in(playground / "bmslice")
    _locked()
    st = (playground / "bmslice").stat()
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    assert stat.S_IMODE(lock_path("host-root:/nowhere").stat().st_mode) == 0o600


def test_a_lock_dir_another_user_made_first_is_refused(playground: Path, lock_in: Callable[[Path], None]) -> None:
    as_stranger("mkdir", "-m", "700", playground / "bmslice")
    lock_in(playground / "bmslice")
    with pytest.raises(ApplyError) as err:
        _locked()
    assert str(err.value) == (
        f"lock directory {playground}/bmslice is owned by user nobody; refused "
        "(remove it; bmslice makes it again, mode 0700)"
    )


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777])
def test_a_lock_dir_others_can_write_is_refused(playground: Path, lock_in: Callable[[Path], None], mode: int) -> None:
    (playground / "bmslice").mkdir()
    (playground / "bmslice").chmod(mode)
    lock_in(playground / "bmslice")
    with pytest.raises(ApplyError, match=rf"is writable by group or others \(mode {mode:o}\); refused"):
        _locked()
    assert os.listdir(playground / "bmslice") == []


def test_a_lock_dir_that_is_another_users_link_is_refused(
    playground: Path, victim: Victim, lock_in: Callable[[Path], None]
) -> None:
    victim.dir.chmod(0o700)
    as_stranger("ln", "-s", victim.dir, playground / "bmslice")
    lock_in(playground / "bmslice")
    with pytest.raises(ApplyError, match="bmslice is a symbolic link owned by user nobody; refused"):
        _locked()
    assert victim.intact()


@pytest.mark.parametrize("plant", ["symlink", "hard link", "fifo"])
def test_a_lock_file_planted_in_the_lock_dir_is_refused_whole(
    tmp_path: Path, victim: Victim, lock_in: Callable[[Path], None], plant: str
) -> None:
    """Through the CLI: one line, exit 2, the target not truncated, the host tree not touched."""
    root = tmp_path / "host"
    shutil.copytree(SERVER1 / "host", root, symlinks=True)
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    lock_in(locks)
    path = lock_path(f"host-root:{root.resolve()}")
    if plant == "symlink":
        path.symlink_to(victim.file)
    elif plant == "hard link":
        os.link(victim.file, path)
    else:
        os.mkfifo(path)
    before = listing(root)
    error = one_error(Cli(tmp_path, locks)("host-apply", SERVER1 / "spec.yaml", "--host-root", root))
    why = {"symlink": "is a symbolic link", "hard link": "is a hard link to another file", "fifo": "is not a regular"}
    assert why[plant] in error and "refused" in error
    assert victim.intact() and listing(root) == before


def test_the_lock_still_holds_a_second_run_off(tmp_path: Path, lock_in: Callable[[Path], None]) -> None:
    lock_in(tmp_path / "locks")
    with (
        host_lock("host-root:/x", via="test"),
        pytest.raises(ApplyError, match=r"holds the lock .*\(pid \d+ via test\)"),
    ):
        _locked("host-root:/x")


# --- host trees -------------------------------------------------------------------------------


def test_a_tree_write_never_follows_a_link_swapped_in_after_resolving(tmp_path: Path, victim: Victim) -> None:
    """FsRoot resolves a tree path once; should a link appear there later, the write refuses it."""
    root = tmp_path / "host"
    (root / "etc/default").mkdir(parents=True)
    tree = HostTree(root)
    real = tree.real("etc/default/grub.d/bmslice.cfg")
    os.symlink(victim.dir, root / "etc/default/grub.d")  # after the resolution
    with pytest.raises(ApplyError, match=r"etc/default/grub\.d is a symbolic link; refused"):
        tree.write(real, b"x\n")
    with pytest.raises(ApplyError, match=r"etc/default/grub\.d is a symbolic link; refused"):
        tree.remove("etc/default/grub.d/precious")
    assert victim.intact()


def test_a_missing_tree_root_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ApplyError, match="no such directory"), open_dir(tmp_path / "nope", TREE_RULE, create=False):
        pass


# --- a hard link at a file written in place (sysfs attributes) ---------------------------------

NR_HUGEPAGES = "sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages"


@pytest.mark.parametrize("rel", ["sys/class/net/eno1/device/sriov_numvfs", "proc/irq/24/smp_affinity_list"])
def test_a_file_written_in_place_that_is_a_hard_link_is_refused(tmp_path: Path, victim: Victim, rel: str) -> None:
    """A sysfs attribute takes its value in place (no rename); a hard link there would carry the write
    (and its truncation) to the file it is another name of."""
    root = tmp_path / "host"
    (root / rel).parent.mkdir(parents=True)
    os.link(victim.file, root / rel)
    with pytest.raises(ApplyError, match=r"is a hard link \(2 names for one file\); refused"):
        HostTree(root).write_in_place(rel, b"8\n")
    assert victim.intact()


def test_host_apply_refuses_a_hard_linked_sysfs_file_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """End to end: host-apply's hugepage write meets a hard link to root's file (one that reads as a
    number, so it gets as far as the write); one line, all put back."""
    from hosttrees import MACHINES, build

    built = build(tmp_path, MACHINES["amd-nps2"](), boot_args=False, hugepages=False)
    precious = tmp_path / "precious-count"
    precious.write_text("0\n")
    (built.root / NR_HUGEPAGES).unlink()
    os.link(precious, built.root / NR_HUGEPAGES)
    before = listing(built.root)
    line = refused(capsys, "host-apply", built.spec_path, "--host-root", built.root)
    assert "nr_hugepages is a hard link" in line and "rolled back" in line, line
    assert precious.read_text() == "0\n" and listing(built.root) == before


def test_a_sysfs_file_of_one_name_is_still_written_in_place(tmp_path: Path) -> None:
    root = tmp_path / "host"
    (root / NR_HUGEPAGES).parent.mkdir(parents=True)
    (root / NR_HUGEPAGES).write_text("2048\n")
    HostTree(root).write_in_place(NR_HUGEPAGES, b"16\n")
    assert (root / NR_HUGEPAGES).read_text() == "16\n"
