"""Remove what an interrupted earlier test run left on this machine's libvirtd.

Every libvirt test names its domains and volumes `bmslice-test-<random>-...` and removes them
when it ends; a run killed from outside (a machine restart, a SIGKILL) cannot. Such a leftover
holds CPUs on the real host and would make the next run's lifecycle tests refuse for lack of
room, so `.ci/run` sweeps the test name space before `make test`:

    .venv/bin/python tests/sweep_leftovers.py

It touches nothing outside the `bmslice-test-` prefix (which only tests use), and must not run
beside a test run in progress.
"""

from __future__ import annotations

import sys

import libvirt

from libvirt_fixtures import QEMU_URI, kill_leftover_qemu, purge

TEST_PREFIX = "bmslice-test-"


def main() -> int:
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        conn = libvirt.open(QEMU_URI)
    except libvirt.libvirtError as exc:
        print(f"sweep: libvirtd does not answer on {QEMU_URI}: {exc.get_error_message()}", file=sys.stderr)
        return 1
    try:
        found = purge(conn, TEST_PREFIX)
    finally:
        conn.close()
    found += [f"QEMU pid {pid}" for pid in kill_leftover_qemu(TEST_PREFIX)]
    for item in found:
        print(f"sweep: removed {item} (left by an interrupted test run)")
    print(f"sweep: {len(found)} leftover(s) of earlier test runs removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
