"""The Ansible side as Ansible's own tools see it: `ansible-test sanity` and ansible-lint.

Both run for real, offline (inside `unshare --net`, a network namespace with no network, so
a download attempt fails the test instead of passing quietly), and a missing tool fails the
test rather than skipping it.

ansible-test sanity builds one virtual environment per sanity test (pip-less, cached under
$HOME/.ansible/test/venv by a hash of its pinned requirements) and first runs a pip
bootstrap script that it downloads from ci-files.testing.ansible.com into
$HOME/.ansible/test/cache. What it gets here instead, under a HOME of its own
(.venv/ansible-test/home, kept between runs so the environments are built once):
- the bootstrap script: tests/data/ansible-test/get_pip.py, which runs Python's ensurepip;
- its pinned requirements: wheels that scripts/setup-host.sh downloads to
  .venv/ansible-test/wheels, named by $HOME/.config/pip/pip.conf (no index). ansible-test
  passes only HOME and PATH to pip, so a user pip.conf under that HOME is the way in.
It runs on a copy of the collection (ansible-test wants the path
.../ansible_collections/<namespace>/<name>, and writes tests/output/ there).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bmslice.cli import fleet_cmd
from inventory_yaml import load_inventory

REPO = Path(__file__).resolve().parents[1]
COLLECTION = REPO / "ansible_collections" / "bmslice" / "slicing"
BIN = Path(sys.executable).parent
TOOLS = REPO / ".venv" / "ansible-test"
WHEELS = TOOLS / "wheels"
HOME = TOOLS / "home"
BOOTSTRAP = Path(__file__).parent / "data" / "ansible-test" / "get_pip.py"
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def _tool(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed in {BIN}: pip install -e '.[dev,fleet]' (scripts/setup-host.sh does)")
    return path


def _offline(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    unshare = shutil.which("unshare")
    assert unshare is not None, "unshare (util-linux) runs the tools without a network"
    return subprocess.run(
        [unshare, "--net", *argv],
        cwd=cwd,
        env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **env},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def _copy_collection(root: Path) -> Path:
    target = root / "ansible_collections" / "bmslice" / "slicing"
    shutil.copytree(COLLECTION, target, ignore=shutil.ignore_patterns("__pycache__", "output", ".ansible"))
    return target


def _ansible_test_home() -> Path:
    """HOME for ansible-test: the bootstrap stand-in and a pip.conf that names only the wheels."""
    wheels = sorted(WHEELS.glob("*.whl"))
    if not wheels:
        pytest.fail(
            f"no wheels in {WHEELS}: scripts/setup-host.sh downloads ansible-test's sanity requirements there",
            pytrace=False,
        )
    cache = HOME / ".ansible" / "test" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    # ansible-test names the script after the pip version it bootstraps (get_pip_24_2.py for 24.2).
    from ansible_test._internal.host_configs import NativePythonConfig
    from ansible_test._internal.python_requirements import get_venv_packages

    pip_version = get_venv_packages(NativePythonConfig(version=PYTHON, path=sys.executable))["pip"]
    shutil.copyfile(BOOTSTRAP, cache / f"get_pip_{pip_version.replace('.', '_')}.py")
    pip_conf = HOME / ".config" / "pip" / "pip.conf"
    pip_conf.parent.mkdir(parents=True, exist_ok=True)
    pip_conf.write_text(f"[global]\nno-index = true\nfind-links = {WHEELS}\n")
    return HOME


def test_ansible_test_sanity_passes_offline(tmp_path: Path) -> None:
    ansible_test = _tool("ansible-test")
    home = _ansible_test_home()
    run = _offline(
        [str(ansible_test), "sanity", "--python", PYTHON, "--color", "no"],
        _copy_collection(tmp_path),
        {"HOME": str(home)},
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    ran = {line.split('"')[1] for line in output.splitlines() if line.startswith('Running sanity test "')}
    # the tests that judge the module itself, each run (not skipped for lack of a tool)
    assert {"validate-modules", "pylint", "ansible-doc", "pep8", "yamllint", "import", "runtime-metadata"} <= ran
    assert "Downloading" not in output  # pip installed from the local wheels


def test_ansible_lint_production_profile_on_the_collection(tmp_path: Path) -> None:
    ansible_lint = _tool("ansible-lint")
    run = _offline(
        [str(ansible_lint), "--offline", "--profile", "production", "--nocolor"],
        _copy_collection(tmp_path),
        {"HOME": str(tmp_path / "home")},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Profile 'production' was required, and it passed." in run.stderr + run.stdout


def test_ansible_lint_production_profile_on_a_generated_fleet(tmp_path: Path) -> None:
    """`bmslice fleet ansible` on the example: inventory.yml and site.yml pass, as the file
    `.ansible-lint` written next to them asks (production profile, offline)."""
    ansible_lint = _tool("ansible-lint")
    out = tmp_path / "ansible"
    assert fleet_cmd.main(["fleet", "ansible", str(REPO / "examples" / "fleet" / "fleet.yaml"), "--out", str(out)]) == 0
    run = _offline(
        [str(ansible_lint), "--nocolor", "-f", "pep8"],
        out,
        {"HOME": str(tmp_path / "home"), "ANSIBLE_COLLECTIONS_PATH": str(REPO)},
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "Profile 'production' was required, and it passed." in output


def test_ansible_lint_catches_what_pyyaml_indents_by_default(tmp_path: Path) -> None:
    """The same inventory written with PyYAML's default (indentless lists) fails: the check bites."""
    import yaml

    ansible_lint = _tool("ansible-lint")
    out = tmp_path / "ansible"
    assert fleet_cmd.main(["fleet", "ansible", str(REPO / "examples" / "fleet" / "fleet.yaml"), "--out", str(out)]) == 0
    inventory = out / "inventory.yml"
    head = "".join(line for line in inventory.read_text().splitlines(keepends=True) if line.startswith("#"))
    inventory.write_text(head + yaml.safe_dump(load_inventory(inventory.read_text()), sort_keys=False))
    run = _offline(
        [str(ansible_lint), "--nocolor", "-f", "pep8"],
        out,
        {"HOME": str(tmp_path / "home"), "ANSIBLE_COLLECTIONS_PATH": str(REPO)},
    )
    assert run.returncode != 0
    assert "inventory.yml" in run.stdout and "yaml[indentation]" in run.stdout
