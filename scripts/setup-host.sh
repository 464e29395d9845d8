#!/usr/bin/env bash
# Prepare this host for bmslice development and CI (Debian 12, root, no systemd).
# Idempotent and safe to run repeatedly:
#   - installs the Debian packages (libvirt, QEMU/KVM, hwloc, genisoimage, build deps)
#   - creates .venv and installs the project with the dev + libvirt extras
#   - downloads ansible-test's pinned sanity requirements as wheels, so the tests run
#     `ansible-test sanity` offline (tests/test_fleet_ansible_tools.py)
#   - starts virtlogd/libvirtd (scripts/start-libvirtd.sh)
#   - ensures the libvirt storage pool 'default' (dir, /var/lib/libvirt/images) is active
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

log() { printf '[setup-host] %s\n' "$*"; }
t0=$SECONDS

if [[ $(id -u) -ne 0 ]]; then
    echo "setup-host.sh must run as root" >&2
    exit 1
fi

# --- 1. Debian packages -----------------------------------------------------------------
PACKAGES=(
    libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
    qemu-system-x86 qemu-utils libvirt-dev pkg-config hwloc genisoimage
    gcc make chromium
    # the lab (bmslice lab, make lab-test) runs this machine's own userland on its kernel:
    # modprobe/depmod, udev (device naming, module loading, rules), cpio for the tests
    kmod udev cpio iproute2 debian-archive-keyring
    # virt-xml-validate runs xmllint (tests/test_virt_xml_validate.py); libvirt-clients does not pull it in
    libxml2-utils
    cloud-init  # `cloud-init schema` checks every generated user-data (tests/test_fleet_guest.py)
    # the host files' own checkers (tests/test_reboot_files.py): shellcheck for the libvirt hook,
    # tuned's profile loader for bmslice's tuned profile (the daemon never runs here: below)
    shellcheck tuned
    # tests/test_remote_ssh.py starts its own sshd on loopback (its config, keys and port; the
    # package's own service is not needed). libvirt's qemu+ssh finds virt-ssh-helper (from
    # libvirt-daemon, above) on the far side, so no netcat is needed.
    openssh-server openssh-client
    # promtool checks and unit-tests bmslice's alert rules; tests/test_prometheus.py starts its own
    # server (its config, data dir and loopback port) to scrape `bmslice exporter`: not the package's service
    prometheus
)
missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [[ $status == installed ]] || missing+=("$pkg")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # No service a package ships may start while it installs (tuned would tune this machine):
    # invoke-rc.d and deb-systemd-invoke ask policy-rc.d, and 101 means "not now".
    policy=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
        trap 'rm -f "$policy"' EXIT  # gone on every exit, a failed install included
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [[ -z $policy ]] || rm -f "$policy"
    # nor at a later boot: the tests only read tuned's profiles, and start their own Prometheus
    deb-systemd-helper disable tuned.service >/dev/null 2>&1 || true
    systemctl disable prometheus.service >/dev/null 2>&1 || true  # deb-systemd-helper acts only under dpkg
    log "packages installed ($((SECONDS - t0)) s)"
else
    log "Debian packages already installed"
fi

# --- 2. Python venv -----------------------------------------------------------------------
PYTHON=""
for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 &&
        "$cand" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
        PYTHON=$cand
        break
    fi
done
if [[ -z $PYTHON ]]; then
    echo "setup-host.sh: need Python >= 3.11 as python3.11 or python3" >&2
    exit 1
fi

VENV="$REPO_ROOT/.venv"
if [[ ! -x $VENV/bin/python ]]; then
    log "creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi

# Reinstall only when pyproject.toml changed or the install is broken.
STAMP="$VENV/.bmslice-install-stamp"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
have=$(cat "$STAMP" 2>/dev/null || true)
if [[ $want != "$have" ]] ||
    ! "$VENV/bin/python" -c 'import bmslice, libvirt' >/dev/null 2>&1 ||
    [[ ! -x $VENV/bin/pytest || ! -x $VENV/bin/ruff || ! -x $VENV/bin/mypy ]]; then
    log "pip install -e '.[dev,libvirt,fleet]' (libvirt-python builds from source, ~20-60 s)"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev,libvirt,fleet]'
    printf '%s\n' "$want" >"$STAMP"
    log "venv ready ($((SECONDS - t0)) s)"
else
    log ".venv up to date"
fi

# --- 2b. ansible-test's sanity requirements, as local wheels ---------------------------------
# ansible-test builds one virtual environment per sanity test from pinned requirements. The
# test points pip at these wheels (no index), so `make test` needs no network; refreshed
# whenever the installed ansible-test pins other versions.
WHEELS="$VENV/ansible-test/wheels"
REQS=$("$VENV/bin/python" -c 'import ansible_test, os; print(os.path.join(os.path.dirname(ansible_test.__file__), "_data", "requirements"))')
want=$(cat "$REQS"/sanity.*.txt | sha256sum | cut -d' ' -f1)
if [[ $want != "$(cat "$WHEELS/.stamp" 2>/dev/null || true)" ]]; then
    log "downloading ansible-test's sanity requirements to $WHEELS"
    reqs=()
    for f in "$REQS"/sanity.*.txt; do reqs+=(-r "$f"); done
    mkdir -p "$WHEELS"
    "$VENV/bin/python" -m pip download -q --disable-pip-version-check -d "$WHEELS" "${reqs[@]}"
    printf '%s\n' "$want" >"$WHEELS/.stamp"
else
    log "ansible-test wheels up to date"
fi

# --- 3. libvirt daemons ----------------------------------------------------------------------
bash "$REPO_ROOT/scripts/start-libvirtd.sh"

# --- 4. storage pool 'default' ---------------------------------------------------------------
URI="qemu:///system"
POOL_DIR=/var/lib/libvirt/images
mkdir -p "$POOL_DIR"
if ! virsh -c "$URI" pool-info default >/dev/null 2>&1; then
    virsh -q -c "$URI" pool-define-as default dir --target "$POOL_DIR" >/dev/null
    log "defined storage pool 'default' ($POOL_DIR)"
fi
pool_info() { virsh -c "$URI" pool-info default 2>/dev/null || true; }
# (captured first: `virsh | grep -q` trips pipefail when grep exits early)
info=$(pool_info)
if ! grep -Eq '^State:[[:space:]]+running' <<<"$info"; then
    virsh -q -c "$URI" pool-build default >/dev/null 2>&1 || true
    virsh -q -c "$URI" pool-start default >/dev/null
    log "started storage pool 'default'"
fi
if ! grep -Eq '^Autostart:[[:space:]]+yes' <<<"$info"; then
    virsh -q -c "$URI" pool-autostart default >/dev/null
fi
log "storage pool 'default' active at $POOL_DIR"

log "done in $((SECONDS - t0)) s"
