# bmslice lab, stage 2: the lab's "init" when systemd is not PID 1, run by the machine's own
# /bin/sh on the lab kernel. It brings up what a server has (devices, modules, a management
# network, libvirtd), then serves jobs (jobs.sh) until told to power off.
set -u
SHARE=/mnt/bmslice-lab
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb
say() { echo "bmslice-lab: $*"; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /dev/hugepages
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run
# /tmp stays the overlay's: a checkout under this machine's /tmp (a CI clone) is seen in the
# lab like any other path, and what the lab writes there lands in its own upper layer
mount -t hugetlbfs hugetlbfs /dev/hugepages
mkdir -p /run/lock /var/log

# Devices: udev, as on a server, when the machine has it (module autoloading, predictable
# NIC names, rules such as bmslice's VF-count rule); otherwise load modules from the
# devices' modaliases and name NICs the way udev's path policy would.
name_nics() {
    for dev in /sys/class/net/*; do
        iface=${dev##*/}
        [ -e "$dev/device" ] || continue
        pci=$(basename "$(readlink -f "$dev/device")")
        case $pci in virtio*) pci=$(basename "$(dirname "$(readlink -f "$dev/device")")") ;; esac
        bus=$(echo "$pci" | cut -d: -f2)
        slot=$(echo "$pci" | cut -d: -f3 | cut -d. -f1)
        function=${pci##*.}
        new="enp$((0x$bus))s$((0x$slot))"
        [ "$function" = 0 ] || new="${new}f$function"
        [ "$iface" = "$new" ] || ip link set "$iface" name "$new"
    done
}
if [ -x /lib/systemd/systemd-udevd ] && command -v udevadm >/dev/null; then
    /lib/systemd/systemd-udevd --daemon --resolve-names=never
    udevadm trigger --type=subsystems --action=add
    udevadm trigger --type=devices --action=add
    udevadm settle --timeout=120 || say "udevadm settle timed out"
    say "devices: udev"
else
    for alias in /sys/bus/pci/devices/*/modalias /sys/bus/virtio/devices/*/modalias; do
        [ -r "$alias" ] && modprobe -q -b "$(cat "$alias")" 2>/dev/null
    done
    name_nics
    say "devices: no udev on this machine; modules from modaliases, NICs named by PCI path"
fi
for module in vfio-pci; do modprobe -q "$module" || say "modprobe $module failed"; done

. $SHARE/prepare.sh

if [ -e $SHARE/with-libvirtd ]; then
    if command -v libvirtd >/dev/null; then
        LIBVIRT_LOG_OUTPUTS="3:file:/var/log/libvirt/virtlogd.log" virtlogd -d
        LIBVIRT_LOG_OUTPUTS="3:file:/var/log/libvirt/libvirtd.log" libvirtd -d
    else
        say "libvirtd is not installed on this machine"
    fi
fi

exec /bin/sh $SHARE/jobs.sh
