#!/usr/bin/python
# Copyright: bmslice contributors
# Apache License 2.0 (see galaxy.yml); tests/sanity/ignore-*.txt waives ansible-test's GPLv3 header check.
# Run bmslice on one server: plan, apply, verify, audit or destroy the slices of a spec, or serve its metrics.
# ruff: noqa: E402 - Ansible modules carry DOCUMENTATION, EXAMPLES and RETURN before their imports

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bmslice
short_description: Plan, apply, verify, audit or destroy bmslice slices on a server, or serve their metrics
description:
  - Runs the C(bmslice) command on the managed host for one spec file.
  - C(exporter) places the unit that runs C(bmslice exporter) (C(bmslice host-apply --only exporter)) and
    enables and starts it, or stops and disables it (O(exporter_enabled)); on a host tree it enables the
    unit in that tree (C(systemctl --root)) without starting anything.
  - C(changed) is what bmslice reports. C(apply) prints C(no changes) when every slice
    already matches its plan; placing spec files that differ from the ones on the host
    (option O(files)) is a change too. A failed task never reports C(changed).
  - In check mode C(apply) runs C(bmslice apply --dry-run) and C(verify) reports slices
    that are not defined yet as a change the real run would make, not as a failure. On a
    host tree (O(host_root)), an offline stand-in for a server, every action in check mode
    is a C(bmslice plan).
  - A failure's C(msg) is the C(error:) line bmslice printed, or the drift or audit
    violations found. Warnings bmslice prints are Ansible warnings.
version_added: "0.1.0"
author: bmslice maintainers (!UNKNOWN)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
options:
  action:
    description: What to run.
    type: str
    required: true
    choices: [plan, apply, verify, audit, destroy, exporter]
  spec:
    description: Path of the spec on the managed host.
    type: path
    required: true
  files:
    description:
      - The spec bundle, as relative path to text (the spec file and the files it names, such as
        guest user-data). C(apply) places them in the spec's directory (mode 0600) before running;
        other actions and check mode run on a private copy when the host's files differ, and
        never write them.
      - Secrets do not belong here; copy them with M(ansible.builtin.copy) and C(no_log).
    type: dict
  pending_files:
    description:
      - Files of the spec's directory (relative paths) that an earlier task places in a real run,
        such as the kubeadm join files, which check mode does not copy.
      - In check mode, when one of them is missing, bmslice runs on a private copy of the bundle
        in which it is an empty stand-in, so the dry run shows what the real run would do. Outside
        check mode a missing one is bmslice's error.
    type: list
    elements: str
    default: []
  uri:
    description: libvirt URI bmslice connects to.
    type: str
    default: qemu:///system
  host_root:
    description: Read the host from this sysfs/procfs tree instead of the live machine.
    type: path
  command:
    description: The bmslice executable (a name on PATH or a path).
    type: str
    default: bmslice
  allow_move:
    description: Let apply stop, redefine and restart slices that must move.
    type: bool
    default: false
  keep_disks:
    description: Let destroy keep each slice's root disk volume.
    type: bool
    default: false
  exporter_listen:
    description: Where the exporter serves C(/metrics) (action C(exporter)); loopback unless exposed on purpose.
    type: str
    default: 127.0.0.1:9963
  exporter_enabled:
    description: Whether the exporter runs (action C(exporter)); C(false) stops and disables it.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    details:
      - C(apply) is a dry run, C(destroy) lists what it would remove, C(verify) counts slices not
        defined yet as a change; on a host tree every action is a plan.
  diff_mode:
    support: none
  platform:
    platforms: posix
"""

EXAMPLES = r"""
- name: Apply the slices of this server
  bmslice.slicing.bmslice:
    action: apply
    spec: /etc/bmslice/fleet/server1/spec.yaml
    files:
      spec.yaml: "{{ lookup('ansible.builtin.file', 'hosts/server1/spec.yaml', rstrip=False) }}"
    pending_files: [secrets/red.kubeadm-join]

- name: Check the slices still match their plan (fails on drift)
  bmslice.slicing.bmslice:
    action: verify
    spec: /etc/bmslice/fleet/server1/spec.yaml

- name: Serve this server's isolation, drift and free room to Prometheus
  bmslice.slicing.bmslice:
    action: exporter
    spec: /etc/bmslice/fleet/server1/spec.yaml
    exporter_listen: 10.0.0.11:9963
"""

RETURN = r"""
plan:
  description: The plan (C(bmslice plan --json)) when a plan was made.
  type: dict
  returned: when a plan ran
steps:
  description: >-
    Steps apply took (or would take in check mode), destroy took, slices destroy would remove, or what
    exporter changed (the unit file, enabling or disabling it).
  type: list
  elements: str
  returned: apply, destroy, exporter
drift:
  description: One line per difference between the live slices and the plan.
  type: list
  elements: str
  returned: verify
not_applied:
  description: Slices verify found not defined yet (in check mode a change, not a failure).
  type: list
  elements: str
  returned: verify
violations:
  description: One line per audit violation.
  type: list
  elements: str
  returned: audit
report:
  description: The JSON report of verify or audit.
  type: dict
  returned: verify, audit
files_changed:
  description: Files of O(files) that differ from the host's (placed by apply outside check mode).
  type: list
  elements: str
  returned: always
bmslice_warnings:
  description: Warnings bmslice printed (also shown as Ansible warnings).
  type: list
  elements: str
  returned: always
"""

import json
import os
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule

ACTIONS = ["plan", "apply", "verify", "audit", "destroy", "exporter"]
EXPORTER_UNIT = "bmslice-exporter.service"
SHOWN = 5  # drift lines or violations quoted in a failure's msg before "and N more"


def _read(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError):
        return None


def _safe_name(name):
    parts = name.split("/")
    return not name.startswith("/") and all(part not in ("", ".", "..") for part in parts)


def _write(module, base, name, text):
    """`base`/`name` holds `text` (mode 0600), written through no link below `base`: a link
    planted at the file is replaced, never followed; a link in its way as a directory fails."""
    os.makedirs(base, mode=0o700, exist_ok=True)
    directory = base
    for part in name.split("/")[:-1]:
        directory = os.path.join(directory, part)
        if os.path.islink(directory):
            module.fail_json(msg=f"{directory} is a symbolic link: bmslice writes through no link it did not make")
        if not os.path.isdir(directory):
            os.mkdir(directory, 0o700)
    path = os.path.join(base, name)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".bmslice-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(text)
        os.replace(tmp, path)  # the rename replaces a link planted at `path`, never its target
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def _error_line(out, err):
    lines = [line for line in (err or "").splitlines() if line.strip()]
    for line in lines:
        if line.startswith("error:"):
            return line
    tail = lines or [line for line in (out or "").splitlines() if line.strip()]
    return tail[-1] if tail else "bmslice failed without a message"


def _listing(lines):
    shown = "; ".join(lines[:SHOWN])
    more = len(lines) - SHOWN
    return shown + (f"; and {more} more" if more > 0 else "")


def _is_local(uri):
    # bmslice reads this machine's sysfs only for the local QEMU driver (as apply and verify do)
    return uri.startswith("qemu:///")


class Runner:
    """Runs bmslice; collects its warnings; fails the task with `changed: false` and the warnings."""

    def __init__(self, module, command, spec):
        self.module = module
        self.command = command
        self.spec = spec
        self.warnings = []

    def run(self, args):
        rc, out, err = self.module.run_command([self.command, *args])
        for line in (err or "").splitlines():
            if line.startswith("warning: "):
                self.warnings.append(line[len("warning: ") :])
        return rc, out, err

    def run_tool(self, argv):
        """Another program than bmslice (systemctl): (rc, stdout, stderr)."""
        return self.module.run_command(argv)

    def must_tool(self, argv, result):
        rc, out, err = self.run_tool(argv)
        if rc != 0:
            self.fail(_error_line(out, err), result, rc=rc, stdout=out, stderr=err)

    def must(self, args, result, ok=(0,)):
        rc, out, err = self.run(args)
        if rc not in ok:
            self.fail(_error_line(out, err), result, rc=rc, stdout=out, stderr=err)
        return rc, out

    def json(self, args, result, ok=(0,)):
        rc, out = self.must(args, result, ok)
        try:
            return rc, json.loads(out)
        except ValueError:
            self.fail(f"bmslice {args[0]} printed no JSON report", result, rc=rc, stdout=out)
        return rc, {}  # not reached: fail exits

    def finish(self, result):
        for warning in self.warnings:
            self.module.warn(warning)
        result["bmslice_warnings"] = self.warnings

    def fail(self, msg, result, **extra):
        self.finish(result)
        result.update(extra)
        result["changed"] = False  # a failed task never claims a change, whatever it placed first
        self.module.fail_json(msg=msg, **result)


def _plan(runner, params, result):
    args = ["plan", runner.spec, "--json"]
    if params["host_root"]:
        args += ["--host-root", params["host_root"]]
    elif not _is_local(params["uri"]):
        args += ["--connect", params["uri"]]
    result["plan"] = runner.json(args, result)[1]


def _lifecycle_args(params, verb, spec):
    args = [verb, spec, "--connect", params["uri"]]
    if params["host_root"]:
        args += ["--host-root", params["host_root"]]
    return args


def _apply(runner, params, result, check_mode):
    args = _lifecycle_args(params, "apply", runner.spec)
    if params["allow_move"]:
        args.append("--allow-move")
    if check_mode:
        args.append("--dry-run")
    out = runner.must(args, result)[1]
    lines = out.splitlines()
    if check_mode:
        result["steps"] = [line.strip()[len("would ") :] for line in lines if line.startswith("  would ")]
    else:
        result["steps"] = [line.strip() for line in lines if line.startswith("  ")]
    done = not any(line.startswith(("no changes:", "dry run: no changes needed")) for line in lines)
    result["changed"] = result["changed"] or (done and bool(result["steps"]))


def _verify(runner, params, result):
    rc, report = runner.json([*_lifecycle_args(params, "verify", runner.spec), "--json"], result, ok=(0, 1))
    result["report"] = report
    slices = report.get("slices", [])
    result["not_applied"] = [s["name"] for s in slices if s["state"] == "not defined"]
    result["drift"] = report.get("drift", [])
    return rc


def _verify_action(runner, params, result, check_mode):
    if not _verify(runner, params, result):
        return
    missing = result["not_applied"]
    other = [
        line for s in result["report"].get("slices", []) if s["state"] != "not defined" for line in s.get("drift", [])
    ]
    if check_mode and missing and not other:
        # A server never applied: the real run's apply defines these slices; that is a change, not drift.
        result["changed"] = True
        result["msg"] = f"not yet applied: {', '.join(missing)} (apply would define them)"
        return
    drift = result["drift"]
    runner.fail(f"drift: {len(drift)} difference(s) from the plan: {_listing(drift)}", result)


def _audit(runner, params, result, spec):
    args = ["audit", spec, "--json"]
    if params["host_root"]:
        args += ["--host-root", params["host_root"]]
    rc, report = runner.json(args, result, ok=(0, 1))
    result["report"] = report
    result["violations"] = [f"{v['check']}: {v['message']}" for v in report.get("violations", [])]
    if rc == 1:
        found = result["violations"]
        runner.fail(f"audit: {len(found)} violation(s): {_listing(found)}", result)


def _destroy(runner, params, result, check_mode, spec):
    if check_mode:
        _verify(runner, params, result)
        defined = [s["name"] for s in result["report"].get("slices", []) if s["state"] != "not defined"]
        result["steps"] = [f"destroy {name}" for name in defined]
        result["changed"] = bool(defined)
        return
    args = _lifecycle_args(params, "destroy", spec)
    if params["keep_disks"]:
        args.append("--keep-disks")
    out = runner.must(args, result)[1]
    done = [line.strip() for line in out.splitlines() if line.startswith("  ")]
    result["steps"] = [line for line in done if not line.endswith("nothing to do")]
    result["changed"] = bool(result["steps"])


def _exporter(runner, params, result, check_mode, spec):
    """Place the exporter's unit (host-apply --only exporter), then enable and start it; or stop and disable it
    (the unit file stays)."""
    root = params["host_root"]
    want = params["exporter_enabled"]
    placed = []
    if want:
        args = ["host-apply", spec, "--only", "exporter", "--exporter-listen", params["exporter_listen"]]
        args += ["--exporter-command", runner.command, "--host-root", root or "/"]
        if check_mode:
            args.append("--dry-run")
        out = runner.must(args, result)[1]
        placed = [line.strip() for line in out.splitlines() if line.startswith("  ")]
    result["steps"] = placed
    systemctl = runner.module.get_bin_path("systemctl", required=True)
    where = ["--root", root] if root else []  # a tree: enable there, start nothing
    rc, now = runner.run_tool([systemctl, *where, "is-enabled", EXPORTER_UNIT])[:2]
    enabled = rc == 0 and now.strip() == "enabled"
    verb = "enable" if want else "disable"
    if want != enabled:
        result["steps"].append(f"{verb} {EXPORTER_UNIT}")
        if not check_mode:
            runner.must_tool([systemctl, *where, verb, *([] if root else ["--now"]), EXPORTER_UNIT], result)
    elif want and placed and not root and not check_mode:  # a new unit file: the running exporter takes it up
        runner.must_tool([systemctl, "daemon-reload"], result)
        runner.must_tool([systemctl, "try-restart", EXPORTER_UNIT], result)
        result["steps"].append(f"restart {EXPORTER_UNIT}")
    result["changed"] = bool(result["steps"])


def _overlay(module, private, host_dir, writes):
    """Make `private` show `host_dir` through symlinks, except the paths of `writes` (relative
    path -> text), which are written there as files: nothing is ever written into `host_dir`."""
    tops = {}
    for name, text in writes.items():
        head, rest = (name.split("/", 1) + [""])[:2]
        tops.setdefault(head, {})[rest] = text  # rest "" is the file `head` itself
    os.makedirs(private, mode=0o700, exist_ok=True)
    for entry in sorted(os.listdir(host_dir)) if os.path.isdir(host_dir) else []:
        if entry not in tops:
            os.symlink(os.path.join(host_dir, entry), os.path.join(private, entry))
    for head, sub in sorted(tops.items()):
        if "" in sub:
            _write(module, private, head, sub[""])
        else:
            _overlay(module, os.path.join(private, head), os.path.join(host_dir, head), sub)


def main():
    module = AnsibleModule(
        argument_spec={
            "action": {"type": "str", "required": True, "choices": ACTIONS},
            "spec": {"type": "path", "required": True},
            "files": {"type": "dict"},
            "pending_files": {"type": "list", "elements": "str", "default": []},
            "uri": {"type": "str", "default": "qemu:///system"},
            "host_root": {"type": "path"},
            "command": {"type": "str", "default": "bmslice"},
            "allow_move": {"type": "bool", "default": False},
            "keep_disks": {"type": "bool", "default": False},
            "exporter_listen": {"type": "str", "default": "127.0.0.1:9963"},
            "exporter_enabled": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    params = module.params
    action = params["action"]
    result = {"changed": False, "action": action, "files_changed": [], "bmslice_warnings": []}
    files = params["files"] or {}
    for name in [*files, *params["pending_files"]]:
        if not _safe_name(name):
            module.fail_json(msg=f"files: {name!r} is not a relative path inside the spec's directory", **result)
    for name, text in files.items():
        if not isinstance(text, str):
            module.fail_json(msg=f"files: the value of {name!r} must be the file's text, not {type(text).__name__}", **result)
    command = params["command"]
    if "/" not in command:
        command = module.get_bin_path(command, required=True)
    spec = params["spec"]
    spec_dir = os.path.dirname(spec) or "."
    differing = sorted(name for name, text in files.items() if _read(os.path.join(spec_dir, name)) != text)
    result["files_changed"] = differing
    check_mode = module.check_mode

    place = bool(differing) and action == "apply" and not check_mode
    if place:
        for name in differing:
            _write(module, spec_dir, name, files[name])
        result["changed"] = True
    elif differing and check_mode and action == "apply":
        result["changed"] = True  # apply would place them

    stand_ins = []
    if check_mode:
        stand_ins = [name for name in params["pending_files"] if not os.path.exists(os.path.join(spec_dir, name))]
    private = None
    run_spec = spec
    if (differing and not place) or stand_ins:
        # Never write the host's files outside apply: run on a private view of the spec's
        # directory holding the bundle and, in check mode, empty stand-ins for pending files.
        private = tempfile.mkdtemp(prefix="bmslice-")
        _overlay(module, private, spec_dir, {**dict.fromkeys(stand_ins, ""), **files})
        run_spec = os.path.join(private, os.path.basename(spec))
    runner = Runner(module, command, run_spec)
    try:
        offline_check = check_mode and bool(params["host_root"])
        if action == "plan" or (offline_check and action in ("apply", "verify", "destroy")):
            _plan(runner, params, result)
            if action != "plan":
                result["msg"] = (
                    f"check mode on a host tree: planned {len(result['plan']['vms'])} slice(s); "
                    "what apply would change is not known without the live host"
                )
        elif action == "apply":
            _apply(runner, params, result, check_mode)
            if stand_ins:
                result["msg"] = f"check mode: {', '.join(stand_ins)} not placed yet; the real run places them first"
        elif action == "verify":
            _verify_action(runner, params, result, check_mode)
        elif action == "audit":
            _audit(runner, params, result, run_spec)
        elif action == "exporter":
            _exporter(runner, params, result, check_mode, spec)
        else:
            _destroy(runner, params, result, check_mode, run_spec)
    finally:
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)
    runner.finish(result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
