#!/bin/busybox sh
# /init of the dmthin-vm guest (runs from the initramfs, PID 1, busybox sh).
#
# The host hands over everything per run through the writable 9p share
# "dmthinout": job.sh (the command, its cwd and env) and gets back `status`
# and `dmesg.txt`. The run id on the kernel command line (dmthin_vm.id=...)
# makes the exit line on the console unique, so the host can also read the
# status from the console if the share failed.
#
# Guest layout seen by the job (inside `chroot /host`):
#   /                      the host's root, read-only (9p "hostroot")
#   the job's cwd          writable (9p "dmthincwd", the same host folder),
#                          when the host asks for it (cwd-writable)
#   /dev /sys /proc        devtmpfs, sysfs, proc of the guest
#   /run                   tmpfs
#   /run/dmthin-vm/out     the writable share (host folder of this run)
#   /run/dmthin-vm/scratch tmpfs for loop backing files ($DMTHIN_VM_SCRATCH)
#   /run/dmthin-vm/home    $HOME
#   /tmp                   tmpfs, unless the job's cwd is under /tmp
#                          (then TMPDIR points at /run/dmthin-vm/tmp)

/bin/busybox --install -s /bin
export PATH=/bin
umask 022

say() { echo "[vm-init] $*"; }

halt_now() {
  sync
  poweroff -f
  # poweroff should not return; if it does, let the kernel panic and
  # (with panic=-1 and qemu -no-reboot) end qemu.
  exit 1
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

run_id=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    dmthin_vm.id=*) run_id="${arg#dmthin_vm.id=}" ;;
  esac
done

# Modules, in dependency order (computed on the host with modprobe
# --show-depends). Optional ones and CPU-specific helpers may fail.
while read -r mod; do
  [ -n "$mod" ] || continue
  if ! out=$(insmod "/modules/$mod.ko" 2>&1); then
    case "$out" in
      *"File exists"*) ;;
      *) case " $(cat /modules/optional) " in
           *" $mod "*) ;;
           *) say "insmod $mod failed: $out" ;;
         esac ;;
    esac
  fi
done < /modules/order

fail() {
  say "FATAL: $*"
  echo "DMTHIN-VM-EXIT:$run_id:boot-failed"
  halt_now
}

mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro hostroot /host \
  || fail "cannot mount the host root over 9p"
mount -t devtmpfs devtmpfs /host/dev || fail "cannot mount /dev"
mkdir -p /host/dev/shm 2>/dev/null && mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm
mount -t sysfs sysfs /host/sys || fail "cannot mount /sys"
mount -t tmpfs -o mode=755 tmpfs /host/run || fail "cannot mount /run"
V=/host/run/dmthin-vm
mkdir -p $V/out $V/scratch $V/home $V/tmp
chmod 1777 $V/tmp
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 dmthinout $V/out \
  || fail "cannot mount the results share"
[ -f $V/out/job.sh ] || fail "no job.sh on the results share"

# proc must be mounted from inside the chroot: a proc mounted on /host/proc
# from out here is not usable in there.
chroot /host /bin/mount -t proc proc /proc || fail "cannot mount /proc in the chroot"

job_cwd=$(cat $V/out/cwd 2>/dev/null)
case "$job_cwd" in
  /tmp|/tmp/*) ;;
  *) mount -t tmpfs -o mode=1777 tmpfs /host/tmp || fail "cannot mount /tmp" ;;
esac

# The working folder, writable: a share of just that host folder mounted
# over its read-only view, so what the job writes there reaches the host.
if [ -f $V/out/cwd-writable ]; then
  mkdir -p "/host$job_cwd" 2>/dev/null
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose dmthincwd "/host$job_cwd" \
    || fail "cannot mount the working folder $job_cwd writable"
fi

[ -e /dev/mapper/control ] || say "warning: /dev/mapper/control is missing"

echo "DMTHIN-VM-READY:$run_id"
# Through a pipe, so the job's stdout/stderr are not a terminal (no
# interactive progress redraws from jest and the like).
{
  chroot /host /usr/bin/env -i /bin/sh /run/dmthin-vm/out/job.sh </dev/null
  echo $? > /job-status
} 2>&1 | cat
rc=$(cat /job-status 2>/dev/null || echo 255)

dmesg > $V/out/dmesg.txt 2>/dev/null
echo "$rc" > $V/out/status
sync
echo "DMTHIN-VM-EXIT:$run_id:$rc"
halt_now
