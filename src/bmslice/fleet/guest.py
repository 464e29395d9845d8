"""Inside each cluster VM: cloud-init user-data, node labels, the kubelet and the join (pure).

The kubelet of a worker is set up the way the kubelet's own documentation asks for
exclusive CPUs, and aligned with the slice under it:

- `reservedSystemCPUs` is the VM's first whole *host* core, as guest CPUs: guest vCPUs 2i
  and 2i+1 share a host core whenever the planner put them on one (even when the guest is
  told threads=1 because the vCPU count is odd), so reserving vCPU 0 alone would let the
  kubelet give vCPU 1, the same host core, to a pod;
- `cpuManagerPolicy: static` with the option `full-pcpus-only`: exclusive CPUs are whole
  guest cores, which are whole host cores when the guest sees sibling pairs;
- `topologyManagerPolicy: single-numa-node`, `topologyManagerScope: pod`: a pod's CPUs,
  devices and memory from one NUMA node (the guest has one: its slice is on one host node);
- with hugepages, `memoryManagerPolicy: Static` and `reservedMemory` for node 0. The kubelet
  refuses to start unless the reserved memory per node adds up to kube-reserved +
  system-reserved + the hard eviction threshold; bmslice reserves neither and leaves the
  threshold at the kubelet's default (memory.available 100Mi), so node 0 reserves 100Mi.

A realtime VM (its vCPUs after the housekeeping ones run SCHED_FIFO on the host) isolates
those vCPUs inside the guest too, with tuned's realtime-virtual-guest profile, the way the
RHEL realtime-virtualisation guide sets up a guest, and reboots once so that the profile's
kernel args take effect. Its kubelet reserves the housekeeping vCPUs (whole host cores: the
planner refuses anything else), so pods get only realtime vCPUs, as with OpenShift's
performance profile (reserved = housekeeping, isolated = for pods).

A worker whose reserved core is all the VM has leaves no CPU for pods: `guest_warnings`
says so, as it says when a VM has no disk image to boot from.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from bmslice.fleet.text import block_yaml
from bmslice.model.fleet import Fleet, PlacedVm, Placement, Role, VmSize
from bmslice.model.spec import HugepageSize

LABEL_PREFIX = "bmslice.io"
JOIN_SEED_FILE = "kubeadm-join"  # the join command's name on the VM's cloud-init seed
TUNED_GUEST_PROFILE = "realtime-virtual-guest"
TUNED_GUEST_VARIABLES = f"/etc/tuned/{TUNED_GUEST_PROFILE}-variables.conf"
PATCH_DIR = "/etc/bmslice/kubeadm-patches"
KUBELET_PATCH = f"{PATCH_DIR}/kubeletconfiguration+merge.yaml"
LABELS_FILE = "/etc/bmslice/node-labels"
JOIN_SCRIPT = "/usr/local/sbin/bmslice-kubeadm-join"
KUBEADM_API = "kubeadm.k8s.io/v1beta4"
EVICTION_HARD_MEMORY = "100Mi"  # the kubelet's default hard eviction threshold (memory.available)
NAMED = 3  # VM names quoted in a warning before "and N more"


def node_labels(fleet: Fleet, vm: PlacedVm) -> dict[str, str]:
    inv = fleet.host(vm.host)
    # a label value holds no ",": a VM over several nodes names them "0_1"
    nodes = "_".join(map(str, vm.nodes))
    return {
        f"{LABEL_PREFIX}/cluster": vm.cluster,
        f"{LABEL_PREFIX}/host": vm.host,
        f"{LABEL_PREFIX}/numa-node" if not vm.numa_nodes else f"{LABEL_PREFIX}/numa-nodes": nodes,
        f"{LABEL_PREFIX}/rack": inv.rack,
    }


def reserved_guest_cpus(vm: PlacedVm) -> tuple[int, ...]:
    """The guest CPUs on the VM's first host core: (0, 1) when vCPUs 0 and 1 share it.

    A placement written before guest cores were recorded has none: then vCPUs 0 and 1 are
    taken to share a core whenever the guest sees sibling pairs, as the planner places them.
    """
    if vm.guest_cores:
        return vm.guest_cores[0]
    return (0, 1) if vm.guest_threads == 2 else (0,)


def system_guest_cpus(vm: PlacedVm, size: VmSize) -> tuple[int, ...]:
    """The guest CPUs the kubelet keeps for the system: a realtime VM's housekeeping vCPUs, else
    the VM's first host core (reserved_guest_cpus)."""
    if size.realtime is not None:
        return tuple(range(size.realtime.housekeeping_vcpus))
    return reserved_guest_cpus(vm)


def realtime_guest_cpus(size: VmSize) -> tuple[int, ...]:
    """The vCPUs that run SCHED_FIFO on the host: every one after the housekeeping vCPUs."""
    return tuple(range(size.realtime.housekeeping_vcpus, size.vcpus)) if size.realtime is not None else ()


def _cpu_list(cpus: Sequence[int]) -> str:
    return ",".join(str(cpu) for cpu in cpus)


def tuned_guest_variables(size: VmSize) -> str:
    """/etc/tuned/realtime-virtual-guest-variables.conf: the realtime vCPUs, isolated in the guest."""
    return (
        "# Written by bmslice: these vCPUs run SCHED_FIFO on the host; tuned's realtime-virtual-guest\n"
        "# profile isolates them in the guest (isolcpus, nohz_full, rcu_nocbs, managed IRQs).\n"
        f"isolated_cores={_cpu_list(realtime_guest_cpus(size))}\n"
        "isolate_managed_irq=Y\n"
    )


def kubelet_config(vm: PlacedVm, size: VmSize) -> str:
    """A KubeletConfiguration (as a kubeadm patch) that keeps pods aligned with the slice."""
    config: dict[str, Any] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cpuManagerPolicy": "static",
        "cpuManagerPolicyOptions": {"full-pcpus-only": "true"},
        "reservedSystemCPUs": _cpu_list(system_guest_cpus(vm, size)),
        "topologyManagerPolicy": "single-numa-node",
        "topologyManagerScope": "pod",
    }
    if size.hugepages is not HugepageSize.NONE:
        config["memoryManagerPolicy"] = "Static"
        config["reservedMemory"] = [{"numaNode": 0, "limits": {"memory": EVICTION_HARD_MEMORY}}]
    return block_yaml(config)


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
apiVersion: {api}
kind: JoinConfiguration
discovery:
  bootstrapToken:
    apiServerEndpoint: "$endpoint"
    token: "$token"
    caCertHashes: ["$hash"]
nodeRegistration:
  name: {node_name}
  kubeletExtraArgs:
    - name: node-labels
      value: "$(cat {labels_file})"
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
        seed_file=JOIN_SEED_FILE, node_name=vm.name, labels_file=LABELS_FILE, patch_dir=PATCH_DIR, api=KUBEADM_API
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
    size = cluster.size(vm.role, vm.index)
    runcmd: list[str | list[str]] = []
    if size.realtime is not None:
        files.append({"path": TUNED_GUEST_VARIABLES, "permissions": "0644", "content": tuned_guest_variables(size)})
        runcmd.append(["tuned-adm", "profile", TUNED_GUEST_PROFILE])
        # the profile's kernel args (isolcpus, nohz_full, ...) take effect at the next boot
        config["power_state"] = {"mode": "reboot", "condition": True, "message": "realtime-virtual-guest profile"}
    if vm.role is Role.WORKER:
        files.append({"path": KUBELET_PATCH, "permissions": "0644", "content": kubelet_config(vm, size)})
    if joins:
        files.append({"path": JOIN_SCRIPT, "permissions": "0700", "content": join_script(vm)})
        runcmd.append(JOIN_SCRIPT)
    if runcmd:
        config["runcmd"] = runcmd
    where = (
        f"NUMA nodes {vm.nodes_text} ({len(vm.nodes)} guest NUMA cells)"
        if vm.numa_nodes
        else f"NUMA node {vm.numa_node}"
    )
    note = [
        f"# {vm.name}: cluster {vm.cluster} (VLAN {cluster.vlan}), {vm.role.value}, on {vm.host} {where}.",
        "# Generated by bmslice fleet; holds no secret.",
    ]
    if size.realtime is not None:
        note.append(
            f"# Realtime: vCPUs {_cpu_list(realtime_guest_cpus(size))} run SCHED_FIFO on the host. The image needs "
            "tuned with its realtime profiles (RHEL: tuned-profiles-nfv-guest) and a PREEMPT_RT kernel."
        )
    if joins:
        note.append(f"# The join command is read at boot from the seed file {JOIN_SEED_FILE} (see the script below).")
    elif vm.role is Role.WORKER:
        note.append("# The fleet names no kubeadm_join_file for this cluster: join this node by hand.")
    return "#cloud-config\n" + "\n".join(note) + "\n" + block_yaml(config)


# --- what the guests will lack ------------------------------------------------------------


def _names(vms: Sequence[str]) -> str:
    shown = ", ".join(vms[:NAMED])
    return shown + (f" and {len(vms) - NAMED} more" if len(vms) > NAMED else "")


def guest_warnings(fleet: Fleet, placement: Placement) -> list[str]:
    """One line per cluster and role whose VMs cannot boot, or whose workers keep no CPU for pods."""
    out: list[str] = []
    bootless: dict[tuple[str, Role, str], list[str]] = defaultdict(list)
    placed = {vm.name for vm in placement.vms}
    for req in fleet.vm_requests():  # fleet order: per cluster, control plane then workers
        disk = req.size.disk
        if req.name in placed and (disk is None or disk.image is None):
            bootless[(req.cluster, req.role, "no disk" if disk is None else "a blank disk")].append(req.name)
    for (cluster, role, what), vms in bootless.items():
        field = "workers" if role is Role.WORKER else "control_plane"
        out.append(
            f"{cluster}: {_names(vms)}: {what}, NOTHING TO BOOT FROM: give {field} a root disk from a cloud image "
            "(disk: {size: 40GiB, image: /var/lib/libvirt/images/<cloud image>.qcow2})"
        )
    starved: dict[str, list[PlacedVm]] = defaultdict(list)
    for vm in placement.vms:
        size = fleet.cluster(vm.cluster).workers
        if vm.role is Role.WORKER and len(system_guest_cpus(vm, size)) >= size.vcpus:
            starved[vm.cluster].append(vm)
    for name, workers in starved.items():
        reserved = _cpu_list(system_guest_cpus(workers[0], fleet.cluster(name).workers))
        out.append(
            f"{name}: the kubelet of {_names([vm.name for vm in workers])} keeps guest CPU(s) {reserved} (the VM's first "
            "host core) for the system, which is every vCPU the VM has: no CPU is left for pods; give the workers "
            "more vCPUs than one host core holds"
        )
    return out
