"""The Ansible side of a fleet: inventory and playbook text (pure).

bmslice does not run anything remotely itself: the playbook hands each server its spec
bundle (spec + guest user-data) and runs the `bmslice.slicing.bmslice` module there. Join
files are the only secrets: the playbook copies them from the paths the fleet file names
(on the controller) to the host with mode 0600 and `no_log`; no generated file holds them.

How a fleet host becomes an inventory host:

- a host with `host_root` (an offline tree) runs with `ansible_connection: local`, and
  the module gets the tree: in check mode every action on it is a plan;
- a local URI (`qemu:///system`) also runs locally, and so does libvirt's test driver
  (`test:///FILE`), which the tests use as a server that was never applied;
- `qemu+ssh://user@server1:2222/system` becomes `ansible_host: server1`,
  `ansible_user: user`, `ansible_port: 2222`, and the module on the server uses the
  server's own `qemu:///system`;
- libvirt's ssh options in that URI reach Ansible's ssh too, so `fleet plan` (through
  libvirt) and the playbook (through Ansible) log in the same way: `keyfile=K` becomes
  `ansible_ssh_private_key_file: K`; `command=SSH` (the ssh program, e.g. a wrapper that
  adds `-F config`) becomes `ansible_ssh_executable: SSH` with piped file transfers, so
  every byte goes through that program (Ansible's sftp and scp would not use it);
  `no_verify=1` (accept a new host key) becomes `ansible_host_key_checking: false`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from bmslice.fleet.render import join_file_name
from bmslice.fleet.text import Unsafe, indented_yaml, one_line
from bmslice.model.fleet import Fleet, InventoryHost, Placement, Role

GROUPS = {Role.CONTROL: "bmslice_control", Role.WORKER: "bmslice_worker"}
# bmslice's own templates in a host's variables; every other string came from the fleet file.
TEMPLATES = frozenset({"ansible_python_interpreter"})


def literal(value: Any) -> Any:
    """`value` with every string marked `!unsafe`: Ansible templates the strings of an inventory
    when it uses them, so "{{ lookup('pipe', ...) }}" in a path of the fleet file would run on
    the controller. Marked, it stays that text, whatever it holds."""
    if isinstance(value, str):
        return Unsafe(value)
    if isinstance(value, list):
        return [literal(item) for item in value]
    if isinstance(value, dict):
        return {key: item if key in TEMPLATES else literal(item) for key, item in value.items()}
    return value


def connection_vars(inv: InventoryHost) -> dict[str, Any]:
    parts = urlsplit(inv.uri)
    if inv.host_root is not None or inv.runs_here:
        return {
            "ansible_connection": "local",
            "ansible_python_interpreter": "{{ ansible_playbook_python }}",
            "bmslice_uri": inv.uri,
        }
    out: dict[str, Any] = {"ansible_host": parts.hostname or inv.name}
    if parts.username:
        out["ansible_user"] = parts.username
    if parts.scheme.endswith("+ssh"):
        if parts.port:
            out["ansible_port"] = parts.port
        out.update(ssh_vars(uri_params(parts.query)))
    driver = parts.scheme.partition("+")[0]
    out["bmslice_uri"] = f"{driver}://{parts.path or '/system'}"  # the server's own libvirtd
    return out


def uri_params(query: str) -> dict[str, str]:
    """A libvirt URI's parameters as libvirt's remote driver reads them: `&` separates, names
    match in any case, values are %-escaped (a `+` stays a plus), the last one given counts.

    >>> uri_params("keyfile=/k%20ey&No_Verify=1&keyfile=/k2&no_tty")
    {'keyfile': '/k2', 'no_verify': '1', 'no_tty': ''}
    """
    out: dict[str, str] = {}
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name:
            out[unquote(name).lower()] = unquote(value)
    return out


def ssh_vars(params: dict[str, str]) -> dict[str, Any]:
    """Ansible's ssh connection variables for libvirt's ssh transport options (see the top)."""
    out: dict[str, Any] = {}
    if params.get("keyfile"):
        out["ansible_ssh_private_key_file"] = params["keyfile"]
    if params.get("command"):
        out["ansible_ssh_executable"] = params["command"]
        out["ansible_ssh_transfer_method"] = "piped"
    if _flag(params.get("no_verify", "0")):
        out["ansible_host_key_checking"] = False
    return out


def _flag(value: str) -> bool:
    # libvirt reads its no_* flags as integers and refuses the URI when one is not
    try:
        return int(value) != 0
    except ValueError:
        return False


def host_vars(fleet: Fleet, placement: Placement, inv: InventoryHost, files: list[str]) -> dict[str, Any]:
    out = connection_vars(inv)
    out["bmslice_rack"] = inv.rack
    if inv.host_root is not None:
        out["bmslice_host_root"] = str(inv.host_root)
    out["bmslice_files"] = files
    joins = []
    for cluster_name in sorted({vm.cluster for vm in placement.on_host(inv.name) if vm.role is Role.WORKER}):
        cluster = fleet.cluster(cluster_name)
        if cluster.kubeadm_join_file is not None:
            joins.append({"name": join_file_name(cluster.name), "src": str(cluster.kubeadm_join_file)})
    out["bmslice_join_files"] = joins
    return out


def inventory_yaml(fleet: Fleet, placement: Placement, files_by_host: dict[str, list[str]], origin: str) -> str:
    """Hosts with slices, grouped by role; `files_by_host` lists each host's bundle (relative to hosts/<name>/)."""
    groups: dict[str, dict[str, Any]] = {GROUPS[role]: {"hosts": {}} for role in Role}
    idle = []
    for inv in sorted(fleet.inventory, key=lambda h: h.name):
        files = files_by_host.get(inv.name)
        if not files:
            idle.append(inv.name)
            continue
        groups[GROUPS[inv.role]]["hosts"][inv.name] = literal(host_vars(fleet, placement, inv, files))
    data = {
        "all": {
            "vars": {"bmslice_command": "bmslice", "bmslice_base_dir": "/etc/bmslice/fleet"},
            "children": {"bmslice_fleet": {"children": {name: g for name, g in groups.items() if g["hosts"]}}},
        }
    }
    head = [
        f"# Generated by `bmslice fleet ansible` from {one_line(origin)}; regenerate rather than edit.",
        "# ANSIBLE_COLLECTIONS_PATH=<directory holding ansible_collections/> ansible-playbook -i inventory.yml site.yml",
    ]
    if idle:
        head.append(f"# no slices (left out): {', '.join(idle)}")
    return "\n".join(head) + "\n" + indented_yaml(data)


PLAYBOOK = """\
# Generated by `bmslice fleet ansible`. Each server gets its spec bundle from hosts/<name>/
# and runs bmslice there through the bmslice.slicing collection (no Galaxy needed: point
# ANSIBLE_COLLECTIONS_PATH at the directory holding ansible_collections/).
#   ansible-playbook -i inventory.yml site.yml --check   # dry run; a plan on host trees
#   ansible-playbook -i inventory.yml site.yml           # apply, then verify
#   ansible-playbook -i inventory.yml site.yml --tags verify   # only verify (tags: secrets, apply, verify, exporter)
# A host with `bmslice_exporter: true` in the inventory also runs bmslice's Prometheus exporter
# (on its reserved CPUs; `bmslice_exporter_listen`, default 127.0.0.1:9963, says where it serves).
- name: Slice the fleet's servers with bmslice
  hosts: bmslice_fleet
  gather_facts: false
  vars:
    bmslice_dir: "{{ bmslice_base_dir }}/{{ inventory_hostname }}"
    bmslice_bundle: >-
      {{ dict(bmslice_files | zip(query('ansible.builtin.file',
      *(bmslice_files | map('regex_replace', '^', playbook_dir ~ '/hosts/' ~ inventory_hostname ~ '/')),
      rstrip=False))) }}
  tasks:
    - name: Make the directory for the kubeadm join files
      ansible.builtin.file:
        path: "{{ bmslice_dir }}/secrets"
        state: directory
        mode: "0700"
      when: bmslice_join_files | length > 0
      tags: [secrets]

    - name: Place the kubeadm join files (secrets; never logged)
      ansible.builtin.copy:
        src: "{{ item.src }}"
        dest: "{{ bmslice_dir }}/{{ item.name }}"
        mode: "0600"
      loop: "{{ bmslice_join_files }}"
      no_log: true
      tags: [secrets]

    - name: Apply the slices of this server
      bmslice.slicing.bmslice:
        action: apply
        spec: "{{ bmslice_dir }}/spec.yaml"
        files: "{{ bmslice_bundle }}"
        uri: "{{ bmslice_uri }}"
        host_root: "{{ bmslice_host_root | default(omit) }}"
        command: "{{ bmslice_command }}"
        # check mode copies no join file: apply's dry run gets empty stand-ins for them
        pending_files: "{{ bmslice_join_files | map(attribute='name') | list }}"
      register: bmslice_apply
      tags: [apply]

    - name: Verify the live slices match the plan
      bmslice.slicing.bmslice:
        action: verify
        spec: "{{ bmslice_dir }}/spec.yaml"
        files: "{{ bmslice_bundle }}"
        uri: "{{ bmslice_uri }}"
        host_root: "{{ bmslice_host_root | default(omit) }}"
        command: "{{ bmslice_command }}"
      tags: [verify]

    - name: Serve this server's isolation, drift and free room to Prometheus
      bmslice.slicing.bmslice:
        action: exporter
        spec: "{{ bmslice_dir }}/spec.yaml"
        host_root: "{{ bmslice_host_root | default(omit) }}"
        command: "{{ bmslice_command }}"
        exporter_listen: "{{ bmslice_exporter_listen | default('127.0.0.1:9963') }}"
      when: bmslice_exporter | default(false) | bool
      tags: [exporter]
"""


ANSIBLE_LINT = """\
# ansible-lint's settings for this directory (`ansible-lint` here checks inventory.yml and
# site.yml), written by `bmslice fleet ansible`. hosts/ holds bmslice's spec bundles and
# cloud-init user-data, not Ansible content: cloud-init needs their first line to be
# "#cloud-config", which yamllint's comment rule would flag.
profile: production
offline: true
exclude_paths:
  - hosts/
  - fabric/
"""


def render_ansible(
    fleet: Fleet, placement: Placement, plan_files: dict[str, str], origin: str = "the fleet file"
) -> dict[str, str]:
    """{relative path: text}: the plan's files plus inventory.yml and site.yml."""
    files_by_host: dict[str, list[str]] = {}
    for path in sorted(plan_files):
        parts = path.split("/", 2)
        if parts[0] == "hosts" and len(parts) == 3:
            files_by_host.setdefault(parts[1], []).append(parts[2])
    out = dict(plan_files)
    out["inventory.yml"] = inventory_yaml(fleet, placement, files_by_host, origin)
    out["site.yml"] = PLAYBOOK
    out[".ansible-lint"] = ANSIBLE_LINT
    return out
