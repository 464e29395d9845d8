r"""User text made safe to show: on one line, of bounded length, with nothing hidden in it.

Error messages, comments in generated files and report titles carry text bmslice did not
write (file names, values from a spec). A newline there would start a new line of a GRUB
file or a second `error:` line; a control character or a byte that is not UTF-8 would
break an XML writer. Both helpers escape such characters the way Python's repr does.

>>> print(one_line("spec\nGRUB_CMDLINE_LINUX=evil.yaml"))
spec\nGRUB_CMDLINE_LINUX=evil.yaml
>>> print(one_line("caf\u00e9 \udcff"))
café \xff
>>> print(shown("9" * 100, limit=12))
'9999999999... (100 characters)
"""

from __future__ import annotations

_SURROGATE_BYTES = range(0xDC80, 0xDD00)  # os.fsdecode's stand-ins for bytes that are not UTF-8


def _escape(ch: str) -> str:
    code = ord(ch)
    if code in _SURROGATE_BYTES:
        return f"\\x{code - 0xDC00:02x}"
    return ch.encode("unicode_escape").decode("ascii")


def one_line(text: str) -> str:
    """`text` with every non-printable character (newline, escape, bidi control, stray byte) escaped."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def shown(value: object, limit: int = 60) -> str:
    """repr(value) cut to about `limit` characters: a 4,000-digit number is not echoed whole."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, str | bytes) else len(str(value))
    return f"{text[: limit - 1]}... ({size} characters)"
