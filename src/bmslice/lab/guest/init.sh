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
mount -t tmpfs -o size=50%,mode=0755 tmpfs /rw || fail "cannot mount the overlay's tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot ||
    fail "cannot mount the overlay root"
mkdir -p "/newroot/lib/modules/@KVER@" /newroot/mnt/bmslice-lab
mount --bind "/newroot@MODDIR@" "/newroot/lib/modules/@KVER@" || fail "cannot bind the lab kernel's modules"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 @SHARE_TAG@ /newroot/mnt/bmslice-lab ||
    fail "cannot mount the lab share"
[ -r /newroot/mnt/bmslice-lab/stage2.sh ] || fail "no stage2.sh on the lab share"
umount /proc /sys
umount -l /dev
echo "bmslice-lab: stage 1 done"
exec switch_root /newroot /bin/sh /mnt/bmslice-lab/stage2.sh
