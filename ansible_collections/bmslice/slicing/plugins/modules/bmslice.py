#!/usr/bin/python
# Run bmslice on one server: plan, apply, verify, audit or destroy the slices of a spec.
# ruff: noqa: E402 - Ansible modules carry DOCUMENTATION, EXAMPLES and RETURN before their imports

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bmslice
short_description: Plan, apply, verify, audit or destroy bmslice slices on a server
description:
  - Runs the C(bmslice) command on the managed host for one spec file.
  - C(changed) is what bmslice reports. C(apply) prints C(no changes) when every slice
    already matches its plan; placing spec files that differ from the ones on the host
    (option O(files)) is a change too.
  - In check mode C(apply) runs C(bmslice apply --dry-run). On a host tree (O(host_root)),
    an offline stand-in for a server, every action in check mode is a C(bmslice plan).
  - A failure's C(msg) is the C(error:) line bmslice printed.
version_added: "0.1.0"
author: bmslice maintainers
options:
  action:
    description: What to run.
    type: str
    required: true
    choices: [plan, apply, verify, audit, destroy]
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
attributes:
  check_mode:
    support: full
"""

EXAMPLES = r"""
- name: Apply the slices of this server
  bmslice.slicing.bmslice:
    action: apply
    spec: /etc/bmslice/fleet/server1/spec.yaml
    files:
      spec.yaml: "{{ lookup('ansible.builtin.file', 'hosts/server1/spec.yaml', rstrip=False) }}"

- name: Check the slices still match their plan (fails on drift)
  bmslice.slicing.bmslice:
    action: verify
    spec: /etc/bmslice/fleet/server1/spec.yaml
"""

RETURN = r"""
plan:
  description: The plan (C(bmslice plan --json)) when a plan was made.
  type: dict
  returned: when a plan ran
steps:
  description: Steps apply took (or would take in check mode), destroy took, or slices destroy would remove.
  type: list
  elements: str
  returned: apply, destroy
drift:
  description: One line per difference between the live slices and the plan.
  type: list
  elements: str
  returned: verify
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
  description: Warnings bmslice printed.
  type: list
  elements: str
  returned: always
"""

import json
import os
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule


def _read(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return None


def _safe_name(name):
    parts = name.split("/")
    return not name.startswith("/") and all(part not in ("", ".", "..") for part in parts)


def _write(module, path, text):
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".bmslice-")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    module.atomic_move(tmp, path)
    os.chmod(path, 0o600)  # atomic_move gives a new file the umask's mode


def _error_line(out, err):
    lines = [line for line in (err or "").splitlines() if line.strip()]
    for line in lines:
        if line.startswith("error:"):
            return line
    tail = lines or [line for line in (out or "").splitlines() if line.strip()]
    return tail[-1] if tail else "bmslice failed without a message"


def _is_local(uri):
    return uri.startswith("qemu:///") or uri.startswith("test:///")


class Runner:
    def __init__(self, module, command, spec):
        self.module = module
        self.command = command
        self.spec = spec
        self.warnings = []

    def run(self, args):
        rc, out, err = self.module.run_command([self.command, *args])
        self.warnings.extend(
            line[len("warning: ") :] for line in (err or "").splitlines() if line.startswith("warning: ")
        )
        return rc, out, err

    def must(self, args, result, ok=(0,)):
        rc, out, err = self.run(args)
        if rc not in ok:
            self.module.fail_json(msg=_error_line(out, err), rc=rc, stdout=out, stderr=err, **result)
        return rc, out, err


def _plan(runner, params, result):
    args = ["plan", runner.spec, "--json"]
    if params["host_root"]:
        args += ["--host-root", params["host_root"]]
    elif not _is_local(params["uri"]):
        args += ["--connect", params["uri"]]
    _, out, _ = runner.must(args, result)
    result["plan"] = json.loads(out)


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
    _, out, _ = runner.must(args, result)
    lines = out.splitlines()
    if check_mode:
        result["steps"] = [line.strip()[len("would ") :] for line in lines if line.startswith("  would ")]
    else:
        result["steps"] = [line.strip() for line in lines if line.startswith("  ")]
    done = not any(line.startswith(("no changes:", "dry run: no changes needed")) for line in lines)
    result["changed"] = result["changed"] or (done and bool(result["steps"]))


def _verify(runner, params, result):
    rc, out, _ = runner.must([*_lifecycle_args(params, "verify", runner.spec), "--json"], result, ok=(0, 1))
    report = json.loads(out)
    result["report"] = report
    result["drift"] = report.get("drift", [])
    return rc


def main():
    module = AnsibleModule(
        argument_spec={
            "action": {"type": "str", "required": True, "choices": ["plan", "apply", "verify", "audit", "destroy"]},
            "spec": {"type": "path", "required": True},
            "files": {"type": "dict"},
            "uri": {"type": "str", "default": "qemu:///system"},
            "host_root": {"type": "path"},
            "command": {"type": "str", "default": "bmslice"},
            "allow_move": {"type": "bool", "default": False},
            "keep_disks": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    params = module.params
    action = params["action"]
    command = params["command"]
    if "/" not in command:
        command = module.get_bin_path(command, required=True)
    spec = params["spec"]
    spec_dir = os.path.dirname(spec) or "."
    files = params["files"] or {}
    bad = [name for name in files if not _safe_name(name)]
    if bad:
        module.fail_json(msg=f"files: {bad[0]!r} is not a relative path inside the spec's directory")
    differing = sorted(name for name, text in files.items() if _read(os.path.join(spec_dir, name)) != text)
    result = {"changed": False, "action": action, "files_changed": differing}

    place = bool(differing) and action == "apply" and not module.check_mode
    if place:
        for name in differing:
            _write(module, os.path.join(spec_dir, name), files[name])
        result["changed"] = True
    elif differing and module.check_mode and action == "apply":
        result["changed"] = True  # apply would place them

    private = None
    run_spec = spec
    if differing and not place:
        # Run on a private copy of the bundle: never write the host's files outside apply.
        private = tempfile.mkdtemp(prefix="bmslice-")
        for name, text in files.items():
            _write(module, os.path.join(private, name), text)
        if os.path.isdir(os.path.join(spec_dir, "secrets")):
            os.symlink(os.path.join(spec_dir, "secrets"), os.path.join(private, "secrets"))
        run_spec = os.path.join(private, os.path.basename(spec))
    runner = Runner(module, command, run_spec)
    try:
        offline_check = module.check_mode and bool(params["host_root"])
        if action == "plan" or (offline_check and action in ("apply", "verify", "destroy")):
            _plan(runner, params, result)
            if action != "plan":
                result["msg"] = (
                    f"check mode on a host tree: planned {len(result['plan']['vms'])} slice(s); "
                    "what apply would change is not known without the live host"
                )
        elif action == "apply":
            _apply(runner, params, result, module.check_mode)
        elif action == "verify":
            if _verify(runner, params, result):
                result["bmslice_warnings"] = runner.warnings
                module.fail_json(msg=f"drift: {len(result['drift'])} difference(s) from the plan", **result)
        elif action == "audit":
            args = [action, run_spec, "--json"]
            if params["host_root"]:
                args += ["--host-root", params["host_root"]]
            rc, out, _ = runner.must(args, result, ok=(0, 1))
            try:
                result["report"] = json.loads(out)
            except ValueError:
                result["report"] = {"lines": out.splitlines()}
            if rc == 1:
                result["bmslice_warnings"] = runner.warnings
                first = next((line for line in out.splitlines() if line.strip()), "see report")
                module.fail_json(msg=f"audit found violations: {first}", **result)
        elif module.check_mode:  # destroy
            _verify(runner, params, result)
            defined = [s["name"] for s in result["report"].get("slices", []) if s["state"] != "not defined"]
            result["steps"] = [f"destroy {name}" for name in defined]
            result["changed"] = bool(defined)
        else:
            args = _lifecycle_args(params, "destroy", run_spec)
            if params["keep_disks"]:
                args.append("--keep-disks")
            _, out, _ = runner.must(args, result)
            done = [line.strip() for line in out.splitlines() if line.startswith("  ")]
            result["steps"] = [line for line in done if not line.endswith("nothing to do")]
            result["changed"] = bool(result["steps"])
    finally:
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)
    result["bmslice_warnings"] = runner.warnings
    module.exit_json(**result)


if __name__ == "__main__":
    main()
