"""Everything a fleet placement turns into, as text (pure: tests compare it with golden files).

- one ordinary per-host spec per server, the format `bmslice plan` takes;
- per guest, cloud-init user-data: hostname, SSH keys, node labels, a kubelet
  configuration aligned with the slice, and a join script;
- the fabric: per switch port the VLANs each tenant needs, as neutral data and as Junos
  `set` commands;
- a summary table.

Secrets never pass through here. A cluster's kubeadm join command stays in the file the
operator provides: the host spec names it as a seed file (`cloud_init.seed_files`), Ansible
copies it to the host (mode 0600, no_log), apply puts it on the VM's cloud-init seed, and
the guest's join script reads it from the seed at boot and hands it to kubeadm in a
JoinConfiguration file, never on a command line.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from bmslice.model.fleet import Fleet, InventoryHost, NicKind, PlacedVm, Placement, Role
from bmslice.model.sizes import format_mib
from bmslice.model.spec import EmulatorPolicy, HugepageSize

LABEL_PREFIX = "bmslice.io"
JOIN_SEED_FILE = "kubeadm-join"  # the join command's name on the VM's cloud-init seed
PATCH_DIR = "/etc/bmslice/kubeadm-patches"
KUBELET_PATCH = f"{PATCH_DIR}/kubeletconfiguration+merge.yaml"
LABELS_FILE = "/etc/bmslice/node-labels"
JOIN_SCRIPT = "/usr/local/sbin/bmslice-kubeadm-join"


def join_file_name(cluster: str) -> str:
    """Where a cluster's join file sits next to the host spec: secrets/<cluster>.kubeadm-join."""
    return f"secrets/{cluster}.kubeadm-join"


def guest_file_name(vm: str) -> str:
    return f"guests/{vm}.user-data.yaml"


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (scripts, config files) as literal blocks, so the user-data reads as written."""


class _FastDumper(yaml.CSafeDumper):
    """The same through libyaml: identical text, five times faster on a fleet of 1,000 servers."""


def _str(dumper: yaml.SafeDumper | yaml.CSafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)
_FastDumper.add_representer(str, _str)


def _dump(data: Any) -> str:
    dumper = _FastDumper if yaml.__with_libyaml__ else _Dumper
    return yaml.dump(data, Dumper=dumper, sort_keys=False, default_flow_style=False, width=120)


# --- per-host spec ------------------------------------------------------------------------


def _nic_entries(vm: PlacedVm) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for nic in vm.nics:
        if nic.kind is NicKind.PASSTHROUGH:
            out.append({"passthrough": nic.pf})
        else:
            entry: dict[str, Any] = {"pf": nic.pf, "vlan": nic.vlan}
            if nic.count != 1:
                entry["count"] = nic.count
            out.append({"sriov": entry})
    return out


def _vm_entry(fleet: Fleet, vm: PlacedVm) -> dict[str, Any]:
    cluster = fleet.cluster(vm.cluster)
    size = cluster.size(vm.role, vm.index)
    entry: dict[str, Any] = {
        "name": vm.name,
        "vcpus": size.vcpus,
        "memory": format_mib(size.memory),
        "numa_node": vm.numa_node,
        "emulator": size.emulator.value,
        "iothreads": size.iothreads,
    }
    if size.hugepages is not HugepageSize.NONE:
        entry["hugepages"] = size.hugepages.value
    if size.disable_cpu_features:
        entry["disable_cpu_features"] = list(size.disable_cpu_features)
    nics = _nic_entries(vm)
    if nics:
        entry["nics"] = nics
    if size.disk is not None:
        disk: dict[str, Any] = {"size": format_mib(size.disk.size), "pool": size.disk.pool}
        if size.disk.image is not None:
            disk["image"] = str(size.disk.image)
        entry["disk"] = disk
    cloud_init: dict[str, Any] = {"user_data": guest_file_name(vm.name)}
    if vm.role is Role.WORKER and cluster.kubeadm_join_file is not None:
        cloud_init["seed_files"] = {JOIN_SEED_FILE: join_file_name(cluster.name)}
    entry["cloud_init"] = cloud_init
    return entry


def host_spec_data(fleet: Fleet, placement: Placement, host: str) -> dict[str, Any] | None:
    """The spec of one server as data; None when no VM is placed there."""
    vms = placement.on_host(host)
    if not vms:
        return None
    data: dict[str, Any] = {}
    host_section = fleet.host(host).host.model_dump(mode="json", exclude_unset=True)
    if host_section:
        data["host"] = host_section
    data["vms"] = [_vm_entry(fleet, vm) for vm in vms]
    return data


def host_spec_yaml(fleet: Fleet, placement: Placement, host: str, origin: str = "the fleet file") -> str | None:
    data = host_spec_data(fleet, placement, host)
    if data is None:
        return None
    inv = fleet.host(host)
    head = (
        f"# {host} ({inv.role.value} host, rack {inv.rack}): generated by `bmslice fleet plan` from {origin}.\n"
        "# Edit the fleet file, not this one. Paths are relative to this file; secrets/ is placed by Ansible.\n"
    )
    return head + _dump(data)


# --- guest cloud-init ---------------------------------------------------------------------


def node_labels(fleet: Fleet, vm: PlacedVm) -> dict[str, str]:
    inv = fleet.host(vm.host)
    return {
        f"{LABEL_PREFIX}/cluster": vm.cluster,
        f"{LABEL_PREFIX}/host": vm.host,
        f"{LABEL_PREFIX}/numa-node": str(vm.numa_node),
        f"{LABEL_PREFIX}/rack": inv.rack,
    }


def reserved_guest_cpus(vm: PlacedVm) -> str:
    """The first whole guest core: guest CPUs 0,1 when the guest sees sibling pairs, else 0."""
    return "0,1" if vm.guest_threads == 2 else "0"


def kubelet_config(vm: PlacedVm) -> str:
    """A KubeletConfiguration (as a kubeadm patch) that keeps pods aligned with the slice."""
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cpuManagerPolicy": "static",
        "reservedSystemCPUs": reserved_guest_cpus(vm),
        "topologyManagerPolicy": "single-numa-node",
    }
    return _dump(config)


_JOIN_SCRIPT = """\
#!/bin/sh
# Join this VM to its Kubernetes cluster once, at first boot. Written by bmslice; holds no secret.
# The operator's join command ("kubeadm join HOST:PORT --token T --discovery-token-ca-cert-hash H")
# is read from the file "{seed_file}" on the cloud-init seed (the CD labelled cidata) and handed to
# kubeadm inside a JoinConfiguration file under /run, so the token never appears on a command line.
set -eu
[ -e /etc/kubernetes/kubelet.conf ] && exit 0
umask 077
set -f
seed=$(mktemp -d)
mount -o ro "$(blkid -L cidata)" "$seed"
words=$(cat "$seed/{seed_file}")
umount "$seed" && rmdir "$seed"
set -- $words
endpoint="" token="" hash=""
while [ $# -gt 0 ]; do
  case $1 in
    kubeadm|join|'\\') shift ;;
    --token) token=$2; shift 2 ;;
    --token=*) token=${{1#*=}}; shift ;;
    --discovery-token-ca-cert-hash) hash=$2; shift 2 ;;
    --discovery-token-ca-cert-hash=*) hash=${{1#*=}}; shift ;;
    --*) echo "bmslice-kubeadm-join: unsupported option ${{1%%=*}} in {seed_file}" >&2; exit 1 ;;
    *) endpoint=$1; shift ;;
  esac
done
if [ -z "$endpoint" ] || [ -z "$token" ] || [ -z "$hash" ]; then
  echo "bmslice-kubeadm-join: {seed_file} must hold: kubeadm join HOST:PORT --token ... --discovery-token-ca-cert-hash ..." >&2
  exit 1
fi
config=/run/bmslice-kubeadm-join.yaml
cat > "$config" <<EOF
apiVersion: kubeadm.k8s.io/v1beta3
kind: JoinConfiguration
discovery:
  bootstrapToken:
    apiServerEndpoint: "$endpoint"
    token: "$token"
    caCertHashes: ["$hash"]
nodeRegistration:
  name: {node_name}
  kubeletExtraArgs:
    node-labels: "$(cat {labels_file})"
patches:
  directory: {patch_dir}
EOF
status=0
kubeadm join --config "$config" || status=$?
rm -f "$config"
exit $status
"""


def join_script(vm: PlacedVm) -> str:
    return _JOIN_SCRIPT.format(
        seed_file=JOIN_SEED_FILE, node_name=vm.name, labels_file=LABELS_FILE, patch_dir=PATCH_DIR
    )


def guest_user_data(fleet: Fleet, vm: PlacedVm, ssh_keys: Sequence[str]) -> str:
    """#cloud-config for one VM. Apply reads it as the VM's `cloud_init.user_data` and merges
    it into the seed it builds (hostname and keys as here); it holds no secret."""
    cluster = fleet.cluster(vm.cluster)
    labels = ",".join(f"{k}={v}" for k, v in node_labels(fleet, vm).items())
    config: dict[str, Any] = {"hostname": vm.name, "preserve_hostname": False}
    if ssh_keys:
        config["ssh_authorized_keys"] = list(ssh_keys)
    files: list[dict[str, str]] = [{"path": LABELS_FILE, "permissions": "0644", "content": labels + "\n"}]
    config["write_files"] = files
    joins = vm.role is Role.WORKER and cluster.kubeadm_join_file is not None
    if vm.role is Role.WORKER:
        files.append({"path": KUBELET_PATCH, "permissions": "0644", "content": kubelet_config(vm)})
    if joins:
        files.append({"path": JOIN_SCRIPT, "permissions": "0700", "content": join_script(vm)})
        config["runcmd"] = [JOIN_SCRIPT]
    note = [
        f"# {vm.name}: cluster {vm.cluster} (VLAN {cluster.vlan}), {vm.role.value}, on {vm.host} NUMA node "
        f"{vm.numa_node}.",
        "# Generated by bmslice fleet; holds no secret.",
    ]
    if joins:
        note.append(f"# The join command is read at boot from the seed file {JOIN_SEED_FILE} (see the script below).")
    elif vm.role is Role.WORKER:
        note.append("# The fleet names no kubeadm_join_file for this cluster: join this node by hand.")
    body = _dump(config)
    return "#cloud-config\n" + "\n".join(note) + "\n" + body


# --- the fabric ---------------------------------------------------------------------------


def _natural(text: str) -> tuple[Any, ...]:
    """ge-0/0/9 before ge-0/0/10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def fabric_data(fleet: Fleet, placement: Placement) -> dict[str, Any]:
    """Per switch: the VLANs it needs and, per port, mode and VLANs; plus NICs with no known port.

    A port whose NIC is passed through whole carries its one tenant VLAN untagged (access);
    a port whose NIC serves VFs carries every VF's VLAN tagged (trunk), since the host tags
    each VF's frames.
    """
    by_pf: dict[tuple[str, str], list[tuple[PlacedVm, NicKind, int]]] = defaultdict(list)
    for vm in placement.vms:
        for nic in vm.nics:
            by_pf[(vm.host, nic.pf)].append((vm, nic.kind, nic.vlan))
    vlan_names = {c.vlan: c.switch_vlan for c in fleet.clusters}
    switches: dict[str, dict[str, Any]] = {}
    uncabled: list[dict[str, Any]] = []
    for (host, pf), users in sorted(by_pf.items()):
        vlans = sorted({vlan for _, _, vlan in users})
        trunk = any(kind is NicKind.SRIOV for _, kind, _ in users)
        entry = {
            "host": host,
            "nic": pf,
            "mode": "trunk" if trunk else "access",
            "vlans": vlans,
            "vms": sorted({vm.name for vm, _, _ in users}),
        }
        port = fleet.host(host).nics.get(pf)
        if port is None:
            uncabled.append(entry)
            continue
        switch = switches.setdefault(port.switch, {"name": port.switch, "vlans": {}, "ports": []})
        for vlan in vlans:
            switch["vlans"][vlan] = vlan_names[vlan]
        switch["ports"].append({"port": port.port, **entry})
    out_switches = []
    for name in sorted(switches):
        switch = switches[name]
        out_switches.append(
            {
                "name": name,
                "vlans": [{"id": vlan, "name": switch["vlans"][vlan]} for vlan in sorted(switch["vlans"])],
                "ports": sorted(switch["ports"], key=lambda p: _natural(p["port"])),
            }
        )
    return {"switches": out_switches, "uncabled": uncabled}


def junos_config(switch: Mapping[str, Any], origin: str = "the fleet file") -> str:
    """Junos (ELS) `set` commands for one switch of `fabric_data`."""
    names = {v["id"]: v["name"] for v in switch["vlans"]}
    lines = [
        f"# {switch['name']}: tenant VLANs for the bmslice fleet, generated from {origin}.",
        "# configure; load set FILE (or load set terminal); show | compare; commit check; commit",
        "# check: show vlans; show ethernet-switching table interface <port>",
    ]
    for vlan in switch["vlans"]:
        lines.append(f"set vlans {vlan['name']} vlan-id {vlan['id']}")
    for port in switch["ports"]:
        name = port["port"]
        base = f"set interfaces {name} unit 0 family ethernet-switching"
        lines.append(f'set interfaces {name} description "{port["host"]} {port["nic"]}: {" ".join(port["vms"])}"')
        lines.append(f"{base} interface-mode {port['mode']}")
        members = [names[v] for v in port["vlans"]]
        lines.append(f"{base} vlan members {members[0] if len(members) == 1 else '[ ' + ' '.join(members) + ' ]'}")
    return "\n".join(lines) + "\n"


# --- summary ------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    return [
        "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in (header, *rows)
    ]


def _nic_text(fleet: Fleet, vm: PlacedVm) -> str:
    parts = []
    inv: InventoryHost = fleet.host(vm.host)
    for nic in vm.nics:
        what = "passthrough" if nic.kind is NicKind.PASSTHROUGH else f"{nic.count} VF" + ("s" if nic.count > 1 else "")
        port = inv.nics.get(nic.pf)
        where = f" @ {port.switch} {port.port}" if port else ""
        numa = "" if nic.numa_node == vm.numa_node else f" (NUMA {nic.numa_node if nic.numa_node is not None else '?'})"
        parts.append(f"{nic.pf} {what} VLAN {nic.vlan}{numa}{where}")
    return ", ".join(parts) or "-"


def summary_text(fleet: Fleet, placement: Placement) -> str:
    clusters = ", ".join(f"{c.name} (VLAN {c.vlan})" for c in fleet.clusters) or "none"
    lines = [f"fleet: {len(fleet.inventory)} host(s), {len(placement.vms)} VM(s); clusters: {clusters}", ""]
    rows = []
    for vm in placement.vms:
        inv = fleet.host(vm.host)
        size = fleet.cluster(vm.cluster).size(vm.role, vm.index)
        emulator = "+emu core" if size.emulator is EmulatorPolicy.DEDICATED else ""
        rows.append(
            [
                vm.host,
                inv.rack,
                vm.name,
                str(vm.numa_node),
                f"{size.vcpus}{emulator}",
                format_mib(size.memory),
                _nic_text(fleet, vm),
            ]
        )
    lines += _table(["host", "rack", "VM", "node", "vCPUs", "memory", "NICs"], rows)
    lines.append("")
    usage_rows = [
        [
            u.host,
            str(u.node),
            f"{u.cores_used}/{u.cores_free_before}",
            f"{format_mib(u.memory_used) if u.memory_used else '0'}/{format_mib(u.memory_free_before)}",
        ]
        for u in placement.usage
    ]
    lines += _table(["host", "node", "cores used/free", "memory used/free"], usage_rows)
    empty = sorted({h.name for h in fleet.inventory} - {vm.host for vm in placement.vms})
    if empty:
        lines += ["", f"no slices on: {', '.join(empty)}"]
    lines += [f"note: {note}" for note in placement.notes]
    return "\n".join(lines) + "\n"


# --- all files of a plan ------------------------------------------------------------------


def placement_json(placement: Placement) -> str:
    from bmslice.model.fleet import placement_to_dict

    return json.dumps(placement_to_dict(placement), indent=2) + "\n"


def render_fleet(
    fleet: Fleet, placement: Placement, ssh_keys: Sequence[str], origin: str = "the fleet file"
) -> dict[str, str]:
    """{relative path: text} of everything `bmslice fleet plan --out DIR` writes."""
    files: dict[str, str] = {}
    for inv in sorted(fleet.inventory, key=lambda h: h.name):
        spec = host_spec_yaml(fleet, placement, inv.name, origin)
        if spec is None:
            continue
        files[f"hosts/{inv.name}/spec.yaml"] = spec
        for vm in placement.on_host(inv.name):
            files[f"hosts/{inv.name}/{guest_file_name(vm.name)}"] = guest_user_data(fleet, vm, ssh_keys)
    fabric = fabric_data(fleet, placement)
    files["fabric/fabric.json"] = json.dumps(fabric, indent=2) + "\n"
    for switch in fabric["switches"]:
        files[f"fabric/{switch['name']}.set"] = junos_config(switch, origin)
    files["summary.txt"] = summary_text(fleet, placement)
    files["placement.json"] = placement_json(placement)
    return files
