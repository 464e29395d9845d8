# bmslice lab: the job mailbox. The host drops jobs into /mnt/bmslice-lab/jobs/<id>/ (`cmd`,
# `timeout`, last `go`); each runs under `timeout`, writing `out`, `err` and at last `rc`.
# `ready` tells the host the lab serves jobs (after libvirtd answers, when the lab has it);
# `poweroff` ends the loop and powers the lab off: through systemd when it is PID 1.
set -u
SHARE=/mnt/bmslice-lab
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb
say() { echo "bmslice-lab: $*"; }

if [ -e $SHARE/with-libvirtd ]; then
    if timeout 180 sh -c 'until virsh -c qemu:///system version >/dev/null 2>&1; do sleep 0.5; done'; then
        say "libvirtd answers on qemu:///system"
        # a server's usual image pool, empty (defined once: a lab on a disk keeps it)
        virsh -q -c qemu:///system pool-info default >/dev/null 2>&1 ||
            { virsh -q -c qemu:///system pool-define-as default dir --target /var/lib/libvirt/images >/dev/null &&
                virsh -q -c qemu:///system pool-autostart default >/dev/null; }
        virsh -q -c qemu:///system pool-start default >/dev/null 2>&1
    else
        say "libvirtd did not answer within 180 s"
    fi
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
sync
if [ "$(cat /proc/1/comm)" = systemd ]; then
    exec systemctl --no-block poweroff
fi
echo o >/proc/sysrq-trigger
sleep 60
