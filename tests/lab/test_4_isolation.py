"""Scenario 4: the lab rebooted with the kernel args `bmslice plan` gives; `audit` proves the isolation
and catches a process started on an isolated CPU and an IRQ moved there."""

from __future__ import annotations

from pathlib import Path

from lab import labctl, specs
from lab.conftest import Lab

# Move the first IRQ that has a handler and accepts it to CPU $1; print "<irq> <old affinity>".
MOVE_IRQ = r"""
for dir in /proc/irq/*/; do
    irq=$(basename "$dir")
    ls -d "$dir"*/ >/dev/null 2>&1 || continue
    old=$(cat "$dir/smp_affinity_list")
    if echo "$1" >"$dir/smp_affinity_list" 2>/dev/null && [ "$(cat "$dir/effective_affinity_list")" = "$1" ]; then
        echo "$irq $old"
        exit 0
    fi
done
exit 1
"""


def test_audit_on_the_planned_kernel_args(lab: Lab, tmp_path: Path) -> None:
    lab.ensure()
    path = specs.write(tmp_path, "slices.yaml", specs.slices())
    plan = labctl.bmslice("plan", path.name, "--json", files=[path]).expect().json()
    args = tuple(plan["host"]["kernel_args"])
    assert any(a.startswith("isolcpus=") for a in args) and any(a.startswith("nohz_full=") for a in args), args
    info = lab.ensure(args)
    labctl.say(f"rebooted the lab with: {' '.join(args)}")
    cmdline = labctl.run("cat", "/proc/cmdline").expect().out.split()
    assert set(args) <= set(cmdline), cmdline
    assert info["kernel_args"].split()[-len(args) :] == list(args)

    clean = labctl.bmslice("audit", path.name, files=[path]).expect()
    assert clean.out.rstrip().endswith("audit: isolation holds"), clean.report()
    for check in ("kernel args", "isolated", "nohz_full", "irqs", "threads"):
        assert f"ok   {check}: " in clean.out, clean.report()
    labctl.say("checked: audit passes (kernel args, isolated and nohz_full CPUs, IRQs, threads)")

    victim = str(min(plan["host"]["isolated_cpus"]))
    script = labctl.write(tmp_path, "move-irq.sh", MOVE_IRQ)
    started = labctl.sh(f"setsid taskset -c {victim} sleep 900 </dev/null >/dev/null 2>&1 & echo $!").expect()
    sleeper = started.out.split()[-1]
    moved = labctl.run("/bin/sh", "move-irq.sh", victim, files=[script]).expect()
    irq, old = moved.out.split()
    try:
        caught = labctl.bmslice("audit", path.name, "--json", files=[path]).expect(1).json()
        checks = {v["check"]: v["message"] for v in caught["violations"]}
        assert f"irq {irq}" in checks and f"effective affinity {victim}" in checks[f"irq {irq}"], caught
        assert (
            f"thread {sleeper}" in checks
            and f"(sleep) may run on isolated CPU(s) {victim}" in checks[f"thread {sleeper}"]
        ), caught
        labctl.say(f"checked: audit catches sleep (pid {sleeper}) on isolated CPU {victim} and IRQ {irq} moved there")
    finally:
        labctl.sh(f"kill {sleeper}; echo {old} > /proc/irq/{irq}/smp_affinity_list").expect()
