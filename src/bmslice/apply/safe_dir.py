"""The one writer of files bmslice writes as root: it follows no link bmslice did not make.

Every write goes through here: below an `--out DIR` (and `show --svg/--html`), in the lock
directory, in a host tree (`--host-root`, or the live "/"). A directory is opened once, and
what lies below it is reached through its file descriptor one name at a time with
O_NOFOLLOW, so a symbolic link below it is refused, never followed, whoever planted it and
whenever. A file is written to a new temp file in its directory (O_EXCL, a name ending in
`.bmslice`) and renamed over its name: a link or hard link planted at the name is replaced,
never opened.

Above the directory, in the path the user typed, a link is followed only when nobody else
could have planted it: it belongs to root or to the running user, in a directory where no
other user can add or replace names (the kernel's fs.protected_symlinks rule, applied
whatever that sysctl says). So `--out /tmp/fleet` is refused when another user made
/tmp/fleet a link, and `/var/run -> /run` is followed.

Who may own the directory itself depends on its use (`Rule`):
- `--out`: root or the running user, and no other user may rename or remove names in it:
  not writable by others (by the mode or by an ACL entry), nor by a group other than the
  user's own, unless it is sticky (like /tmp, where nobody may remove another user's names).
  Each directory above it (from "/", a relative path from the working directory's path) and
  below it that a write passes through is held to the same rule: in another user's /tmp/x,
  root's /tmp/x/out could be swapped for theirs once written. `--out-shared` lifts the rule
  for a directory the user knows is shared; the writes still follow no link.
- the lock directory: made 0700; refused unless owned by the running user and writable by
  no one else.
- a host tree: no owner rule (it is the host's); no link followed below it.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import secrets
import stat
import struct
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from bmslice.errors import ApplyError

MAX_LINK_HOPS = 40  # Linux's own limit (MAXSYMLINKS)
DIR_MODE = 0o755  # what bmslice makes below a directory; explicit, so no umask makes one others can write
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NO_LINK = _DIR | os.O_NOFOLLOW
_KINDS = {
    stat.S_IFREG: "a file",
    stat.S_IFDIR: "a directory",
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


class Owner(Enum):
    ANY = "any"  # a host tree, or --out-shared: any owner, any mode
    OURS = "ours"  # --out: root or us, and nobody else may replace names in it
    PRIVATE = "private"  # the lock directory: us alone


@dataclass(frozen=True)
class Rule:
    """How a directory bmslice writes into is opened and who may own it."""

    name: str  # what errors call it: "--out", "--svg", "lock directory", "--host-root"
    owner: Owner
    create_mode: int | None  # None: it must exist already
    hint: str = ""  # how to get past an owner refusal


def out_rule(name: str, shared: bool, create: bool = True) -> Rule:
    """The rule of a user-named output directory: `--out DIR` (made when missing), the directory of
    `--svg FILE` (`create` false: it must exist)."""
    mode = DIR_MODE if create else None
    if shared:
        return Rule(name, Owner.ANY, mode)
    return Rule(name, Owner.OURS, mode, "give --out-shared to write there anyway, still following no link")


LOCK_RULE = Rule("lock directory", Owner.PRIVATE, 0o700, "remove it; bmslice makes it again, mode 0700")
TREE_RULE = Rule("--host-root", Owner.ANY, None)


def _user(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    try:
        return f"group {grp.getgrgid(gid).gr_name}"
    except KeyError:
        return f"gid {gid}"


def _stranger(uid: int) -> str | None:
    return None if uid in (0, os.geteuid()) else f"owned by {_user(uid)}"


def _others_replace_names(fd: int) -> str | None:
    """Why users other than the owner may rename or remove names in directory `fd` (None: they may not)."""
    st = os.fstat(fd)
    if st.st_mode & stat.S_ISVTX:
        return None  # sticky: each name only by its own owner
    if st.st_mode & stat.S_IWOTH:
        return "writable by every user"
    if st.st_mode & stat.S_IWGRP and st.st_gid != os.getegid():
        return f"writable by {_group(st.st_gid)}"
    return _acl_writer(fd)


# POSIX ACL entries as Linux stores them in system.posix_acl_access (acl_ea.h): a version word,
# then (tag, permissions, id) per entry.
_ACL_XATTR = "system.posix_acl_access"
_ACL_USER, _ACL_GROUP, _ACL_MASK = 0x02, 0x08, 0x10
_ACL_WRITE = 0x02


def _acl_writer(fd: int) -> str | None:
    """Who else an access ACL lets write in directory `fd`: a named user or group entry with
    write (through the mask) is another user who may plant names, whatever the mode bits say
    (a group entry of the running user's own group counts as the group bits do)."""
    try:
        raw = os.getxattr(fd, _ACL_XATTR)
    except OSError:  # no ACL, or a file system without them
        return None
    if len(raw) < 4 or (len(raw) - 4) % 8:
        return "writable as an ACL bmslice cannot read says"
    entries = list(struct.iter_unpack("<HHI", raw[4:]))
    mask = next((perm for tag, perm, _ in entries if tag == _ACL_MASK), 0o7)
    for tag, perm, who in entries:
        if not perm & mask & _ACL_WRITE:
            continue
        if tag == _ACL_USER and who not in (0, os.geteuid()):
            return f"writable by {_user(who)} (an ACL entry)"
        if tag == _ACL_GROUP and who != os.getegid():
            return f"writable by {_group(who)} (an ACL entry)"
    return None


def _not_ours(fd: int) -> str | None:
    return _stranger(os.fstat(fd).st_uid) or _others_replace_names(fd)


def _not_private(fd: int) -> str | None:
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        return f"owned by {_user(st.st_uid)}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return _acl_writer(fd)


_OWNER_CHECK = {Owner.ANY: lambda _fd: None, Owner.OURS: _not_ours, Owner.PRIVATE: _not_private}


def _parts(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def _below(rel: str) -> list[str]:
    """The names of `rel`, a path below a directory that must stay below it (no "..", not absolute)."""
    parts = rel.split("/")
    if not rel or "\0" in rel or any(part in ("", ".", "..") for part in parts):
        raise ApplyError(f"{rel!r}: not a plain relative path; refused")
    return parts


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def _lstat(parent: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None


class SafeDir:
    """An open directory; every path below it is reached without following a link."""

    def __init__(self, fd: int, shown: str, rule: Rule) -> None:
        self.fd = fd
        self.shown = shown  # the path as the user gave it, for messages
        self.rule = rule

    def _where(self, parts: Iterable[str]) -> str:
        return "/".join([self.shown.rstrip("/") or "/", *parts]).replace("//", "/")

    @contextmanager
    def _parent(self, rel: str, create: bool, created: list[str] | None = None) -> Iterator[tuple[int, str] | None]:
        """(fd of the directory holding `rel`, its last name); None when a directory on the way is missing
        and `create` is false. Directories made are added to `created`, outermost first."""
        parts = _below(rel)
        fd = os.dup(self.fd)
        try:
            for depth, name in enumerate(parts[:-1]):
                try:
                    sub = os.open(name, _NO_LINK, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        yield None
                        return
                    os.mkdir(name, DIR_MODE, dir_fd=fd)
                    if created is not None:
                        created.append("/".join(parts[: depth + 1]))
                    sub = os.open(name, _NO_LINK, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = _lstat(fd, name)
                    raise self._refusal(parts[: depth + 1], st) from None
                os.close(fd)
                fd = sub
                why = _OWNER_CHECK[self.rule.owner](fd)
                if why is not None:
                    raise ApplyError(self._owner_refusal(self._where(parts[: depth + 1]), why))
            yield fd, parts[-1]
        finally:
            os.close(fd)

    def _refusal(self, parts: list[str], st: os.stat_result | None) -> ApplyError:
        where = self._where(parts)
        if st is not None and stat.S_ISLNK(st.st_mode):
            return ApplyError(f"{where} is a symbolic link; refused: bmslice writes through no link it did not make")
        return ApplyError(f"{where} is {_kind(st.st_mode) if st else 'gone'}, not a directory; refused")

    def _owner_refusal(self, where: str, why: str) -> str:
        hint = f" ({self.rule.hint})" if self.rule.hint else ""
        return f"{self.rule.name} {where} is {why}; refused{hint}"

    def _file(self, parent: int, rel: str) -> os.stat_result | None:
        """What is at `rel` now: None, or a regular file; anything else is refused."""
        st = _lstat(parent, rel.rsplit("/", 1)[-1])
        if st is None or stat.S_ISREG(st.st_mode):
            return st
        if stat.S_ISLNK(st.st_mode):
            raise ApplyError(
                f"{self._where([rel])} is a symbolic link; refused: bmslice writes through no link it did not make"
            )
        raise ApplyError(f"{self._where([rel])} is {_kind(st.st_mode)}, not a regular file; refused")

    def check(self, rel: str) -> None:
        """Refuse now what `write(rel)` would refuse, changing nothing."""
        with self._parent(rel, create=False) as found:
            if found is not None:
                self._file(found[0], rel)

    def write(self, rel: str, data: bytes, mode: int, durable: bool = False, created: list[str] | None = None) -> None:
        """Temp file, then rename over `rel`: a reader sees the old file or the new one, whole.

        `durable`: fsync the file and its directory (host configuration must survive a crash;
        review files are simply written again).
        """
        with self._parent(rel, create=True, created=created) as found:
            assert found is not None
            parent, name = found
            self._file(parent, rel)
            tmp, fd = _temp_file(parent, name)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fchmod(handle.fileno(), mode)
                    if durable:
                        os.fsync(handle.fileno())
                os.replace(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=parent)
                raise
            if durable:
                os.fsync(parent)

    def write_in_place(self, rel: str, data: bytes) -> None:
        """One write to an existing regular file: how sysfs attributes take a value (they cannot be renamed
        over). A FIFO there would block the write forever, a device node could be the host's disk, and a
        hard link is another file's name: written in place, that file would change. So the file is
        opened without truncating and emptied only once it is known to be one regular file of one name
        (every sysfs attribute is)."""
        with self._parent(rel, create=False) as found:
            if found is None or self._file(found[0], rel) is None:
                raise ApplyError(f"{self._where([rel])} does not exist")
            parent, name = found
            fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise ApplyError(f"{self._where([rel])} is not a regular file; refused to write to it")
                if st.st_nlink != 1:
                    raise ApplyError(
                        f"{self._where([rel])} is a hard link ({st.st_nlink} names for one file); refused: "
                        "bmslice writes through no link it did not make"
                    )
                os.ftruncate(fd, 0)
                os.write(fd, data)
            finally:
                os.close(fd)

    def mode(self, rel: str) -> int | None:
        """Permission bits of the regular file at `rel`; None when there is none."""
        with self._parent(rel, create=False) as found:
            st = None if found is None else self._file(found[0], rel)
            return None if st is None else stat.S_IMODE(st.st_mode)

    def unlink(self, rel: str) -> None:
        """Remove the regular file at `rel` if there is one (a link or directory there is refused)."""
        with self._parent(rel, create=False) as found:
            if found is not None and self._file(found[0], rel) is not None:
                os.unlink(found[1], dir_fd=found[0])

    def rmdir(self, rel: str) -> None:
        """Remove the directory at `rel` when it is empty; otherwise leave it."""
        with self._parent(rel, create=False) as found, contextlib.suppress(OSError):
            if found is not None:
                os.rmdir(found[1], dir_fd=found[0])

    def open_file(self, name: str, flags: int, mode: int) -> int:
        """os.open of `name` in this directory, refusing a link there; the caller closes it."""
        try:
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ApplyError(
                    f"{self._where([name])} is a symbolic link; refused: bmslice writes through no link it did not make"
                ) from None
            raise


def _temp_file(parent: int, name: str) -> tuple[str, int]:
    for _ in range(100):
        tmp = f".{name[:200]}.{secrets.token_hex(4)}.bmslice"
        try:
            return tmp, os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent
            )
        except FileExistsError:
            continue
    raise ApplyError(f"cannot make a temp file for {name}: every name tried exists")


@contextmanager
def open_dir(path: Path, rule: Rule, create: bool = True) -> Iterator[SafeDir | None]:
    """The directory `path`, opened as `rule` says; None when it is missing and `create` is false.

    Raises ApplyError (one line) for a link another user could have planted on the way, a
    directory the rule refuses, or a missing one the rule does not make.
    """
    shown = os.fspath(path)
    if "\0" in shown:
        raise ApplyError(f"{rule.name} {shown!r}: a path with a NUL byte; refused")
    fd = _walk(shown, rule, create)
    if fd is None:
        yield None
        return
    try:
        why = _OWNER_CHECK[rule.owner](fd)
        if why is not None:
            hint = f" ({rule.hint})" if rule.hint else ""
            raise ApplyError(f"{rule.name} {shown} is {why}; refused{hint}")
        yield SafeDir(fd, shown, rule)
    finally:
        os.close(fd)


def _walk(shown: str, rule: Rule, create: bool) -> int | None:
    """The fd of directory `shown`: from "/" one name at a time (a relative path from the
    working directory's own path, so the directories above it are looked at too).

    Unless the rule takes any owner, each directory passed through on the way must be root's
    or the user's and let no one else replace names in it: in another user's /tmp/x, root's
    /tmp/x/out could be renamed away once written and another put in its place, holding that
    user's site.yml for root to run."""
    path = shown if shown.startswith("/") else os.path.join(os.getcwd(), shown)
    fd = os.open("/", _DIR)
    pending = list(reversed(_parts(path)))
    where = "/"
    hops = 0
    try:
        while pending:
            name = pending.pop()
            if rule.owner is not Owner.ANY and (why := _not_ours(fd)) is not None:
                hint = f" ({rule.hint})" if rule.hint else ""
                raise ApplyError(f"{rule.name} {shown}: {where}, on its way, is {why}; refused{hint}")
            try:
                sub = os.open(name, _NO_LINK, dir_fd=fd)
            except FileNotFoundError:
                if rule.create_mode is None:
                    raise ApplyError(f"{rule.name} {shown}: no such directory") from None
                if not create:
                    os.close(fd)
                    return None
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, rule.create_mode, dir_fd=fd)
                sub = os.open(name, _NO_LINK, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                target = _trusted_link(fd, name, os.path.join(where, name), rule, shown)
                hops += 1
                if hops > MAX_LINK_HOPS:
                    raise ApplyError(
                        f"{rule.name} {shown}: more than {MAX_LINK_HOPS} symbolic links (a loop?)"
                    ) from None
                if target.startswith("/"):
                    os.close(fd)
                    fd = os.open("/", _DIR)
                    where = "/"
                pending.extend(reversed(_parts(target)))
                continue
            os.close(fd)
            fd = sub
            where = os.path.normpath(os.path.join(where, name))
        return fd
    except BaseException:
        os.close(fd)
        raise


def _trusted_link(parent: int, name: str, where: str, rule: Rule, shown: str) -> str:
    """The target of link `name`, when root or the running user made it where no one else could."""
    st = _lstat(parent, name)
    if st is None or not stat.S_ISLNK(st.st_mode):
        what = _kind(st.st_mode) if st else "gone"
        raise ApplyError(f"{rule.name} {shown}: {where} is {what}, not a directory") from None
    why = _stranger(st.st_uid)
    if why is None and (holder := _not_ours(parent)) is not None:
        why = f"in a directory {holder}"
    if why is not None:
        raise ApplyError(
            f"{rule.name} {shown}: {where} is a symbolic link {why}; refused: "
            "bmslice follows no link another user could have planted"
        ) from None
    return os.readlink(name, dir_fd=parent)


def check_out(out: Path, rels: Iterable[str], rule: Rule) -> None:
    """Refuse now, changing nothing, what `write_out` would refuse."""
    try:
        with open_dir(out, rule, create=False) as top:
            if top is not None:
                for rel in rels:
                    top.check(rel)
    except OSError as exc:
        raise ApplyError(f"{rule.name} {out}: cannot write: {exc.strerror or exc}") from None


def write_out(out: Path, files: Mapping[str, bytes], rule: Rule, modes: Mapping[str, int] | None = None) -> None:
    """Write `files` ({path below out: content}, mode 0644 unless `modes` says) below `out`.

    Everything is checked before the first write, so a refusal leaves `out` as it was.
    """
    check_out(out, files, rule)
    try:
        with open_dir(out, rule) as top:
            assert top is not None
            for rel, data in files.items():
                top.write(rel, data, (modes or {}).get(rel, 0o644))
    except OSError as exc:
        raise ApplyError(f"{rule.name} {out}: cannot write: {exc.strerror or exc}") from None
