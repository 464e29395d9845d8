# bmslice lab: what makes this machine's userland a fresh server, run at every boot of the lab
# (by stage2.sh, or as bmslice-lab-prepare.service when systemd is PID 1): a fresh libvirt
# state on the first boot only, the hostname and the management network at every boot.
SHARE=/mnt/bmslice-lab
say() { echo "bmslice-lab: $*"; }
FIRST_BOOT_DONE=/var/lib/bmslice-lab/prepared

hostname "$(cat $SHARE/hostname 2>/dev/null || echo lab)"

if [ -e $SHARE/with-libvirtd ] && [ ! -e $FIRST_BOOT_DONE ] && command -v libvirtd >/dev/null; then
    mkdir -p /var/log/libvirt
    for group in kvm libvirt-qemu libvirt; do getent group "$group" >/dev/null || groupadd --system "$group"; done
    getent passwd libvirt-qemu >/dev/null ||
        useradd --system --no-create-home --home-dir /var/lib/libvirt --shell /usr/sbin/nologin -g libvirt-qemu libvirt-qemu
    # The lab is a fresh server: nothing of this machine's libvirt state (its domains, pools,
    # volumes, networks) comes along through the shared root. Whole directories are removed
    # and made again, so the overlay makes them opaque: a domain this machine defines later
    # does not show through either. A lab on a disk keeps what it defines across its reboots.
    # (/run is the lab's own, empty at each boot: libvirt's sockets may already listen there.)
    for dir in /etc/libvirt/qemu /etc/libvirt/storage /etc/libvirt/nodedev /etc/libvirt/secrets \
        /var/lib/libvirt /var/cache/libvirt; do
        rm -rf "$dir" && mkdir -p "$dir"
    done
    mkdir -p /var/lib/libvirt/images /var/lib/libvirt/qemu
    # The lab has no /dev/kvm: QEMU runs as root, TCG, no security driver.
    printf 'user = "root"\ngroup = "root"\nsecurity_driver = "none"\n' >/etc/libvirt/qemu.conf
    mkdir -p "${FIRST_BOOT_DONE%/*}" && touch $FIRST_BOOT_DONE
fi

# The management NIC (the lab's MAC for it): virtio-net on QEMU's user network, with the
# default route. A switch lab's ports are virtio-net too, and stay unconfigured.
udevadm settle --timeout=60 2>/dev/null
ip link set lo up
for dev in /sys/class/net/*; do
    [ "$(cat "$dev/address" 2>/dev/null)" = 52:54:00:1b:ff:00 ] || continue
    iface=${dev##*/}
    ip link set "$iface" up
    ip addr add 10.0.2.15/24 dev "$iface" 2>/dev/null
    ip route add default via 10.0.2.2 dev "$iface" 2>/dev/null
done
say "network: $(ip -br link | tr -s ' ' | tr '\n' ';')"
