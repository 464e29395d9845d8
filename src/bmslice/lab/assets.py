"""What the lab boots, fetched once from Debian and cached: QEMU 10, SeaBIOS, a kernel, busybox.

The machine's own QEMU and libvirt stay as they are (the lab runs *them* inside, and the
lifecycle tests use them): the packages are fetched with `apt-get download` through a
private apt state under the cache (its own sources list, lists and archives; the
machine's apt configuration is never read for sources nor changed) and unpacked with
`dpkg-deb -x` into `<cache>/root`.

Integrity and versions: apt checks every .deb against the suite's signed Release file
(Debian's archive keyring); the cache's manifest records each package's version and
SHA-256, rechecked on every use, and each package must meet the minimum version the lab
needs (QEMU >= 10.0 for the igb SR-IOV NIC). A cache that matches its manifest is used
offline; `refresh` fetches the suite's current versions again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bmslice.errors import LabError

DEFAULT_CACHE = Path(os.environ.get("BMSLICE_LAB_CACHE", "/var/cache/bmslice/lab"))
MIRROR = os.environ.get("BMSLICE_LAB_MIRROR", "http://deb.debian.org/debian")
SECURITY_MIRROR = os.environ.get("BMSLICE_LAB_SECURITY_MIRROR", "http://deb.debian.org/debian-security")
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
BACKPORTS = "bookworm-backports"
KERNEL_META = "linux-image-amd64"  # the plain kernel: the -cloud one lacks igb, igbvf and 9p
MANIFEST = "manifest.json"
_APT_TIMEOUT_S = 600


@dataclass(frozen=True)
class Wanted:
    package: str
    suite: str | None  # None: the default candidate (bookworm and its security updates)
    minimum: str | None = None  # Debian version, compared with dpkg --compare-versions


QEMU_MINIMUM = "1:10.0"
WANTED = (
    Wanted("qemu-system-x86", BACKPORTS, QEMU_MINIMUM),
    Wanted("qemu-system-common", BACKPORTS, QEMU_MINIMUM),
    Wanted("qemu-system-data", BACKPORTS, QEMU_MINIMUM),
    # Every module QEMU 10 may load must come from its own build, or it loads the
    # machine's QEMU 7.2 modules and aborts.
    Wanted("qemu-system-modules-opengl", BACKPORTS, QEMU_MINIMUM),
    Wanted("qemu-system-modules-spice", BACKPORTS, QEMU_MINIMUM),
    Wanted("seabios", BACKPORTS, "1.16.3"),
    Wanted("busybox-static", None),
    # Only its systemd units, for a lab whose PID 1 is systemd on a machine that runs libvirtd
    # without them (this machine kind installs libvirt-daemon alone and starts it by hand).
    Wanted("libvirt-daemon-system", None),
)


@dataclass(frozen=True)
class Fetched:
    package: str
    version: str
    file: str
    sha256: str


@dataclass(frozen=True)
class Assets:
    cache: Path
    packages: tuple[Fetched, ...]
    kernel_release: str

    @property
    def root(self) -> Path:
        return self.cache / "root"

    @property
    def kernel(self) -> Path:
        return self.root / f"boot/vmlinuz-{self.kernel_release}"

    @property
    def modules(self) -> Path:
        return self.root / f"lib/modules/{self.kernel_release}"

    @property
    def busybox(self) -> Path:
        return self.root / "bin/busybox"

    def version_of(self, package: str) -> str:
        for fetched in self.packages:
            if fetched.package == package:
                return fetched.version
        return "?"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run(argv: list[str], what: str, timeout: int = _APT_TIMEOUT_S, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False)
    except FileNotFoundError:
        raise LabError(f"{what}: {argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{what}: {argv[0]} did not finish within {timeout} s") from None
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        raise LabError(f"{what} failed: {lines[-1] if lines else f'exit {done.returncode}'}")
    return done.stdout


class _Apt:
    """apt-get / apt-cache with a state of their own under `<cache>/apt`."""

    def __init__(self, cache: Path) -> None:
        self.dir = cache / "apt"

    def prepare(self) -> None:
        if not KEYRING.exists():
            raise LabError(f"{KEYRING} is missing: install debian-archive-keyring")
        for sub in ("lists/partial", "archives/partial", "parts", "prefs"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        signed = f"[signed-by={KEYRING}]"
        (self.dir / "sources.list").write_text(
            f"deb {signed} {MIRROR} bookworm main\n"
            f"deb {signed} {MIRROR} bookworm-updates main\n"
            f"deb {signed} {SECURITY_MIRROR} bookworm-security main\n"
            f"deb {signed} {MIRROR} {BACKPORTS} main\n"
        )
        (self.dir / "status").touch()

    def options(self) -> list[str]:
        d = self.dir
        pairs = {
            "Dir::Etc::SourceList": d / "sources.list",
            "Dir::Etc::SourceParts": d / "parts",
            "Dir::Etc::Preferences": d / "preferences",
            "Dir::Etc::PreferencesParts": d / "prefs",
            "Dir::State::Lists": d / "lists",
            "Dir::State::status": d / "status",
            "Dir::Cache": d / "cache",
            "Dir::Cache::Archives": d / "archives",
            "APT::Sandbox::User": "root",
            "APT::Architecture": "amd64",
        }
        return [arg for key, value in pairs.items() for arg in ("-o", f"{key}={value}")]

    def update(self) -> None:
        _run(["apt-get", "-q", *self.options(), "update"], "apt-get update (lab packages)")

    def kernel_package(self) -> str:
        out = _run(["apt-cache", *self.options(), "depends", KERNEL_META], f"apt-cache depends {KERNEL_META}")
        for line in out.splitlines():
            match = re.fullmatch(r"\s*Depends: (linux-image-[0-9][^ ]*-amd64)\s*", line)
            if match:
                return match.group(1)
        raise LabError(f"{KERNEL_META} names no kernel package")

    def download(self, spec: str, into: Path) -> Path:
        before = set(into.glob("*.deb"))
        _run(["apt-get", "-q", *self.options(), "download", spec], f"apt-get download {spec}", cwd=into)
        new = sorted(set(into.glob("*.deb")) - before)
        if len(new) != 1:
            raise LabError(f"apt-get download {spec} left {len(new)} new .deb files")
        return new[0]


def _deb_field(deb: Path, field: str) -> str:
    return _run(["dpkg-deb", "-f", str(deb), field], f"dpkg-deb -f {deb.name}").strip()


def _at_least(version: str, minimum: str) -> bool:
    done = subprocess.run(["dpkg", "--compare-versions", version, "ge", minimum], check=False)
    return done.returncode == 0


def _kernel_release(package: str) -> str:
    return package.removeprefix("linux-image-")


def load(cache: Path = DEFAULT_CACHE) -> Assets | None:
    """The cached assets if the manifest's files are all there, intact and unpacked; else None."""
    try:
        data = json.loads((cache / MANIFEST).read_text())
        packages = tuple(Fetched(**entry) for entry in data["packages"])
        assets = Assets(cache, packages, str(data["kernel_release"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if {w.package for w in WANTED} - {p.package for p in packages}:
        return None  # a cache from a bmslice that wanted less
    for fetched in packages:
        deb = cache / "debs" / fetched.file
        if not deb.is_file() or _sha256(deb) != fetched.sha256:
            return None
    stamp = assets.root / ".unpacked"
    if not stamp.is_file() or stamp.read_text() != _stamp(packages):
        return None
    if not (assets.kernel.is_file() and (assets.modules / "modules.dep").is_file() and assets.busybox.is_file()):
        return None
    return assets


def _stamp(packages: tuple[Fetched, ...]) -> str:
    return "\n".join(f"{p.package} {p.version} {p.sha256}" for p in packages) + "\n"


def fetch(cache: Path = DEFAULT_CACHE, say: Callable[[str], None] = lambda _l: None) -> Assets:
    """Download the current versions into `cache`, check them, unpack them; return what is there."""
    apt = _Apt(cache)
    apt.prepare()
    say("fetching package lists (Debian bookworm + bookworm-backports)")
    apt.update()
    debs = cache / "debs.new"
    shutil.rmtree(debs, ignore_errors=True)
    debs.mkdir(parents=True)
    kernel = apt.kernel_package()
    fetched: list[Fetched] = []
    for wanted in (*WANTED, Wanted(kernel, None)):
        spec = f"{wanted.package}/{wanted.suite}" if wanted.suite else wanted.package
        deb = apt.download(spec, debs)
        version = _deb_field(deb, "Version")
        if wanted.minimum and not _at_least(version, wanted.minimum):
            raise LabError(
                f"{wanted.package} {version} from {wanted.suite or 'bookworm'}: the lab needs >= {wanted.minimum}"
            )
        say(f"fetched {wanted.package} {version}")
        fetched.append(Fetched(wanted.package, version, deb.name, _sha256(deb)))
    shutil.rmtree(cache / "debs", ignore_errors=True)
    debs.rename(cache / "debs")
    packages = tuple(fetched)
    assets = Assets(cache, packages, _kernel_release(kernel))
    _unpack(assets, say)
    manifest = {"packages": [vars(p) for p in packages], "kernel_release": assets.kernel_release}
    (cache / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return assets


def _unpack(assets: Assets, say: Callable[[str], None]) -> None:
    root = assets.root
    fresh = root.with_name("root.new")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir()
    for fetched in assets.packages:
        _run(["dpkg-deb", "-x", str(assets.cache / "debs" / fetched.file), str(fresh)], f"dpkg-deb -x {fetched.file}")
    # modules.dep is written by depmod at install time; the lab needs it for modprobe.
    _run(["depmod", "-b", str(fresh), assets.kernel_release], "depmod (lab kernel)")
    shutil.rmtree(root, ignore_errors=True)
    fresh.rename(root)
    (root / ".unpacked").write_text(_stamp(assets.packages))
    say(f"unpacked into {root}")


def _own_cache(cache: Path) -> None:
    """Make the cache, or refuse one another user could plant links in: apt-get and dpkg-deb write
    there as root, and they follow links (apply/safe_dir.py holds it to --out's rule)."""
    from bmslice.apply.safe_dir import DIR_MODE, Owner, Rule, open_dir
    from bmslice.errors import ApplyError

    try:
        with open_dir(cache, Rule("--cache", Owner.OURS, DIR_MODE)):
            pass
    except ApplyError as exc:
        raise LabError(str(exc)) from None
    except OSError as exc:
        raise LabError(f"cannot create the lab cache {cache}: {exc.strerror or exc}") from None


def ensure(cache: Path = DEFAULT_CACHE, refresh: bool = False, say: Callable[[str], None] = lambda _l: None) -> Assets:
    """The cached assets, fetched first when missing, damaged or `refresh` is asked for."""
    _own_cache(cache)
    if not refresh:
        assets = load(cache)
        if assets is not None:
            return assets
    return fetch(cache, say)


def missing_libraries(qemu: Path) -> list[str]:
    """Shared libraries QEMU 10 needs that this machine lacks (the lab uses the machine's own)."""
    out = _run(["ldd", str(qemu)], f"ldd {qemu}")
    return sorted({line.split()[0] for line in out.splitlines() if "not found" in line})
