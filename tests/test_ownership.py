"""The ownership mark inside bmslice's volumes (apply/ownership.py), on real images.

qcow2 images are made and then changed by QEMU's own `qemu-img` / `qemu-io` (resize,
snapshots, guest writes, option changes all rewrite the header), so the tests show that
QEMU keeps bmslice's header extension and still reads the image; seed ISOs are built by
the same code apply uses and read back with pycdlib.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from bmslice.apply.ownership import (
    PVD_OFFSET,
    SECTOR,
    Mark,
    files_digest,
    iso_is_whole,
    iso_mark,
    qcow2_is_blank,
    qcow2_mark,
    qcow2_with_mark,
    read_qcow2_head,
)
from bmslice.errors import ApplyError
from bmslice.render.cloud_init import seed_iso

MARK = Mark("web-1", "2b0e4a4e-1111-5222-8333-944455556666", "default", "web-1.qcow2")


def qemu_img(*args: str | Path) -> str:
    if shutil.which("qemu-img") is None:
        pytest.fail("qemu-img is missing: install qemu-utils (scripts/setup-host.sh does)", pytrace=False)
    return subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True, text=True).stdout


def head(path: Path) -> bytes:
    return path.read_bytes()[:65536]


def mark_file(path: Path, mark: Mark) -> None:
    new = qcow2_with_mark(head(path), mark)
    with path.open("r+b") as f:
        f.write(new)


@pytest.fixture
def overlay(tmp_path: Path) -> Path:
    base, disk = tmp_path / "base.qcow2", tmp_path / "disk.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", base, "64M")
    qemu_img("create", "-q", "-f", "qcow2", "-o", "compat=1.1", "-b", base, "-F", "qcow2", disk, "64M")
    return disk


def test_qcow2_mark_survives_what_qemu_does_to_an_image(overlay: Path, tmp_path: Path) -> None:
    assert qcow2_mark(head(overlay)) is None
    mark_file(overlay, MARK)
    assert qcow2_mark(head(overlay)) == MARK
    info = json.loads(qemu_img("info", "--output=json", overlay))
    assert info["backing-filename"] == str(tmp_path / "base.qcow2") and info["virtual-size"] == 64 << 20
    qemu_img("check", overlay)
    # QEMU rewrites the header for each of these; it must carry bmslice's extension along
    qemu_img("resize", "-q", overlay, "128M")
    qemu_img("snapshot", "-c", "s1", overlay)
    qemu_img("amend", "-o", "lazy_refcounts=on", overlay)
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 0 64k", str(overlay)], check=True, capture_output=True)
    qemu_img("check", overlay)
    assert qcow2_mark(head(overlay)) == MARK
    assert json.loads(qemu_img("info", "--output=json", overlay))["backing-filename"] == str(tmp_path / "base.qcow2")


def test_marking_again_replaces_the_mark(overlay: Path) -> None:
    mark_file(overlay, MARK)
    other = Mark("web-2", MARK.uuid, "default", "web-2.qcow2")
    mark_file(overlay, other)
    assert qcow2_mark(head(overlay)) == other
    parsed = read_qcow2_head(head(overlay))
    assert parsed is not None and [k for k, _ in parsed.extensions].count(0x626D736C) == 1
    qemu_img("check", overlay)


def test_blank_qcow2_until_the_guest_writes(overlay: Path) -> None:
    def blank() -> bool:
        data = overlay.read_bytes()
        parsed = read_qcow2_head(data)
        assert parsed is not None
        return qcow2_is_blank(parsed, data[parsed.l1_offset : parsed.l1_offset + parsed.l1_size * 8])

    assert blank()
    mark_file(overlay, MARK)
    assert blank()  # the mark is in the header, not data
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 1M 4k", str(overlay)], check=True, capture_output=True)
    assert not blank()


def test_not_a_qcow2_image_is_never_marked_nor_read_as_marked(tmp_path: Path) -> None:
    raw = tmp_path / "raw.img"
    qemu_img("create", "-q", "-f", "raw", raw, "1M")
    assert qcow2_mark(head(raw)) is None and read_qcow2_head(head(raw)) is None
    with pytest.raises(ApplyError, match="not a qcow2 version 3 image"):
        qcow2_with_mark(head(raw), MARK)
    old = tmp_path / "old.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", old, "1M")
    with pytest.raises(ApplyError, match="not a qcow2 version 3 image"):
        qcow2_with_mark(head(old), MARK)


def test_a_forged_or_damaged_extension_is_no_mark(overlay: Path) -> None:
    mark_file(overlay, MARK)
    data = bytearray(overlay.read_bytes())
    at = data.index(b'{"bmslice"')
    data[at : at + 10] = b'{"bmslicX"'
    assert qcow2_mark(bytes(data[:65536])) is None
    assert Mark.decode(b"\xff\xfe") is None and Mark.decode(b"[1]") is None
    assert Mark.decode(b'{"bmslice":1,"vm":7}') is None


@pytest.mark.parametrize(
    "forged",
    [
        b"[" * 5000,
        b'{"a":' * 3000,
        b'{"bmslice":1,"vm":"a","vm":"b"}',
        b'{"bmslice":NaN}',
        b'{"bmslice":1' + b"0" * 5000 + b"}",
    ],
    ids=["5000 [", "3000 {", "a key twice", "NaN", "5000 digits"],
)
def test_a_forged_mark_nested_deep_or_not_strict_json_is_no_mark(overlay: Path, forged: bytes) -> None:
    """A volume's header is anyone's who can write the pool: a mark of 5,000 "[" was a
    RecursionError out of json.loads (a traceback from destroy), now no mark (nothing deleted)."""
    big = Mark("w" * len(forged), MARK.uuid, "default", "web-1.qcow2")
    mark_file(overlay, big)
    data = overlay.read_bytes()[:65536]
    encoded = big.encode()
    assert qcow2_mark(data) == big
    assert qcow2_mark(data.replace(encoded, forged.ljust(len(encoded), b" "))) is None
    assert Mark.decode(forged) is None


FILES = {"user-data": "#cloud-config\nhostname: web-1\n", "meta-data": "instance-id: x\n"}


def seed_mark() -> Mark:
    return Mark("web-1", MARK.uuid, "default", "web-1-seed.iso", files=files_digest(FILES))


def marked_seed() -> bytes:
    from bmslice.apply.ownership import iso_with_mark

    return iso_with_mark(seed_iso(FILES), seed_mark())


def test_seed_carries_its_mark_and_stays_a_readable_iso() -> None:
    import pycdlib

    image = marked_seed()
    mark = iso_mark(image[PVD_OFFSET : PVD_OFFSET + SECTOR])
    assert mark is not None and mark.files == files_digest(FILES) and len(mark.image) == 64
    assert iso_is_whole(image, mark)
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(image))
    for name, text in FILES.items():
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, joliet_path=f"/{name}")
        assert out.getvalue().decode() == text
    assert iso.get_record(iso_path="/F0.;1").file_ident  # and the ISO 9660 tree is intact
    iso.close()


@pytest.mark.parametrize(
    "damage",
    ["truncated by half", "zero-filled after the mark", "all zeros", "one byte changed"],
)
def test_a_damaged_seed_is_never_taken_for_whole(damage: str) -> None:
    image = marked_seed()
    mark = iso_mark(image[PVD_OFFSET : PVD_OFFSET + SECTOR])
    assert mark is not None
    if damage == "truncated by half":
        broken = image[: len(image) // 2]
    elif damage == "zero-filled after the mark":
        broken = image[: PVD_OFFSET + SECTOR] + bytes(len(image) - PVD_OFFSET - SECTOR)
    elif damage == "all zeros":
        broken = bytes(len(image))
    else:
        broken = image[:-100] + bytes([image[-100] ^ 1]) + image[-99:]
    assert not iso_is_whole(broken, mark)
    if damage == "all zeros":
        assert iso_mark(broken[PVD_OFFSET : PVD_OFFSET + SECTOR]) is None


def test_files_digest_tells_apart_what_concatenation_would_not() -> None:
    assert files_digest({"a": "bc"}) != files_digest({"ab": "c"})
    assert files_digest({"a": "x", "b": "y"}) == files_digest({"b": "y", "a": "x"})
    assert files_digest(FILES) != files_digest({**FILES, "user-data": FILES["user-data"] + "\n"})


def test_mark_too_long_for_the_iso_field_is_refused() -> None:
    from bmslice.apply.ownership import iso_with_mark

    long_pool = "p" * 400
    with pytest.raises(ApplyError, match="too long for the seed's ownership mark"):
        iso_with_mark(seed_iso(FILES), Mark("web-1", MARK.uuid, long_pool, "web-1-seed.iso", files="0" * 64))
