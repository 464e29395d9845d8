#!/bin/busybox sh
# bmslice lab, stage 1 (the initramfs): mount the machine's own / read-only over 9p with
# a tmpfs overlay on top, bring the lab kernel's modules and the writable share into it,
# and switch to stage 2 (stage2.sh, on the share). Any failure powers the lab off, so the
# host sees QEMU exit instead of a hang.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() {
    echo "bmslice-lab: stage 1 failed: $*"
    echo o >/proc/sysrq-trigger
    sleep 60
}
for module in @MODULES@; do
    insmod "/modules/$module" || fail "insmod $module"
done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 @ROOT_TAG@ /lower ||
    fail "cannot mount the machine's root over 9p"
# The overlay's upper layer: the lab's root disk when it has one (what it writes survives
# `bmslice lab reboot`), else memory.
disk=
for dev in /sys/bus/virtio/devices/*; do
    [ "$(cat "$dev/device" 2>/dev/null)" = 0x0002 ] && disk=/dev/vda  # virtio's block device
done
if [ -n "$disk" ]; then
    for _ in $(seq 1 100); do [ -b $disk ] && break; sleep 0.1; done
    mount -t ext4 $disk /rw || fail "cannot mount the lab's root disk"
else
    mount -t tmpfs -o size=50%,mode=0755 tmpfs /rw || fail "cannot mount the overlay's tmpfs"
fi
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot ||
    fail "cannot mount the overlay root"
mkdir -p "/newroot/lib/modules/@KVER@" /newroot/mnt/bmslice-lab
mount --bind "/newroot@MODDIR@" "/newroot/lib/modules/@KVER@" || fail "cannot bind the lab kernel's modules"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 @SHARE_TAG@ /newroot/mnt/bmslice-lab ||
    fail "cannot mount the lab share"
SHARE=/newroot/mnt/bmslice-lab
if [ -d $SHARE/systemd ]; then
    # systemd as PID 1: the lab's own units and settings go to a /run of its own (systemd keeps
    # a /run that is mounted already), never into the server's /etc.
    mount -t tmpfs -o mode=0755 tmpfs /newroot/run || fail "cannot mount /run"
    mkdir -p /newroot/run/systemd/system /newroot/run/tmpfiles.d
    cp $SHARE/systemd/* /newroot/run/systemd/system/ || fail "no lab units"
    # tmpfiles would empty /tmp at boot: a checkout under this machine's /tmp must stay visible
    echo 'd /tmp 1777 root root -' >/newroot/run/tmpfiles.d/tmp.conf
    # A machine whose / is a container image carries /.dockerenv: systemd would take itself for
    # a container's init (ignore the kernel command line, skip udev and module loading). The lab
    # is a whole machine: the overlay hides the file (this machine's own copy stays).
    rm -f /newroot/.dockerenv /newroot/run/.containerenv
    init="/lib/systemd/systemd"
else
    [ -r $SHARE/stage2.sh ] || fail "no stage2.sh on the lab share"
    init="/bin/sh /mnt/bmslice-lab/stage2.sh"
fi
umount /proc /sys
umount -l /dev
echo "bmslice-lab: stage 1 done"
exec switch_root /newroot $init
