#!/usr/bin/env bash
# Start virtlogd + libvirtd (QEMU driver, qemu:///system) on a machine without systemd.
# Idempotent: prepares dirs, users/groups and /etc/libvirt/qemu.conf, starts the daemons
# only if they are not already running, and waits until qemu:///system answers.
# See docs/environment.md (shared) for why each step is needed.
set -euo pipefail

log() { printf '[start-libvirtd] %s\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
    echo "start-libvirtd.sh must run as root" >&2
    exit 1
fi
for bin in libvirtd virtlogd virsh; do
    if ! command -v "$bin" >/dev/null 2>&1; then
        echo "start-libvirtd.sh: '$bin' not found (run scripts/setup-host.sh first)" >&2
        exit 1
    fi
done

URI="qemu:///system"
QEMU_CONF=/etc/libvirt/qemu.conf
LOG_DIR=/var/log/libvirt

# 1. Directories.
mkdir -p "$LOG_DIR" /var/run/libvirt /var/lib/libvirt/images /var/lib/libvirt/qemu \
    /var/cache/libvirt /etc/libvirt

# 2. Groups and the libvirt-qemu system user (the QEMU driver refuses to start without it).
for grp in kvm libvirt-qemu libvirt; do
    if ! getent group "$grp" >/dev/null; then
        groupadd --system "$grp"
        log "created group $grp"
    fi
done
if ! getent passwd libvirt-qemu >/dev/null; then
    useradd --system --no-create-home --home-dir /var/lib/libvirt \
        --shell /usr/sbin/nologin -g libvirt-qemu -G kvm libvirt-qemu
    log "created user libvirt-qemu"
fi

# 3. qemu.conf: QEMU runs as root (/dev/kvm is root:root 0600 here), no security driver.
#    Only the three keys are touched; other settings are kept.
conf_changed=0
set_conf() { # key value(as written in the file)
    local key=$1 value=$2 line
    line="$key = $value"
    if grep -Eq "^[[:space:]]*${key}[[:space:]]*=" "$QEMU_CONF"; then
        if ! grep -Eq "^[[:space:]]*${key}[[:space:]]*=[[:space:]]*${value}[[:space:]]*$" "$QEMU_CONF"; then
            sed -i -E "s|^[[:space:]]*${key}[[:space:]]*=.*$|${line}|" "$QEMU_CONF"
            conf_changed=1
        fi
    else
        printf '%s\n' "$line" >>"$QEMU_CONF"
        conf_changed=1
    fi
}
[[ -f $QEMU_CONF ]] || : >"$QEMU_CONF"
set_conf user '"root"'
set_conf group '"root"'
set_conf security_driver '"none"'
if [[ $conf_changed -eq 1 ]]; then
    log "updated $QEMU_CONF (user/group root, security_driver none)"
fi

answers() { virsh -c "$URI" version >/dev/null 2>&1; }

# A running libvirtd only reads qemu.conf at start: restart it if the file changed.
if [[ $conf_changed -eq 1 ]] && pidof libvirtd >/dev/null; then
    log "restarting libvirtd to load the new qemu.conf"
    for pid in $(pidof libvirtd); do kill "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 40); do pidof libvirtd >/dev/null || break; sleep 0.25; done
fi

# 4. Daemons.
if pidof virtlogd >/dev/null; then
    log "virtlogd already running"
else
    LIBVIRT_LOG_OUTPUTS="3:file:$LOG_DIR/virtlogd.log" virtlogd -d
    log "started virtlogd"
fi

if answers; then
    log "libvirtd already running and $URI answers"
    exit 0
fi
if pidof libvirtd >/dev/null; then
    log "libvirtd running but $URI not answering yet; waiting"
else
    LIBVIRT_LOG_OUTPUTS="3:file:$LOG_DIR/libvirtd.log" libvirtd -d
    log "started libvirtd (log: $LOG_DIR/libvirtd.log)"
fi

for _ in $(seq 1 80); do # up to ~20 s
    if answers; then
        log "$URI answers"
        exit 0
    fi
    sleep 0.25
done
echo "start-libvirtd.sh: $URI did not answer within 20 s; last lines of $LOG_DIR/libvirtd.log:" >&2
tail -n 20 "$LOG_DIR/libvirtd.log" >&2 2>/dev/null || true
virsh -c "$URI" version >&2 || true
exit 1
