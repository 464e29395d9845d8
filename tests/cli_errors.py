"""The shape every refusal of bad input takes: exit 2, one `error:` line, never a traceback."""

from __future__ import annotations

import subprocess


def one_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The command refused with exactly one `error:` line holding every needle."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]
