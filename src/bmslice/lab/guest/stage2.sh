# bmslice lab, stage 2: the lab's "init", run by the machine's own /bin/sh on the lab kernel.
# It brings up what a server has (devices, modules, a management network, libvirtd),
# then serves jobs the host drops into /mnt/bmslice-lab/jobs/<id>/ until told to power off.
set -u
SHARE=/mnt/bmslice-lab
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb
say() { echo "bmslice-lab: $*"; }
poweroff_now() {
    sync
    echo o >/proc/sysrq-trigger
    sleep 60
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /dev/hugepages
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run
# /tmp stays the overlay's: a checkout under this machine's /tmp (a CI clone) is seen in the
# lab like any other path, and what the lab writes there lands in its own tmpfs upper layer
mount -t hugetlbfs hugetlbfs /dev/hugepages
mkdir -p /run/lock /var/log
hostname "$(cat $SHARE/hostname 2>/dev/null || echo lab)"

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
ip link set lo up
for dev in /sys/class/net/*; do
    [ "$(basename "$(readlink -f "$dev/device/driver" 2>/dev/null)")" = virtio_net ] || continue
    iface=${dev##*/}
    ip link set "$iface" up
    ip addr add 10.0.2.15/24 dev "$iface"
    ip route add default via 10.0.2.2 dev "$iface"
done
say "network: $(ip -br link | tr -s ' ' | tr '\n' ';')"

start_libvirtd() {
    command -v libvirtd >/dev/null || { say "libvirtd is not installed on this machine"; return 1; }
    mkdir -p /var/log/libvirt
    for group in kvm libvirt-qemu libvirt; do getent group "$group" >/dev/null || groupadd --system "$group"; done
    getent passwd libvirt-qemu >/dev/null ||
        useradd --system --no-create-home --home-dir /var/lib/libvirt --shell /usr/sbin/nologin -g libvirt-qemu libvirt-qemu
    # The lab is a fresh server: nothing of this machine's libvirt state (its domains, pools,
    # volumes, networks) comes along through the shared root. Whole directories are removed
    # and made again, so the overlay makes them opaque: a domain this machine defines later
    # does not show through either.
    for dir in /etc/libvirt/qemu /etc/libvirt/storage /etc/libvirt/nodedev /etc/libvirt/secrets \
        /var/lib/libvirt /var/run/libvirt /var/cache/libvirt; do
        rm -rf "$dir" && mkdir -p "$dir"
    done
    mkdir -p /var/lib/libvirt/images /var/lib/libvirt/qemu
    # The lab has no /dev/kvm: QEMU runs as root, TCG, no security driver.
    printf 'user = "root"\ngroup = "root"\nsecurity_driver = "none"\n' >/etc/libvirt/qemu.conf
    LIBVIRT_LOG_OUTPUTS="3:file:/var/log/libvirt/virtlogd.log" virtlogd -d
    LIBVIRT_LOG_OUTPUTS="3:file:/var/log/libvirt/libvirtd.log" libvirtd -d
    for _ in $(seq 1 120); do
        if virsh -c qemu:///system version >/dev/null 2>&1; then
            # a server's usual image pool, empty
            virsh -q -c qemu:///system pool-define-as default dir --target /var/lib/libvirt/images >/dev/null &&
                virsh -q -c qemu:///system pool-start default >/dev/null &&
                virsh -q -c qemu:///system pool-autostart default >/dev/null
            return 0
        fi
        sleep 0.5
    done
    say "libvirtd did not answer within 60 s"
    return 1
}
if [ -e $SHARE/with-libvirtd ]; then
    start_libvirtd && say "libvirtd answers on qemu:///system"
fi

run_job() {
    job=$1
    seconds=$(cat "$job/timeout" 2>/dev/null || echo 600)
    # The machine's / is mounted with cache=loose: a job asking for it sees files changed since boot.
    [ -e "$job/fresh" ] && { sync; echo 3 >/proc/sys/vm/drop_caches; }
    timeout -k 5 "$seconds" /bin/sh "$job/cmd" >"$job/out" 2>"$job/err" </dev/null
    echo $? >"$job/rc.tmp"
    mv "$job/rc.tmp" "$job/rc"
}

mkdir -p $SHARE/jobs
printf 'kernel %s\nuptime %s\n' "$(uname -r)" "$(cut -d' ' -f1 /proc/uptime)" >$SHARE/ready.tmp
mv $SHARE/ready.tmp $SHARE/ready
say "ready"
while [ ! -e $SHARE/poweroff ]; do
    for go in $SHARE/jobs/*/go; do
        [ -e "$go" ] || continue
        job=${go%/go}
        mv "$go" "$job/taken" && run_job "$job" &
    done
    sleep 0.2
done
say "powering off"
poweroff_now
