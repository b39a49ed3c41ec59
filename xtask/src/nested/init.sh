#!/bin/sh
# kvmkit nested lab: the L1 scenario runner (written into the L1 initramfs by `cargo xtask nested`).
# Loads kvm_amd, then runs each scenario named in lab.scenarios= (kernel command line) with a
# timeout of lab.timeout= seconds, and reports on the console:
#   @@LAB <name> START | @@LAB <name> PASS | @@LAB <name> FAIL <reason> | @@LAB DONE
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root KVMKIT_CACHE=/lab/cache
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mkdir -p /root
cd /tmp

arg() { sed -n "s/.*[ ]$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
SCENARIOS=$(arg lab.scenarios | tr , ' ')
T=$(arg lab.timeout)
[ -n "$T" ] || T=45
info() { echo "@@LAB-INFO $*"; }
now() { cut -d' ' -f1 /proc/uptime; }

info "L1 kernel $(uname -r), $(nproc) cpu(s), svm flag: $(grep -q -w svm /proc/cpuinfo && echo yes || echo no)"
for ko in $(cat /lab/modules.order); do
  insmod "/lab/modules/$ko" || info "insmod $ko failed"
done
dmesg | grep -i -E 'kvm|svm' | sed 's/^/@@LAB-INFO dmesg: /'

# bench-linux: the bench rootfs arrives as L1's read-only virtio disk. Mounted, it is the
# tree the host column chroots into; the device itself is the image L2 gets.
if [ -b /dev/vda ] && [ -s /lab/cache/rootfs/manifest.json ]; then
  mkdir -p /lab/cache/rootfs/root
  if mount -t ext4 -o ro,noload /dev/vda /lab/cache/rootfs/root; then
    ln -sf /dev/vda /lab/cache/rootfs/rootfs.ext4
    info "bench rootfs: /dev/vda ($(cat /sys/block/vda/size) sectors) mounted on /lab/cache/rootfs/root"
  else
    info "bench rootfs: mounting /dev/vda failed"
  fi
fi

# Scenario helpers. Each scenario sets $why (first failure wins) or leaves it empty to pass.
why=""
fail() { [ -n "$why" ] || why="$*"; }
# vm OUT CMD...: runs CMD under the timeout, stdin from /dev/null, output (\r stripped) to OUT
# and echoed to the console; sets $rc and $took.
vm() {
  out=$1
  shift
  t0=$(now)
  timeout -s TERM "$T" "$@" </dev/null >"$out.raw" 2>&1
  rc=$?
  settle "$out"
}
settle() {
  tr -d '\r' <"$1.raw" >"$1"
  sed 's/^/  | /' "$1"
  took=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
  info "exit status $rc after ${took}s"
  if awk -v t="$took" -v lim="$T" 'BEGIN { exit !(t >= lim - 1) }'; then
    fail "timed out after ${T}s, VM still running; its last line: $(grep . "$1" | grep -v "^kvmkit: stopped by signal" | tail -n 1)"
  fi
}
expect_rc() { [ "$rc" = "$1" ] || fail "exit status $rc, expected $1"; }
expect_line() { grep -q -- "$2" "$1" || fail "no '$2' in the output"; }
need_linux() {
  kvmkit run --help 2>/dev/null | grep -q -- '--linux' || { fail "kvmkit has no 'run --linux' yet"; return 1; }
  [ -s /lab/cache/linux/manifest.json ] || { fail "no L2 assets in the initramfs (kvmkit image fetch failed on the host?)"; return 1; }
}

sc_kvm_amd() {
  [ -c /dev/kvm ] || { fail "no /dev/kvm in L1 (kvm_amd did not load; see @@LAB-INFO lines)"; return; }
  vm /tmp/check kvmkit check
  expect_line /tmp/check 'vendor module: kvm_amd'
  expect_line /tmp/check 'KVM acceleration can be used'
  expect_rc 0
}
guest() {
  vm /tmp/guest kvmkit run --guest --no-stdin --workload primes:100000 "$@"
  expect_rc 0
  expect_line /tmp/guest 'count=9592'
}
sc_test_guest() { guest; }
sc_test_guest_smp() {
  guest --cpus 2
  for cpu in 0 1; do
    grep -q "count=9592 .*cpu=$cpu" /tmp/guest || fail "cpu $cpu did not report count=9592"
  done
}
sc_linux_cmd() {
  need_linux || return
  want=$(cat /lab/l2-version)
  vm /tmp/l2 kvmkit run --linux -- uname -r
  expect_rc 0
  grep -qx -- "$want" /tmp/l2 || fail "uname -r did not print $want"
}
sc_linux_status() {
  need_linux || return
  vm /tmp/l2 kvmkit run --linux -- sh -c 'exit 7'
  expect_rc 7
}
sc_linux_127() {
  need_linux || return
  vm /tmp/l2 kvmkit run --linux -- no-such-command
  expect_rc 127
}
sc_linux_smp() {
  need_linux || return
  vm /tmp/l2 kvmkit run --linux --cpus 2 -- nproc
  expect_rc 0
  grep -qx 2 /tmp/l2 || fail "nproc did not print 2"
}
# shell [ARGS]: boots to the console shell, waits for the userspace marker, then types a
# command line that prints lab-shell-ok and powers off.
shell() {
  need_linux || return
  # shell.raw too: the job below opens it only once its fifo has a writer, and the
  # previous shell scenario's file says KVMKIT-USERSPACE-READY already.
  rm -f /tmp/in /tmp/shell.rc /tmp/shell.raw
  mkfifo /tmp/in
  t0=$(now)
  (timeout -s TERM "$T" kvmkit run --linux "$@" </tmp/in >/tmp/shell.raw 2>&1; echo $? >/tmp/shell.rc) &
  exec 3>/tmp/in
  n=0
  while ! grep -q KVMKIT-USERSPACE-READY /tmp/shell.raw 2>/dev/null && [ ! -e /tmp/shell.rc ] && [ $n -lt $((T * 5)) ]; do
    sleep 0.2
    n=$((n + 1))
  done
  sleep 0.5
  echo 'echo lab-shell-ok; poweroff -f' >&3
  wait
  exec 3>&-
  rc=$(cat /tmp/shell.rc 2>/dev/null || echo none)
  settle /tmp/shell
  expect_line /tmp/shell KVMKIT-USERSPACE-READY
  expect_line /tmp/shell '^lab-shell-ok'
  expect_rc 0
}
sc_linux_shell() { shell; }
sc_linux_shell_smp() { shell --cpus 2; }
sc_linux_poweroff() {
  need_linux || return
  vm /tmp/l2 kvmkit run --linux -- poweroff -f
  expect_rc 0
}
# once PATTERN TEXT: the guest did TEXT at most once (a VMM that restarts the guest loops).
once() {
  n=$(grep -c -- "$1" /tmp/l2)
  [ "$n" -le 1 ] || fail "the guest $2 $n times (reboot loop)"
}
sc_linux_reboot() {
  need_linux || return
  vm /tmp/l2 kvmkit run --linux -- reboot -f
  once 'reboot: Restarting system' rebooted
  expect_rc 0
}
sc_linux_panic() {
  need_linux || return
  vm /tmp/l2 kvmkit run --linux -- sh -c 'echo c > /proc/sysrq-trigger'
  once 'Kernel panic - not syncing' panicked
  [ "$rc" != 0 ] || fail "exit status 0 after a guest kernel panic, expected non-zero"
}

# linux-timeline: one boot's kernel log with printk times (`dmesg` through the console path, so
# no modules load first; `initcall_debug` on), echoed whole but for the initcall lines, for
# side-by-side comparisons with other VMMs. Reports the i8042 probe's span, the five widest
# gaps between log lines and the twelve slowest initcalls; fails when the i8042 probe waits on
# a timeout ("Keylock active", "Failed to disable AUX port") or binds no KBD port.
sc_linux_timeline() {
  need_linux || return
  vm /tmp/l2 kvmkit run --linux --exec-via console --cmdline initcall_debug -- sh -c "dmesg >/dmesg.txt; grep -v -e 'calling  ' -e 'initcall ' /dmesg.txt; echo lab-slowest-initcalls; sed -n 's/.*initcall \\(.*\\) returned .* after \\([0-9]*\\) usecs/\\2 us \\1/p' /dmesg.txt | sort -rn | head -n 12"
  expect_rc 0
  sed -n '/^lab-slowest-initcalls/,$p' /tmp/l2 | grep ' us ' | sed 's/^/@@LAB-INFO linux-timeline: initcall /'
  grep '^\[ *[0-9]*\.[0-9]*\]' /tmp/l2 >/tmp/l2.log
  at() { grep -m 1 -- "$1" /tmp/l2.log | sed -n 's/^\[ *\([0-9.]*\)\].*/\1/p'; }
  # The i8042 probe: from the log line before its first line to its KBD port line.
  before=$(grep -B 1 -m 1 'i8042' /tmp/l2.log | head -n 1 | sed -n 's/^\[ *\([0-9.]*\)\].*/\1/p')
  kbd=$(at 'serio: i8042 KBD port')
  span=$(awk -v a="$before" -v b="$kbd" 'BEGIN { if (a == "" || b == "") print "?"; else printf "%.1f ms", (b - a) * 1000 }')
  info "linux-timeline: i8042 probe $span (${before:-?} s to ${kbd:-?} s), keyboard bound at $(at 'input: AT') s, /init at $(at 'Run /init') s, last line at $(tail -n 1 /tmp/l2.log | sed -n 's/^\[ *\([0-9.]*\)\].*/\1/p') s"
  awk '{ t = $0; sub(/^\[ */, "", t); sub(/\].*/, "", t); if (NR > 1) printf "%.1f ms before: %s\n", (t - p) * 1000, $0; p = t }' /tmp/l2.log |
    sort -rn | head -n 5 | sed 's/^/@@LAB-INFO linux-timeline: gap /'
  grep 'i8042\|serio\|atkbd\|input:' /tmp/l2.log | sed 's/^/@@LAB-INFO linux-timeline: /'
  expect_line /tmp/l2.log 'serio: i8042 KBD port'
  ! grep -q 'Keylock active' /tmp/l2.log || fail "Linux warned 'Keylock active' (status bit 4 clear)"
  ! grep -q 'Failed to disable AUX port' /tmp/l2.log || fail "Linux's AUX probe timed out ('Failed to disable AUX port')"
}

# The blk-* scenarios: /lab/ext4.img is a 16 MiB ext4 image made on the host (mkfs.ext4 -d)
# holding /hello.txt with the line in /lab/hello.txt. Each scenario uses a fresh copy in /tmp.
need_blk() {
  need_linux || return 1
  kvmkit run --help 2>/dev/null | grep -q -- '--disk' || { fail "kvmkit has no 'run --disk' yet"; return 1; }
  [ -s /lab/ext4.img ] || { fail "no /lab/ext4.img in the initramfs"; return 1; }
  cp /lab/ext4.img "/tmp/$1" || { fail "copying /lab/ext4.img to /tmp/$1 failed"; return 1; }
}
expect_hello() { grep -qxF -- "$(cat /lab/hello.txt)" /tmp/l2 || fail "the guest did not print /hello.txt's line"; }
sc_blk_ext4() {
  need_blk blk.img || return
  vm /tmp/l2 kvmkit run --linux --disk path=/tmp/blk.img -- sh -c 'mkdir -p /mnt && mount -t ext4 /dev/vda /mnt && cat /mnt/hello.txt && echo lab-new-file > /mnt/new && sync && umount /mnt'
  expect_rc 0
  expect_hello
  # After kvmkit exited: the guest's write is in the image file.
  LD_LIBRARY_PATH=/lib/x86_64-linux-gnu debugfs -R 'cat /new' /tmp/blk.img >/tmp/debugfs 2>/tmp/debugfs.err
  info "debugfs exit status $?: $(tr '\n' ' ' </tmp/debugfs.err)"
  sed 's/^/  | debugfs: /' /tmp/debugfs
  grep -qx lab-new-file /tmp/debugfs || fail "debugfs -R 'cat /new' on the image after exit did not print lab-new-file"
}
sc_blk_ro() {
  need_blk ro.img || return
  before=$(sha256sum /tmp/ro.img | cut -d' ' -f1)
  # The refused writes' error messages go to /dev/null: the agent streams stderr apart from
  # stdout, so a shell's error written in pieces may interleave with the marker lines.
  vm /tmp/l2 kvmkit run --linux --disk path=/tmp/ro.img,ro=on -- sh -c 'echo lab-sys-ro=$(cat /sys/block/vda/ro); mkdir -p /mnt; mount -t ext4 -o ro /dev/vda /mnt && cat /mnt/hello.txt; if { echo x >/mnt/x; } 2>/dev/null; then echo lab-write-ok; else echo lab-write-refused; fi; umount /mnt; if mount -t ext4 /dev/vda /mnt 2>/dev/null; then if { echo x >/mnt/y && sync; } 2>/dev/null; then echo lab-rw-write-ok; fi; umount /mnt; fi; echo lab-ro-done'
  expect_rc 0
  expect_line /tmp/l2 '^lab-sys-ro=1$'
  expect_hello
  expect_line /tmp/l2 '^lab-write-refused$'
  ! grep -q '^lab-rw-write-ok$' /tmp/l2 || fail "a write after a plain (rw) mount of the ro=on disk succeeded"
  expect_line /tmp/l2 '^lab-ro-done$'
  after=$(sha256sum /tmp/ro.img | cut -d' ' -f1)
  [ "$before" = "$after" ] || fail "the ro=on image changed: sha256 $before -> $after"
}
sc_blk_two() {
  need_blk two-a.img || return
  dd if=/dev/zero of=/tmp/two-b.img bs=1M count=4 2>/dev/null
  vm /tmp/l2 kvmkit run --linux --disk path=/tmp/two-a.img --disk path=/tmp/two-b.img,id=lab-second -- sh -c 'cat /proc/partitions; echo lab-vdb-serial=$(cat /sys/block/vdb/serial)'
  expect_rc 0
  # /proc/partitions: major minor #blocks(KiB) name
  grep -qE '^ *[0-9]+ +[0-9]+ +16384 +vda$' /tmp/l2 || fail "no 16384 KiB vda in /proc/partitions"
  grep -qE '^ *[0-9]+ +[0-9]+ +4096 +vdb$' /tmp/l2 || fail "no 4096 KiB vdb in /proc/partitions"
  expect_line /tmp/l2 '^lab-vdb-serial=lab-second$'
}

sc_blk_rng() {
  need_linux || return
  vm /tmp/l2 kvmkit run --linux --rng -- sh -c 'echo lab-hwrng=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null); dd if=/dev/hwrng of=/tmp/r bs=256 count=1 2>/dev/null; echo lab-rng-bytes=$(wc -c </tmp/r); echo lab-rng-distinct=$(od -An -v -tx1 /tmp/r | tr " " "\n" | grep . | sort -u | wc -l)'
  expect_rc 0
  expect_line /tmp/l2 '^lab-hwrng=virtio_rng'
  expect_line /tmp/l2 '^lab-rng-bytes=256$'
  d=$(sed -n 's/^lab-rng-distinct=//p' /tmp/l2 | tr -d ' ')
  [ "${d:-0}" -gt 100 ] || fail "256 bytes from /dev/hwrng had only ${d:-0} distinct values"
}

# The net-* scenarios. `--net auto` makes taps kvmkit0, kvmkit1, ... on the first free /30s of
# 10.0.2.0/24 (host .1 guest .2, then host .5 guest .6) and removes them when kvmkit exits.
taps() { ip -o link show 2>/dev/null | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }' | grep '^kvmkit' | tr '\n' ' '; }
no_taps() {
  t=$(taps)
  [ -z "$t" ] || { fail "kvmkit tap(s) left in L1 $1: $t"; return 1; }
}
need_net() {
  need_linux || return 1
  kvmkit run --help 2>/dev/null | grep -q -- '--net' || { fail "kvmkit has no 'run --net' yet"; return 1; }
  [ -c /dev/net/tun ] || { fail "no /dev/net/tun in L1 (tun did not load; see @@LAB-INFO lines)"; return 1; }
  no_taps "before the scenario"
}
# bg OUT CMD...: starts CMD like vm, but in the background (busybox timeout execs CMD, so $bgpid
# is kvmkit itself); finish OUT waits for it and sets $rc and $took; stop_bg ends it early.
bg() {
  out=$1
  shift
  t0=$(now)
  # Emptied here, not only by the redirection below: that one happens in the background
  # job, after this function returns, so a wait_for right after could read the previous
  # scenario's output (net-tcp once saw net-ping's lab-net-up, then an empty file).
  : >"$out.raw"
  timeout -s TERM "$T" "$@" </dev/null >"$out.raw" 2>&1 &
  bgpid=$!
}
running() { kill -0 "$bgpid" 2>/dev/null; }
stop_bg() { ! running || { info "stopping the VM early"; kill -TERM "$bgpid"; }; }
finish() {
  wait "$bgpid"
  rc=$?
  settle "$1"
}
# wait_for OUT PATTERN: 0 once the running VM printed PATTERN; 1 if it ended or $T passed first.
wait_for() {
  n=0
  while ! grep -q -- "$2" "$1.raw" 2>/dev/null; do
    running && [ $n -lt $((T * 5)) ] || { fail "the guest never printed $2 (VM ended or ${T}s passed)"; return 1; }
    sleep 0.2
    n=$((n + 1))
  done
}
# guest_has OUT ADDR: the guest's `ip addr` (in OUT.raw) shows ADDR.
guest_has() {
  grep -q "inet $2/" "$1.raw" ||
    fail "the guest's ip addr shows no $2 (its first NIC should get it from the kernel's ip= argument); its inet lines: $(grep -o 'inet [0-9./]*' "$1.raw" | tr '\n' ' '); its IP-Config/eth0 lines: $(grep -i -e 'ip-config' -e 'eth0' "$1.raw" | head -n 4 | tr '\n' ' ')"
}
# l1_ping ADDR: pings ADDR from L1 (output on the console).
l1_ping() {
  ping -c 3 -W 2 "$1" >/tmp/ping 2>&1
  prc=$?
  sed "s/^/  | L1 ping $1: /" /tmp/ping
  [ $prc = 0 ] || fail "ping -c 3 -W 2 $1 from L1 failed (status $prc)"
}
l1_show_taps() {
  info "kvmkit taps in L1 while the VM runs: $(taps)"
  ip -o -4 addr show 2>/dev/null | grep kvmkit | sed 's/^/  | L1 addr: /'
}
# wait_taps N: waits (up to 10 s, while the VM runs) until L1 shows N kvmkit taps; a check that
# samples once races a busy emulated L1.
wait_taps() {
  n=0
  set -- "$1" $(taps)
  while [ $(($# - 1)) != "$1" ] && running && [ $n -lt 50 ]; do
    sleep 0.2
    n=$((n + 1))
    set -- "$1" $(taps)
  done
  l1_show_taps
  [ $(($# - 1)) = "$1" ] || fail "$(($# - 1)) kvmkit tap(s) in L1 while the VM runs, expected $1"
}
# The guests of the net scenarios stay up until L1 has checked them (a fixed sleep in the guest
# raced an emulated L1 that stalls for seconds): the guest waits in `nc -l -p 9` (bounded by
# kvmkit's --timeout), and release_guest ADDR connects to it; if that fails, the VM is stopped.
GUEST_WAIT='nc -l -p 9 >/dev/null 2>&1; echo lab-released'
release_guest() {
  n=0
  while running && [ $n -lt 5 ]; do
    n=$((n + 1))
    echo bye | timeout 10 nc -w 3 "$1" 9 >/dev/null 2>&1 && return 0
    sleep 1
  done
  running || return 0
  fail "could not release the guest through $1 port 9"
  stop_bg
}
sc_net_ping() {
  need_net || return
  bg /tmp/l2 kvmkit run --linux --net auto -- sh -c "ip addr; echo lab-net-up; $GUEST_WAIT"
  if wait_for /tmp/l2 lab-net-up; then
    wait_taps 1
    guest_has /tmp/l2 10.0.2.2
    l1_ping 10.0.2.2
    release_guest 10.0.2.2
  fi
  finish /tmp/l2
  expect_rc 0
  no_taps "after kvmkit exited" || return
  # The other direction: the guest pings L1's side of its tap.
  vm /tmp/l2b kvmkit run --linux --net auto -- ping -c 3 10.0.2.1
  expect_rc 0
  no_taps "after the second kvmkit exited"
}
sc_net_tcp() {
  need_net || return
  bg /tmp/l2 kvmkit run --linux --net auto -- sh -c 'ip addr; echo lab-net-up; nc -l -p 7 -e cat; echo lab-nc-done'
  if wait_for /tmp/l2 lab-net-up; then
    l1_show_taps
    guest_has /tmp/l2 10.0.2.2
    # The guest's nc may not listen yet: a refused connection is retried.
    n=0
    got=""
    while [ $n -lt 5 ] && running; do
      n=$((n + 1))
      got=$(echo lab-tcp | timeout 10 nc -w 3 10.0.2.2 7 2>/tmp/nc.err)
      [ "$got" = lab-tcp ] && break
      sleep 1
    done
    info "L1 nc 10.0.2.2 7: got '$got' after $n attempt(s) $(tr '\n' ' ' </tmp/nc.err)"
    [ "$got" = lab-tcp ] || { fail "echo lab-tcp | nc -w 3 10.0.2.2 7 from L1 got '$got', not lab-tcp"; stop_bg; }
  fi
  finish /tmp/l2
  expect_rc 0
  expect_line /tmp/l2 '^lab-nc-done'
  no_taps "after kvmkit exited"
}
sc_net_two() {
  need_net || return
  # The guest sets up eth1 from the second kvmkit.net=MAC,GUEST,HOST,PREFIX word (eth0 has ip=)
  # and prints, per NIC, its address and both MACs (the word's and the interface's).
  bg /tmp/l2 kvmkit run --linux --net auto --net auto -- sh -c 'i=0; for w in $(cat /proc/cmdline); do case $w in kvmkit.net=*) set -- $(echo ${w#kvmkit.net=} | tr , " "); echo lab-nic$i=$2 $1 $(cat /sys/class/net/eth$i/address); if [ $i = 1 ]; then ip addr add $2/$4 dev eth1; ip link set eth1 up; fi; i=$((i + 1));; esac; done; ip addr; echo lab-net-up; '"$GUEST_WAIT"
  if wait_for /tmp/l2 lab-net-up; then
    wait_taps 2
    for i in 0 1; do
      set -- $(tr -d '\r' </tmp/l2.raw | sed -n "s/^lab-nic$i=//p")
      if [ $# != 3 ]; then
        fail "the guest printed no lab-nic$i line (kvmkit.net= word $i missing?)"
        continue
      fi
      [ "$2" = "$3" ] || fail "eth$i has MAC $3 but kvmkit.net= word $i says $2 (NICs not in --net order)"
      guest_has /tmp/l2 "$1"
      l1_ping "$1"
    done
    release_guest 10.0.2.2
  fi
  finish /tmp/l2
  expect_rc 0
  no_taps "after kvmkit exited"
}

# api: kvmkit as a Firecracker-style VMM, driven over its API socket with `kvmkit ctl request`
# (L1 has no curl): configure, boot the stock kernel + busybox initramfs, pause, resume, then
# Ctrl-Alt-Del, which must reboot the guest and so (reboot=k) end the VMM with status 0. The
# i8042 keyboard carries it; /init is a shell, which leaves kernel.ctrl-alt-del at the kernel's
# default 1 (restart at once; an init that sets it to 0 gets SIGINT instead).
# The guest prints lab-api-up, then lab-tick=N every second, and after the first tick its
# keyboard's boot lines from dmesg (lab-kbd: ...).
API_SOCK=/tmp/api.sock
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
# ctl WHAT ARGS...: `kvmkit ctl ARGS`, its output in /tmp/ctl.out and on the console; a
# non-zero status fails the scenario (WHAT says which step).
ctl() {
  what=$1
  shift
  kvmkit ctl --api-sock "$API_SOCK" "$@" >/tmp/ctl.out 2>&1
  crc=$?
  sed "s/^/  | ctl $what: /" /tmp/ctl.out
  [ $crc = 0 ] || { fail "$what: kvmkit ctl $1 ... exited $crc: $(tr '\n' ' ' </tmp/ctl.out)"; return 1; }
}
# ctl_state STATE: `ctl info` says the VM is STATE.
ctl_state() {
  ctl info info || return 1
  grep -q "\"state\": \"$1\"" /tmp/ctl.out || { fail "ctl info does not say $1: $(tr '\n' ' ' </tmp/ctl.out)"; return 1; }
}
# api_tick: the guest's last lab-tick number (-1 before the first).
api_tick() {
  t=$(tr -d '\r' </tmp/api.raw | sed -n 's/^lab-tick=\([0-9][0-9]*\)$/\1/p' | tail -n 1)
  echo "${t:--1}"
}
api_steps() {
  n=0
  while [ ! -S "$API_SOCK" ]; do
    running && [ $n -lt 100 ] || { fail "no API socket $API_SOCK (the VMM ended or 10 s passed)"; return 1; }
    sleep 0.1
    n=$((n + 1))
  done
  ctl_state "Not started" || return 1
  ctl machine-config request PUT /machine-config '{"vcpu_count": 1, "mem_size_mib": 256}' || return 1
  ctl boot-source request PUT /boot-source "{\"kernel_image_path\": \"/lab/cache/linux/vmlinux\", \"initrd_path\": \"/lab/cache/linux/initramfs.cpio\", \"boot_args\": \"$1\"}" || return 1
  ctl machine-config request GET /machine-config || return 1
  grep -q '"vcpu_count":1,"mem_size_mib":256' /tmp/ctl.out || { fail "GET /machine-config is not 1 vCPU, 256 MiB"; return 1; }
  t_start=$(now)
  ctl InstanceStart request PUT /actions '{"action_type": "InstanceStart"}' || return 1
  wait_for /tmp/api '^lab-api-up' || return 1
  info "api: InstanceStart to the guest's lab-api-up in $(since "$t_start") s"
  ctl_state Running || return 1
  n=0
  while [ "$(api_tick)" -lt 1 ]; do
    running && [ $n -lt 100 ] || { fail "the guest printed no lab-tick=1 within 20 s"; return 1; }
    sleep 0.2
    n=$((n + 1))
  done
  ctl pause pause || return 1
  ctl_state Paused || return 1
  # A line written just before the pause may still be on its way to the file.
  sleep 0.5
  a=$(api_tick)
  sleep 3
  b=$(api_tick)
  info "api: paused at lab-tick=$a; 3 s later lab-tick=$b"
  [ "$a" = "$b" ] || { fail "the guest ran while paused (lab-tick=$a, 3 s later $b)"; return 1; }
  ctl resume resume || return 1
  ctl_state Running || return 1
  t_resume=$(now)
  n=0
  while [ "$(api_tick)" -le "$b" ]; do
    running && [ $n -lt 100 ] || { fail "no lab-tick after lab-tick=$b within 20 s of resuming"; return 1; }
    sleep 0.2
    n=$((n + 1))
  done
  info "api: resumed; lab-tick=$(api_tick) $(since "$t_resume") s later"
  t_cad=$(now)
  ctl ctrl-alt-del ctrl-alt-del || return 1
  n=0
  while running; do
    [ $n -lt 150 ] || { fail "the VMM still runs 30 s after ctl ctrl-alt-del"; return 1; }
    sleep 0.2
    n=$((n + 1))
  done
  info "api: the VMM exited $(since "$t_cad") s after ctl ctrl-alt-del"
}
sc_api() {
  need_linux || return
  kvmkit ctl --help 2>/dev/null | grep -q request || { fail "kvmkit has no 'ctl request' yet"; return; }
  rm -f "$API_SOCK"
  cmd='echo lab-api-up; i=0; while :; do echo lab-tick=$i; [ $i = 1 ] && dmesg | grep -i -E "i8042|serio|atkbd|keyboard|input:" | sed "s/^/lab-kbd: /"; i=$((i + 1)); sleep 1; done'
  args="console=ttyS0 reboot=k panic=-1 pci=off quiet kvmkit.cmd=b64:$(printf '%s' "$cmd" | base64 | tr -d '\n')"
  # Boot, pause and resume, and the reboot take longer than one command under the timeout.
  T0=$T
  T=$((T * 2))
  bg /tmp/api kvmkit run --api-sock "$API_SOCK"
  if ! api_steps "$args" && running; then
    info "stopping the VMM early"
    kvmkit ctl --api-sock "$API_SOCK" stop >/dev/null 2>&1
    sleep 2
    stop_bg
  fi
  finish /tmp/api
  T=$T0
  expect_rc 0
  expect_line /tmp/api '^lab-kbd: .*input: AT .* keyboard'
  expect_line /tmp/api 'reboot: Restarting system'
  n=$(grep -c 'reboot: Restarting system' /tmp/api)
  [ "$n" -le 1 ] || fail "the guest rebooted $n times (reboot loop)"
  [ ! -e "$API_SOCK" ] || fail "the API socket is left after the VMM exited"
}

# bench-linux: the whole `kvmkit bench --guest linux` in the quick profile, all three columns:
# host (chroot), kvmkit and QEMU (stock Debian L2 guests). Prints its progress every 30 s so
# the lab does not take the long run for a hang.
sc_bench_linux() {
  need_linux || return
  [ -L /lab/cache/rootfs/rootfs.ext4 ] || { fail "no bench rootfs in L1 (kvmkit image rootfs failed on the host?)"; return; }
  BT=$(arg lab.bench_timeout)
  [ -n "$BT" ] || BT=1500
  rm -rf /tmp/bench-out /tmp/bench.rc
  t0=$(now)
  (timeout -s TERM "$BT" kvmkit bench --guest linux --profile quick --runs 1 --out /tmp/bench-out \
    </dev/null >/tmp/bench.raw 2>&1; echo $? >/tmp/bench.rc) &
  while [ ! -e /tmp/bench.rc ]; do
    sleep 30
    info "bench-linux: $(tr '\r' '\n' </tmp/bench.raw | grep -v '^$' | tail -n 1 | cut -c1-150)"
  done
  wait
  rc=$(cat /tmp/bench.rc)
  T0=$T
  T=$BT
  settle /tmp/bench
  T=$T0
  # A failed run makes the exit status 1: say which run and why (results.json keeps it) first.
  if grep -q '"failures": \[$' /tmp/bench-out/results.json 2>/dev/null; then
    fail "results.json records failed runs: $(grep -A 1 '"failures": \[$' /tmp/bench-out/results.json | grep -v -e '"failures"' -e '^--$' | head -n 3 | tr -s ' \n' ' ' | cut -c1-600)"
  fi
  expect_rc 0
  for f in results.json report.md ratios.svg; do
    [ -s "/tmp/bench-out/$f" ] || fail "no $f in the output directory"
  done
  # Every Linux workload is in results.json and no column was dropped (failed runs: above).
  for w in py-primes:100000 memtester:4 dd-read:1 dd-write:1 povray:160 openssl:1 7z:1 postmark:500; do
    grep -q "\"$w\"" /tmp/bench-out/results.json || fail "results.json has no $w"
  done
  grep -q '"available": false' /tmp/bench-out/results.json && fail "an environment was not available"
  expect_line /tmp/bench '^Table 4'
  expect_line /tmp/bench 'POV-Ray 3.7'
  info "bench-linux: $(grep -c '"value"' /tmp/bench-out/results.json) samples; timings are emulated (TCG), not speed"
}

# The vsock-* scenarios: kvmkit's guest agent (appended to the L2 initramfs by kvmkit run) runs
# commands over virtio-vsock; the stock kernel's vsock modules are loaded by the L2 /init.
need_vsock() {
  need_linux || return 1
  kvmkit run --help 2>/dev/null | grep -q -- '--exec-via' || { fail "kvmkit has no 'run --exec-via' yet"; return 1; }
  kvmkit exec --help >/dev/null 2>&1 || { fail "kvmkit has no 'exec' yet"; return 1; }
}
# agent_vm NAME: starts `kvmkit run --linux --api-sock /tmp/NAME.sock` (console shell, the agent in
# the background) under $1's timeout; then xexec runs `kvmkit exec` into it.
XSOCK=/tmp/xapi.sock
agent_vm() {
  rm -f "$XSOCK"
  bg "/tmp/$1" kvmkit run --linux --no-stdin --api-sock "$XSOCK"
  n=0
  while [ ! -S "$XSOCK" ]; do
    running && [ $n -lt 100 ] || { fail "no API socket $XSOCK (the VMM ended or 10 s passed)"; return 1; }
    sleep 0.1
    n=$((n + 1))
  done
  # The first exec waits (retrying CONNECT) until the guest has booted and the agent listens.
  t_boot=$(now)
  kvmkit exec --api-sock "$XSOCK" --timeout 60 -- true >/tmp/xfirst 2>&1
  xrc=$?
  sed 's/^/  | first exec: /' /tmp/xfirst
  [ $xrc = 0 ] || { fail "the first kvmkit exec (waiting for the agent) exited $xrc: $(tr '\n' ' ' </tmp/xfirst)"; return 1; }
  info "$1: the agent answered $(since "$t_boot") s after the API socket appeared"
}
# stop_agent_vm NAME: stops the VM through the API and collects it.
stop_agent_vm() {
  if running; then
    kvmkit ctl --api-sock "$XSOCK" stop >/dev/null 2>&1
    n=0
    while running && [ $n -lt 50 ]; do sleep 0.2; n=$((n + 1)); done
    stop_bg
  fi
  finish "/tmp/$1"
  [ ! -e "$XSOCK" ] || fail "the API socket is left after the VMM exited"
  ls -d /tmp/kvmkit-agent-* >/dev/null 2>&1 && fail "kvmkit's private vsock directory is left: $(ls -d /tmp/kvmkit-agent-*)"
}
sc_vsock_exec() {
  need_vsock || return
  want=$(cat /lab/l2-version)
  t0=$(now)
  timeout -s TERM "$T" kvmkit run --linux -- sh -c 'uname -r; echo lab-vsock-mods=$(grep -c vsock /proc/modules); echo lab-err >&2; exit 7' \
    </dev/null >/tmp/l2.raw 2>/tmp/l2.err
  rc=$?
  sed 's/^/  | stderr: /' /tmp/l2.err
  settle /tmp/l2
  expect_rc 7
  grep -qx -- "$want" /tmp/l2 || fail "uname -r did not print $want on stdout"
  # vsock, vmw_vsock_virtio_transport_common, vmw_vsock_virtio_transport (and vsock_loopback if built in: not counted)
  m=$(sed -n 's/^lab-vsock-mods=//p' /tmp/l2)
  [ "${m:-0}" -ge 3 ] || fail "the guest has ${m:-0} vsock modules loaded, expected 3"
  grep -qx lab-err /tmp/l2.err || fail "the command's stderr (lab-err) is not on kvmkit's stderr"
  ! grep -q lab-err /tmp/l2 || fail "the command's stderr came out on stdout"
  ls -d /tmp/kvmkit-agent-* >/dev/null 2>&1 && fail "kvmkit's private vsock directory is left: $(ls -d /tmp/kvmkit-agent-*)"
  # Exit status 0 and a command that does not exist, over the same path.
  vm /tmp/l2b kvmkit run --linux -- no-such-command
  expect_rc 127
}
sc_vsock_exec_api() {
  need_vsock || return
  T0=$T
  T=$((T * 2))
  if agent_vm xapi; then
    kvmkit exec --api-sock "$XSOCK" -- sh -c 'echo lab-exec-$((6 * 7)); echo lab-exec-err >&2; exit 5' >/tmp/x1 2>/tmp/x1.err
    xrc=$?
    sed 's/^/  | exec: /' /tmp/x1 /tmp/x1.err
    [ $xrc = 5 ] || fail "kvmkit exec of 'exit 5' exited $xrc"
    grep -qx lab-exec-42 /tmp/x1 || fail "kvmkit exec's stdout has no lab-exec-42"
    grep -qx lab-exec-err /tmp/x1.err || fail "kvmkit exec's stderr has no lab-exec-err"
    echo lab-stdin | kvmkit exec --api-sock "$XSOCK" -i -e LAB_X=lab-env --cwd /proc -- sh -c 'read l; echo "$l $LAB_X $(pwd)"' >/tmp/x2 2>&1
    xrc=$?
    sed 's/^/  | exec -i: /' /tmp/x2
    [ $xrc = 0 ] && grep -qx 'lab-stdin lab-env /proc' /tmp/x2 || fail "exec -i -e --cwd: status $xrc, output $(tr '\n' ' ' </tmp/x2)"
    kvmkit exec --api-sock "$XSOCK" -- sh -c 'kill -9 $$' >/dev/null 2>&1
    xrc=$?
    [ $xrc = 137 ] || fail "a command killed by SIGKILL: exec exited $xrc, expected 137"
  fi
  stop_agent_vm xapi
  T=$T0
}
sc_vsock_many() {
  need_vsock || return
  N=$(arg lab.vsock_many)
  [ -n "$N" ] || N=100
  T0=$T
  T=$((T * 4))
  if agent_vm xmany; then
    rm -rf /tmp/many
    mkdir -p /tmp/many
    t1=$(now)
    pids=""
    i=0
    # N connections open at once: each command sleeps 2 s before it answers.
    while [ $i -lt "$N" ]; do
      kvmkit exec --api-sock "$XSOCK" --timeout 60 -- sh -c "sleep 2; echo lab-many-$i" >/tmp/many/$i 2>&1 &
      pids="$pids $!"
      i=$((i + 1))
    done
    # Progress lines while they run (the lab takes a silent L1 for a hung one).
    (while sleep 15; do info "vsock-many: $(grep -l lab-many /tmp/many/* 2>/dev/null | wc -l) of $N answered"; done) &
    prog=$!
    bad=0
    for p in $pids; do wait "$p" || bad=$((bad + 1)); done
    kill $prog 2>/dev/null
    ok=0
    i=0
    while [ $i -lt "$N" ]; do
      grep -qx "lab-many-$i" /tmp/many/$i && ok=$((ok + 1))
      i=$((i + 1))
    done
    info "vsock-many: $ok of $N concurrent execs answered correctly in $(since "$t1") s ($bad non-zero statuses)"
    [ "$ok" = "$N" ] && [ $bad = 0 ] ||
      fail "$ok of $N concurrent kvmkit execs got their own answer, $bad exited non-zero; first bad: $(for f in /tmp/many/*; do grep -q lab-many "$f" || { tr '\n' ' ' <"$f"; break; }; done)"
  fi
  stop_agent_vm xmany
  T=$T0
}
# vsock-big: MiB (lab.vsock_big_mib=, default 1024) of random bytes each way through the agent,
# sha256 computed on both ends: host->guest (exec -i ... sha256sum) and guest->host (the guest
# tees its stream into sha256sum on stderr). Progress lines keep the lab from taking it for a hang.
sc_vsock_big() {
  need_vsock || return
  MIB=$(arg lab.vsock_big_mib)
  [ -n "$MIB" ] || MIB=64
  DIRS=$(arg lab.vsock_big_dirs)
  [ -n "$DIRS" ] || DIRS=both
  BT=$(arg lab.vsock_big_timeout)
  [ -n "$BT" ] || BT=$((120 + 4 * MIB))
  T0=$T
  T=$BT
  if agent_vm xbig; then
    rm -f /tmp/big.fifo /tmp/big.*
    # What the ends cost without vsock: 16 MiB generated and hashed in L1, and in the guest.
    t1=$(now)
    head -c 16777216 /dev/urandom | sha256sum >/dev/null
    l1=$(since "$t1")
    t1=$(now)
    kvmkit exec --api-sock "$XSOCK" -- sh -c 'head -c 16777216 /dev/urandom | sha256sum >/dev/null'
    info "vsock-big: without vsock, 16 MiB urandom | sha256sum takes $l1 s in L1 and $(since "$t1") s in the guest (exec included)"
    mkfifo /tmp/big.fifo
  fi
  if [ -z "$why" ] && [ "$DIRS" != to-host ]; then
    # host -> guest
    t1=$(now)
    (sha256sum </tmp/big.fifo | cut -d' ' -f1 >/tmp/big.host-sum) &
    sumpid=$!
    (head -c $((MIB * 1048576)) /dev/urandom | tee /tmp/big.fifo | kvmkit exec --api-sock "$XSOCK" -i -- sha256sum >/tmp/big.guest-out 2>&1; echo $? >/tmp/big.rc1) &
    while [ ! -e /tmp/big.rc1 ]; do sleep 10; info "vsock-big: host->guest running for $(since "$t1") s"; done
    wait $sumpid
    up=$(since "$t1")
    hs=$(cat /tmp/big.host-sum)
    gs=$(cut -d' ' -f1 </tmp/big.guest-out)
    info "vsock-big: host->guest $MIB MiB in $up s; L1 sha256 $hs, guest sha256 $gs, exec status $(cat /tmp/big.rc1)"
    [ "$(cat /tmp/big.rc1)" = 0 ] && [ -n "$hs" ] && [ "$hs" = "$gs" ] || fail "host->guest $MIB MiB: sha256 L1 '$hs' guest '$gs' (exec status $(cat /tmp/big.rc1))"
  fi
  if [ -z "$why" ] && [ "$DIRS" != to-guest ]; then
    # guest -> host
    t2=$(now)
    (kvmkit exec --api-sock "$XSOCK" -- sh -c "mkfifo /tmp/f; sha256sum </tmp/f >&2 & head -c $((MIB * 1048576)) /dev/urandom | tee /tmp/f; wait" 2>/tmp/big.guest-sum | sha256sum | cut -d' ' -f1 >/tmp/big.host-sum2; echo done >/tmp/big.rc2) &
    while [ ! -e /tmp/big.rc2 ]; do sleep 10; info "vsock-big: guest->host running for $(since "$t2") s"; done
    down=$(since "$t2")
    hs=$(cat /tmp/big.host-sum2)
    gs=$(cut -d' ' -f1 </tmp/big.guest-sum)
    info "vsock-big: guest->host $MIB MiB in $down s; guest sha256 $gs, L1 sha256 $hs"
    [ -n "$hs" ] && [ "$hs" = "$gs" ] || fail "guest->host $MIB MiB: sha256 guest '$gs' L1 '$hs'"
  fi
  stop_agent_vm xbig
  T=$T0
}

# snapshot-linux: a stock Debian guest booted to its console shell (`run --linux --exec-via
# console --api-sock`, no vsock device) writes a random line into a
# tmpfs file; `ctl pause` + `ctl snapshot`; the VMM is SIGKILLed; a new process restores the
# snapshot (`run --restore-state F --restore-mem M --api-sock S2`), `ctl resume`, and a command
# typed into the restored console prints the file. Also reports what Linux's vmgenid driver
# did with the generation change kvmkit signals at restore (dmesg "virtual machine fork"; the
# cloud kernel has no vmgenid driver: snapshot-vmgenid boots Debian's generic kernel for that).
SNAP1=/tmp/snap1.sock
SNAP2=/tmp/snap2.sock
# snap_ctl SOCK WHAT ARGS...: `kvmkit ctl --api-sock SOCK ARGS`, output on the console.
snap_ctl() {
  s=$1
  what=$2
  shift 2
  kvmkit ctl --api-sock "$s" "$@" >/tmp/ctl.out 2>&1
  crc=$?
  sed "s/^/  | ctl $what: /" /tmp/ctl.out
  [ $crc = 0 ] || { fail "$what: kvmkit ctl $1 ... exited $crc: $(tr '\n' ' ' </tmp/ctl.out)"; return 1; }
}
wait_sock() {
  n=0
  while [ ! -S "$1" ]; do
    running && [ $n -lt 100 ] || { fail "no API socket $1 (the VMM ended or 10 s passed)"; return 1; }
    sleep 0.1
    n=$((n + 1))
  done
}
snap_before() {
  wait_sock "$SNAP1" || return 1
  wait_for /tmp/snap1 KVMKIT-USERSPACE-READY || return 1
  sleep 0.5
  # $((6 * 7)) tells the command's output (42) from the console's echo of the typed line.
  echo "echo $SECRET >/tmp/lab-state; echo lab-written-\$((6 * 7)) \$(cat /tmp/lab-state)" >&3
  echo 'echo lab-vmgenid-$((6 * 7)) driver: $(ls -d /sys/bus/*/drivers/vmgenid 2>/dev/null) devices: $(ls /sys/bus/acpi/devices 2>/dev/null | grep -i -e VMGENCTR -e ACPI0013 | tr "\n" " ")' >&3
  wait_for /tmp/snap1 "^lab-written-42 $SECRET" || return 1
  wait_for /tmp/snap1 '^lab-vmgenid-42' || return 1
  if [ -n "$SNAPV" ]; then
    # snapshot-vsock: the agent answers, and one exec is left open across the snapshot.
    kvmkit exec --api-sock "$SNAP1" --timeout 60 -- sh -c 'echo lab-vsock-before-$((6 * 7))' >/tmp/snapx1 2>&1
    xrc=$?
    sed 's/^/  | exec before the snapshot: /' /tmp/snapx1
    [ $xrc = 0 ] && grep -qx lab-vsock-before-42 /tmp/snapx1 || { fail "kvmkit exec before the snapshot exited $xrc"; return 1; }
    kvmkit exec --api-sock "$SNAP1" -- sh -c 'echo lab-vsock-open; sleep 600' >/tmp/snapx2.raw 2>&1 &
    xpid=$!
    wait_for /tmp/snapx2 '^lab-vsock-open' || return 1
  fi
  snap_ctl "$SNAP1" pause pause || return 1
  t1=$(now)
  snap_ctl "$SNAP1" snapshot snapshot --state /tmp/snap.state --mem /tmp/snap.mem || return 1
  info "snapshot-linux: ctl snapshot took $(since "$t1") s; state $(wc -c </tmp/snap.state) bytes, memory file $(ls -l /tmp/snap.mem | awk '{print $5}') bytes apparent, $(du -k /tmp/snap.mem | cut -f1) KiB used"
  if [ -n "$SNAPV" ]; then
    n=0
    while kill -0 "$xpid" 2>/dev/null && [ $n -lt 50 ]; do sleep 0.2; n=$((n + 1)); done
    if kill -0 "$xpid" 2>/dev/null; then
      kill "$xpid"
      fail "the exec open at snapshot time was not closed by the snapshot"
      return 1
    fi
    wait "$xpid"
    info "snapshot-vsock: the exec open at snapshot time ended with status $? when the snapshot closed its connection"
  fi
}
snap_after() {
  wait_sock "$SNAP2" || return 1
  snap_ctl "$SNAP2" info info || return 1
  grep -q '"state": "Paused"' /tmp/ctl.out || { fail "the restored VM is not Paused before ctl resume"; return 1; }
  snap_ctl "$SNAP2" resume resume || return 1
  info "snapshot-linux: restore process start to resumed in $(since "$t2") s"
  sleep 1
  echo 'echo lab-restored-$((6 * 7)) $(cat /tmp/lab-state); dmesg | grep -i -e "virtual machine fork" -e vmgenid -e VMGENCTR | sed "s/^/lab-dmesg: /"; echo lab-dmesg-done-$((6 * 7))' >&4
  wait_for /tmp/snap2 '^lab-dmesg-done-42' || return 1
  info "snapshot-linux: restore process start to the restored guest's answer in $(since "$t2") s"
  if [ -n "$SNAPV" ]; then
    # The agent's listening socket survived the transport reset; a new connection reaches it.
    t3=$(now)
    kvmkit exec --api-sock "$SNAP2" --timeout 60 -- sh -c 'echo lab-vsock-restored-$((6 * 7)) $(cat /tmp/lab-state)' >/tmp/snapx3 2>&1
    xrc=$?
    sed 's/^/  | exec after the restore: /' /tmp/snapx3
    [ $xrc = 0 ] && grep -qx "lab-vsock-restored-42 $SECRET" /tmp/snapx3 || { fail "kvmkit exec into the restored VM exited $xrc"; return 1; }
    info "snapshot-vsock: kvmkit exec into the restored guest answered in $(since "$t3") s"
  fi
  echo 'poweroff -f' >&4
}
sc_snapshot_linux() { snapshot_linux kvmkit run --linux --exec-via console --api-sock "$SNAP1"; }
# snapshot-vsock: the same with the guest agent on a vsock device (`run --linux --api-sock --vsock`):
# `kvmkit exec` works before the snapshot, an exec left open is closed by it, and after the
# restore (over the killed VMM's stale socket) `kvmkit exec` reaches the agent again.
SNAPV=""
sc_snapshot_vsock() {
  need_vsock || return
  SNAPV=/tmp/snapv.sock
  rm -f "$SNAPV"
  snapshot_linux kvmkit run --linux --api-sock "$SNAP1" --vsock "cid=3,uds=$SNAPV"
  SNAPV=""
  # The SIGKILLed first VMM leaves its private directory (initramfs); the restored one had none.
  rm -rf /tmp/kvmkit-agent-*
  rm -f /tmp/snapv.sock
}
# snapshot-vmgenid: the same with Debian's generic kernel (CONFIG_VMGENID=y) and the L2
# initramfs (its cloud-kernel modules do not load there; the console shell needs none). Passes
# only if Linux's vmgenid driver reacted to the restore.
sc_snapshot_vmgenid() {
  [ -s /lab/generic-bzImage ] || { fail "no /lab/generic-bzImage in the initramfs"; return; }
  snapshot_linux kvmkit run --kernel /lab/generic-bzImage --initrd /lab/cache/linux/initramfs.cpio \
    --cmdline "console=ttyS0 reboot=k panic=-1 pci=off quiet" --api-sock "$SNAP1"
  [ -n "$why" ] || grep -q '^lab-dmesg: .*virtual machine fork' /tmp/snap2 ||
    fail "no 'crng reseeded due to virtual machine fork' in the restored guest's dmesg"
}
# snapshot_linux CMD...: CMD boots the first VM (console shell, API socket $SNAP1).
snapshot_linux() {
  need_linux || return
  kvmkit ctl --help 2>/dev/null | grep -q snapshot || { fail "kvmkit has no 'ctl snapshot' yet"; return; }
  # The .raw files too: the jobs below open them only once their fifos have a writer, and
  # the previous snapshot scenario's would match the waits at once.
  rm -f /tmp/snap.state /tmp/snap.mem /tmp/snapin1 /tmp/snapin2 "$SNAP1" "$SNAP2" \
    /tmp/snap1.raw /tmp/snap2.raw /tmp/snapx2.raw
  mkfifo /tmp/snapin1 /tmp/snapin2
  SECRET=lab-secret-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
  t0=$(now)
  timeout -s TERM "$T" "$@" </tmp/snapin1 >/tmp/snap1.raw 2>&1 &
  bgpid=$!
  exec 3>/tmp/snapin1
  snap_before
  ok1=$?
  # Kill the original VMM (no clean exit: the restore must not need one).
  kill -KILL "$bgpid" 2>/dev/null
  wait "$bgpid"
  rc=$?
  exec 3>&-
  settle /tmp/snap1
  why1=$why
  [ $ok1 = 0 ] || return
  why=""
  info "snapshot-linux: original VMM killed (status $rc); restoring in a new process"
  t0=$(now)
  t2=$t0
  timeout -s TERM "$T" kvmkit run --restore-state /tmp/snap.state --restore-mem /tmp/snap.mem --api-sock "$SNAP2" </tmp/snapin2 >/tmp/snap2.raw 2>&1 &
  bgpid=$!
  exec 4>/tmp/snapin2
  if ! snap_after; then
    stop_bg
  fi
  wait "$bgpid"
  rc=$?
  exec 4>&-
  settle /tmp/snap2
  expect_line /tmp/snap2 "^lab-restored-42 $SECRET\$"
  expect_rc 0
  [ ! -e "$SNAP2" ] || fail "the restored VMM left its API socket"
  info "snapshot-linux: vmgenid before the snapshot: $(grep '^lab-vmgenid-42' /tmp/snap1 | head -n 1)"
  if grep -q '^lab-dmesg: .*virtual machine fork' /tmp/snap2; then
    info "snapshot-linux: the guest's vmgenid driver saw the new generation: $(grep '^lab-dmesg: .*virtual machine fork' /tmp/snap2 | head -n 1)"
  else
    info "snapshot-linux: no 'virtual machine fork' line in the restored guest's dmesg"
  fi
  [ -z "$why1" ] || fail "$why1"
}

# jail-cgroup2: `kvmkit jail --cgroup-version 2` with memory.max on a cgroup2 hierarchy that has
# the memory controller (the lab host's memory controller is bound to cgroup v1, so only L1 can
# show v2's memory.max at work). L1 mounts cgroup2 on /sys/fs/cgroup and leaves the controllers
# off: enabling +memory down to the VM's cgroup is the jailer's job. L1's / is the initramfs
# (rootfs), which pivot_root(2) cannot leave (EINVAL: it has no parent mount); the jailer runs
# chrooted into a bind mount of / in a private mount namespace, as it would on a host with a
# real root file system (a jailer run straight from rootfs must fail saying so). Three jailed
# VMs, one 64 MiB memory.max: a ticking guest whose process, threads, root and cgroup are
# checked while it runs; memtest:16, which passes under the limit; memtest:128 (the guest
# touches 128 MiB), which the limit's OOM kill ends.
JCG=/sys/fs/cgroup
JBASE=/srv/jailer
JROOT=/lab-jroot
JUID=1000
JLIMIT=67108864
# jail_vm ID WORKLOAD: starts a jailed kvmkit guest in the background (bg: $bgpid, which becomes
# the VMM: timeout, unshare, sh and chroot all exec).
jail_vm() {
  mkdir -p "$JROOT"
  bg "/tmp/$1" unshare -m sh -c 'mount --rbind / "$0" && exec chroot "$0" "$@"' "$JROOT" \
    kvmkit jail --id "$1" --exec-file /bin/kvmkit --uid $JUID --gid $JUID --chroot-base-dir "$JBASE" \
    --cgroup-version 2 --cgroup "memory.max=$JLIMIT" -- run --guest --no-stdin --workload "$2"
}
# jail_done ID: removes the VM's cgroup and jail once it has ended (both are the caller's, as
# with Firecracker's jailer).
jail_done() {
  rmdir "$JCG/kvmkit/$1" 2>/dev/null || info "jail-cgroup2: could not remove cgroup $JCG/kvmkit/$1"
  rm -rf "${JBASE:?}/kvmkit/$1"
}
# stfield FILE KEY: the value of KEY: in a /proc status file, fields joined by one space.
stfield() { awk -v k="$2:" '$1 == k { $1 = ""; sub(/^ +/, ""); print; exit }' "$1" 2>/dev/null; }
memev() { awk -v k="$2" '$1 == k { print $2 }' "$JCG/kvmkit/$1/memory.events" 2>/dev/null; }
# jail_problems PID ID: what is not (yet) as it must be for the running jailed VM PID; empty
# when all is.
jail_problems() {
  [ -d "/proc/$1" ] || { echo "the VM process $1 is gone"; return; }
  cg="$JCG/kvmkit/$2"
  p=""
  n=0
  for t in /proc/$1/task/*; do
    n=$((n + 1))
    s=$t/status
    for k in Uid Gid; do
      v=$(stfield "$s" $k)
      [ "$v" = "$JUID $JUID $JUID $JUID" ] || p="$p task ${t##*/} $k '$v';"
    done
    for k in CapInh CapPrm CapEff CapBnd CapAmb; do
      v=$(stfield "$s" $k)
      [ "$v" = 0000000000000000 ] || p="$p task ${t##*/} $k '$v';"
    done
    v=$(stfield "$s" Seccomp)
    [ "$v" = 2 ] || p="$p task ${t##*/} Seccomp '$v';"
    v=$(stfield "$s" NoNewPrivs)
    [ "$v" = 1 ] || p="$p task ${t##*/} NoNewPrivs '$v';"
  done
  # The VMM, a vCPU and at least one more thread (kvmkit's guest runs its devices apart).
  [ $n -ge 2 ] || p="$p $n thread(s);"
  # The VMM and nothing else of user space; KVM's per-VM kernel thread (kvm-nx-lpage-recovery,
  # PPid 2) joins the cgroup of the process that made the VM, by design.
  v=$(cat "$cg/cgroup.procs" 2>/dev/null)
  case " $(echo $v) " in *" $1 "*) ;; *) p="$p $1 not in $cg/cgroup.procs ('$(echo $v)');" ;; esac
  for q in $v; do
    [ "$q" != "$1" ] || continue
    c=$(cat "/proc/$q/comm" 2>/dev/null)
    [ "$(stfield "/proc/$q/status" PPid)" = 2 ] && case $c in kvm-*) true ;; *) false ;; esac ||
      p="$p $q ($c, PPid $(stfield "/proc/$q/status" PPid), '$(tr '\0' ' ' <"/proc/$q/cmdline" 2>/dev/null)') is in $cg too;"
  done
  v=$(cat "/proc/$1/cgroup" 2>/dev/null)
  [ "$v" = "0::/kvmkit/$2" ] || p="$p /proc/$1/cgroup '$v';"
  v=$(cat "$cg/memory.max" 2>/dev/null)
  [ "$v" = "$JLIMIT" ] || p="$p memory.max '$v';"
  v=$(cat "$cg/memory.current" 2>/dev/null)
  [ "${v:-0}" -gt 0 ] 2>/dev/null || p="$p memory.current '$v' (nothing charged to the VM's cgroup);"
  v=$(ls -A "/proc/$1/root/" 2>/dev/null | tr '\n' ' ')
  [ "$v" = "dev kvmkit " ] || p="$p its root holds '$v', not just dev and kvmkit;"
  [ -c "/proc/$1/root/dev/kvm" ] || p="$p no dev/kvm in its root;"
  v=$(stat -L -c '%d:%i' "/proc/$1/root/" 2>/dev/null)
  [ "$v" = "$(stat -c '%d:%i' "$JBASE/kvmkit/$2/root")" ] || p="$p its root is not $JBASE/kvmkit/$2/root;"
  echo "$p"
}
sc_jail_cgroup2() {
  jcg_mounted=""
  if ! grep -q "^[^ ]* $JCG cgroup2 " /proc/mounts; then
    mount -t cgroup2 none "$JCG" || { fail "mount -t cgroup2 none $JCG failed"; return; }
    jcg_mounted=1
  fi
  grep -qw memory "$JCG/cgroup.controllers" || { fail "L1's cgroup2 offers no memory controller: $(cat "$JCG/cgroup.controllers")"; return; }
  info "jail-cgroup2: $JCG controllers: $(cat "$JCG/cgroup.controllers"); subtree_control before the jailer: '$(cat "$JCG/cgroup.subtree_control")'"
  # Straight from L1's initramfs root: a jailer cannot pivot_root out of rootfs; it must say so
  # and leave nothing behind.
  kvmkit jail --id jcg2-rootfs --exec-file /bin/kvmkit --uid $JUID --gid $JUID --chroot-base-dir "$JBASE" \
    --cgroup-version 2 --cgroup "memory.max=$JLIMIT" -- run --guest --no-stdin --workload idle </dev/null >/tmp/jcg2-rootfs 2>&1
  rc=$?
  info "jail-cgroup2: a jailer run from the initramfs root exits $rc: $(tail -n 1 /tmp/jcg2-rootfs)"
  if [ $rc = 0 ]; then
    jail_done jcg2-rootfs
  else
    grep -q 'pivot_root: .*(/ is the initramfs' /tmp/jcg2-rootfs || fail "a jailer run from the initramfs root did not say why it failed: $(tail -n 1 /tmp/jcg2-rootfs)"
    [ ! -e "$JCG/kvmkit/jcg2-rootfs" ] && [ ! -e "$JBASE/kvmkit/jcg2-rootfs" ] ||
      fail "the failed jailer left $JCG/kvmkit/jcg2-rootfs or $JBASE/kvmkit/jcg2-rootfs behind"
  fi

  # 1. A running jailed VM: uid, capabilities, seccomp, root and cgroup (waited for, then held).
  jail_vm jcg2-state ticks:200
  if wait_for /tmp/jcg2-state tick=2; then
    # Threads start and take their filters while the guest runs: wait (10 s at most) until all
    # is as it must be; what is still wrong then (or when the VM ended) fails the scenario.
    n=0
    probs=$(jail_problems "$bgpid" jcg2-state)
    [ -z "$probs" ] || info "jail-cgroup2: not yet at the first check:$probs"
    while [ -n "$probs" ] && running && [ $n -lt 20 ]; do
      sleep 0.5
      n=$((n + 1))
      probs=$(jail_problems "$bgpid" jcg2-state)
    done
    [ -z "$probs" ] || fail "jailed VM after $n re-checks:$probs"
    for t in /proc/$bgpid/task/*; do
      info "jail-cgroup2: task ${t##*/} $(cat "$t/comm" 2>/dev/null): Uid $(stfield "$t/status" Uid), CapEff $(stfield "$t/status" CapEff), CapBnd $(stfield "$t/status" CapBnd), Seccomp $(stfield "$t/status" Seccomp)"
    done
    info "jail-cgroup2: pid $bgpid in $JCG/kvmkit/jcg2-state: /proc/$bgpid/cgroup $(cat /proc/$bgpid/cgroup), memory.max $(cat $JCG/kvmkit/jcg2-state/memory.max), memory.current $(cat $JCG/kvmkit/jcg2-state/memory.current); root: $(cd /proc/$bgpid/root && find . | sort | tr '\n' ' ')"
    info "jail-cgroup2: $JCG/kvmkit/jcg2-state/cgroup.procs: $(for q in $(cat $JCG/kvmkit/jcg2-state/cgroup.procs); do echo "$q $(cat /proc/$q/comm 2>/dev/null) (PPid $(stfield /proc/$q/status PPid));"; done | tr '\n' ' ')"
    info "jail-cgroup2: subtree_control: $JCG '$(cat $JCG/cgroup.subtree_control)', $JCG/kvmkit '$(cat $JCG/kvmkit/cgroup.subtree_control)'"
    stop_bg
  fi
  finish /tmp/jcg2-state
  jail_done jcg2-state

  # 2. Under the limit: memtest over 16 MiB passes, no OOM kill.
  jail_vm jcg2-pass memtest:16
  finish /tmp/jcg2-pass
  expect_rc 0
  expect_line /tmp/jcg2-pass 'failed=0 status=0'
  info "jail-cgroup2: memtest:16 under memory.max $JLIMIT: exit $rc, memory.peak $(cat $JCG/kvmkit/jcg2-pass/memory.peak 2>/dev/null), memory.events $(tr '\n' ' ' <$JCG/kvmkit/jcg2-pass/memory.events)"
  [ "$(memev jcg2-pass oom_kill)" = 0 ] || fail "memtest:16 under memory.max=$JLIMIT: memory.events oom_kill is '$(memev jcg2-pass oom_kill)', expected 0"
  jail_done jcg2-pass

  # 3. Over the limit: the guest touches 128 MiB; the cgroup's OOM killer ends the VM.
  jail_vm jcg2-oom memtest:128
  finish /tmp/jcg2-oom
  info "jail-cgroup2: memtest:128 under memory.max $JLIMIT: exit $rc, memory.peak $(cat $JCG/kvmkit/jcg2-oom/memory.peak 2>/dev/null), memory.events $(tr '\n' ' ' <$JCG/kvmkit/jcg2-oom/memory.events)"
  dmesg | grep -i -e 'memory cgroup out of memory' -e 'oom-kill:' | tail -n 2 | sed 's/^/@@LAB-INFO jail-cgroup2: dmesg: /'
  ! grep -q 'failed=0 status=0' /tmp/jcg2-oom || fail "memtest:128 finished under memory.max=$JLIMIT"
  expect_rc 137
  [ "$(memev jcg2-oom oom_kill)" -ge 1 ] 2>/dev/null || fail "memtest:128 under memory.max=$JLIMIT: memory.events oom_kill is '$(memev jcg2-oom oom_kill)', expected 1 or more"
  p=$(cat $JCG/kvmkit/jcg2-oom/memory.peak 2>/dev/null)
  [ -z "$p" ] || [ "$p" -le "$JLIMIT" ] || fail "memory.peak $p is above memory.max $JLIMIT"
  jail_done jcg2-oom
  # L1 as it was for the scenarios after this one.
  rmdir "$JCG/kvmkit" "$JROOT" 2>/dev/null
  rm -rf "$JBASE"
  [ -z "$jcg_mounted" ] || umount "$JCG" || info "jail-cgroup2: could not unmount $JCG"
}

# boot-peers (opt-in): the same L2 kernel (the ELF vmlinux), busybox initramfs, command line,
# 1 vCPU and 256 MiB booted by kvmkit and by the peer VMMs in /lab/peers (copied in by the host
# when it had them), in interleaved rounds (lab.boot_rounds=, default 3; the order rotates each
# round) after a warm-up round that is not counted. Each boot is timed from the line the launching shell prints just before it execs the
# VMM to the userspace marker on the VMM's console, both stamped by busybox `ts` (gettimeofday,
# microseconds) as it reads them (ts buffers its output, not its clock); awk in between passes
# lines on unbuffered and ends the boot (SIGKILL) once the marker is through. One more boot per
# VMM runs `dmesg` for the guest's printk timeline: the same command line plus a kvmkit.cmd=
# word, which the initramfs's /init runs instead of the console shell (Cloud Hypervisor's
# `--serial tty` reads no input from a FIFO, so nothing is typed). A measurement: it fails only when a VMM it ran missed
# the marker (or the timeline) in some round.
PEER_CMDLINE="console=ttyS0 reboot=k panic=-1 pci=off quiet printk.time=1"
L2K=/lab/cache/linux/vmlinux
L2I=/lab/cache/linux/initramfs.cpio
PEER_MARK=KVMKIT-USERSPACE-READY
# peer_boot NAME OUT [WORDS]: boots VMM NAME with $PEER_CMDLINE (plus WORDS); its console, each
# line prefixed with the time of day in seconds, goes to OUT. Without WORDS the boot ends at the
# marker; with them, at lab-dmesg-done-42.
peer_boot() {
  pb_name=$1
  o=$2
  pb_args=$PEER_CMDLINE
  pb_words=$3
  end=$PEER_MARK
  [ -z "$pb_words" ] || { pb_args="$PEER_CMDLINE $pb_words"; end=lab-dmesg-done-42; }
  cat >/tmp/fc.json <<FCJSON
{"boot-source": {"kernel_image_path": "$L2K", "initrd_path": "$L2I", "boot_args": "$pb_args"},
 "machine-config": {"vcpu_count": 1, "mem_size_mib": 256}, "drives": []}
FCJSON
  case $pb_name in
    kvmkit) set -- kvmkit run --kernel "$L2K" --initrd "$L2I" --cmdline "$pb_args" --cpus 1 --memory 256
      # The timeline boot logs kvmkit's start-up milestones (debug level, to stderr).
      [ -z "$pb_words" ] || set -- env KVMKIT_LOG=debug "$@" ;;
    firecracker) set -- /lab/peers/firecracker --no-api --config-file /tmp/fc.json $FC_EXTRA ;;
    cloud-hypervisor) set -- /lab/peers/cloud-hypervisor --kernel "$L2K" --initramfs "$L2I" --cmdline "$pb_args" --cpus boot=1 --memory size=256M --serial tty --console off ;;
  esac
  rm -f "$o" "$o.in" "$o.raw"
  mkfifo "$o.in"
  # sh's $$ becomes timeout's and then the VMM's PID (busybox timeout execs the command).
  sh -c 'echo "lab-exec $$"; exec "$@"' sh timeout -s KILL $((2 * T)) "$@" <"$o.in" 2>&1 |
    awk -v end="$end" '
      { print; fflush() }
      pid == "" && $1 == "lab-exec" { pid = $2 }
      index($0, end) {
        # The line is through to ts; then the VM ends.
        system("sleep 0.3; kill -KILL " pid " 2>/dev/null")
        exit
      }' |
    ts '%.s' >"$o.raw" &
  exec 3>"$o.in"
  wait $!
  exec 3>&-
  wait
  tr -d '\r' <"$o.raw" >"$o"
  rm -f "$o.in" "$o.raw"
}
# peer_took OUT: seconds from the exec line to the marker, or nothing.
peer_took() {
  awk -v mark="$PEER_MARK" '$2 == "lab-exec" && a == "" { a = $1 } index($0, mark) && a != "" { printf "%.3f", $1 - a; exit }' "$1"
}
median() { tr ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print ""; else if (NR % 2) printf "%.3f", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# exits_arm / exits_report NAME: the L1 kernel's hist triggers on KVM's tracepoints, counting the
# exits of whatever VM runs in between (one boot); the report prints each table's largest rows as
# @@LAB-INFO lines and removes the triggers. Without tracefs or the events it says so once.
EXIT_HISTS="kvm_exit:exit_reason.hex kvm_pio:port.hex,rw kvm_msr:ecx.hex,write kvm_userspace_exit:reason kvm_mmio:type,gpa.hex"
exits_arm() {
  TR=/sys/kernel/tracing
  [ -d $TR/events ] || mount -t tracefs nodev $TR 2>/dev/null
  for h in $EXIT_HISTS; do
    [ -w "$TR/events/kvm/${h%%:*}/trigger" ] && echo "hist:keys=${h#*:}:sort=hitcount.descending:size=256" >"$TR/events/kvm/${h%%:*}/trigger" 2>/dev/null
  done
  # The first guest entry, stamped with CLOCK_TAI (the time of day while nothing set L1's TAI
  # offset): the trace keeps its oldest events and stops when full.
  if [ -w $TR/events/kvm/kvm_entry/enable ]; then
    echo 0 >$TR/options/overwrite
    echo tai >$TR/trace_clock 2>/dev/null
    echo >$TR/trace
    echo 1 >$TR/events/kvm/kvm_entry/enable
  fi
}
exits_report() {
  TR=/sys/kernel/tracing
  if [ -w $TR/events/kvm/kvm_entry/enable ]; then
    echo 0 >$TR/events/kvm/kvm_entry/enable
    first=$(grep -m 1 'kvm_entry:' $TR/trace | sed -n 's/.* \([0-9]*\.[0-9]*\): kvm_entry:.*/\1/p')
    exec_at=$(awk '$2 == "lab-exec" { print $1; exit }' "/tmp/peer.$1.dmesg")
    tai=""
    grep -q '\[tai\]' $TR/trace_clock 2>/dev/null && tai=yes
    if [ -n "$first" ] && [ -n "$exec_at" ] && [ -n "$tai" ]; then
      info "boot-peers: $1 first guest entry $(awk -v a="$first" -v b="$exec_at" 'BEGIN { printf "%.3f", a - b }') s after lab-exec (KVM's kvm_entry, CLOCK_TAI)"
    else
      info "boot-peers: $1 first guest entry: not measured (trace clock: $(cat $TR/trace_clock 2>/dev/null))"
    fi
    echo >$TR/trace
  fi
  for h in $EXIT_HISTS; do
    e=${h%%:*}
    if [ ! -r "$TR/events/kvm/$e/hist" ]; then
      info "boot-peers: $1 exits: no $TR/events/kvm/$e/hist in L1"
      continue
    fi
    grep -v '^#' "$TR/events/kvm/$e/hist" | grep . | head -n 12 | sed "s/^/@@LAB-INFO boot-peers: $1 exits $e: /"
    echo "!hist:keys=${h#*:}:sort=hitcount.descending:size=256" >"$TR/events/kvm/$e/trigger" 2>/dev/null
  done
}
sc_boot_peers() {
  [ -s "$L2K" ] && [ -s "$L2I" ] || { fail "no L2 vmlinux/initramfs in /lab/cache/linux"; return; }
  R=$(arg lab.boot_rounds)
  [ -n "$R" ] || R=3
  vmms=kvmkit
  for p in firecracker cloud-hypervisor; do
    if [ -x "/lab/peers/$p" ]; then
      vmms="$vmms $p"
    else
      info "boot-peers: $p missing: not at $(awk -v p="$p" '$1 == p { print $2 }' /lab/peers-missing 2>/dev/null) on the host; measuring the others"
    fi
  done
  if [ "$vmms" = kvmkit ]; then
    fail "no peer VMM to compare with: neither firecracker nor cloud-hypervisor was found on the host ($(cut -d' ' -f2 /lab/peers-missing 2>/dev/null | tr '\n' ' '); shared/peers/build-peers.sh builds them)"
    return
  fi
  info "boot-peers: VMMs: $vmms; $R interleaved rounds; kernel $L2K ($(cat /lab/l2-version)), initramfs $L2I, 1 vCPU, 256 MiB, serial console"
  info "boot-peers: command line for all: $PEER_CMDLINE (kvmkit --cmdline, Firecracker boot_args, Cloud Hypervisor --cmdline; the timeline boots add kvmkit.cmd=b64:... for /init and print each guest's /proc/cmdline)"
  info "boot-peers: kvmkit run --kernel --initrd --cmdline --cpus 1 --memory 256 | firecracker --no-api --config-file (boot-source, machine-config 1/256) | cloud-hypervisor --kernel --initramfs --cmdline --cpus boot=1 --memory size=256M --serial tty --console off"
  FC_EXTRA=""
  times_kvmkit="" times_firecracker="" times_cloud_hypervisor=""
  med_kvmkit="" med_firecracker="" med_cloud_hypervisor=""
  DMESG_WORD="kvmkit.cmd=b64:$(printf '%s' 'dmesg | sed "s/^/lab-dmesg: /"; sed "s/^/lab-cmdline: /" /proc/cmdline; echo lab-dmesg-done-42' | base64 | tr -d '\n')"
  set -- $vmms
  n=$#
  # Round 0 warms up and is not counted: the first L2 boot in a fresh L1 took half the time of
  # every later one (5.5-5.8 s against 10-15 s, whichever VMM came next) in the first lab runs.
  r=0
  while [ $r -le "$R" ]; do
    # Interleaved, and the order rotates each round.
    k=0
    order=""
    while [ $k -lt $n ]; do
      i=$(( (k + r + n - 1) % n + 1 ))
      eval "order=\"\$order \${$i}\""
      k=$((k + 1))
    done
    for v in $order; do
      peer_boot "$v" "/tmp/peer.$v.$r"
      s=$(peer_took "/tmp/peer.$v.$r")
      # Firecracker killed by its own seccomp filter in L1 (no error of its own): once more
      # without the filters, for all its rounds.
      if [ -z "$s" ] && [ "$v" = firecracker ] && [ -z "$FC_EXTRA" ] && ! grep -q 'exiting with error' "/tmp/peer.$v.$r"; then
        sed "s/^/  | $v r$r: /" "/tmp/peer.$v.$r" | tail -n 8
        info "boot-peers: firecracker reached no marker with its seccomp filters; again with --no-seccomp (for all its rounds)"
        FC_EXTRA=--no-seccomp
        peer_boot "$v" "/tmp/peer.$v.$r"
        s=$(peer_took "/tmp/peer.$v.$r")
      fi
      sed "s/^/  | $v r$r: /" "/tmp/peer.$v.$r" | tail -n 12
      if [ -n "$s" ] && [ $r = 0 ]; then
        info "boot-peers: warm-up $v ${s} s (not counted)"
      elif [ -n "$s" ]; then
        eval "times_$(echo $v | tr - _)=\"\$times_$(echo $v | tr - _) $s\""
        info "boot-peers: round $r $v ${s} s"
      else
        info "boot-peers: round $r $v: no $PEER_MARK"
        fail "$v reached no $PEER_MARK in round $r; its last line: $(grep . "/tmp/peer.$v.$r" | tail -n 1 | cut -d' ' -f2-)"
      fi
    done
    r=$((r + 1))
  done
  for v in $vmms; do
    eval "t=\$times_$(echo $v | tr - _)"
    m=$(echo $t | median)
    eval "med_$(echo $v | tr - _)=$m"
    info "boot-peers: $v rounds:$t s; median ${m:-?} s"
  done
  for p in firecracker cloud-hypervisor; do
    eval "pm=\$med_$(echo $p | tr - _)"
    [ -n "$pm" ] && [ -n "$med_kvmkit" ] || continue
    info "boot-peers: ratio kvmkit/$p $(awk -v a="$med_kvmkit" -v b="$pm" 'BEGIN { printf "%.2f", a / b }') (medians ${med_kvmkit} s / ${pm} s)"
  done
  # The printk timelines: one more boot per VMM, dmesg typed at its console shell. L1's KVM
  # counts that boot's exits (kvm_exit by reason, kvm_pio by port, kvm_msr by MSR,
  # kvm_userspace_exit by reason) in tracing histograms, so the VMMs' exits compare side by side.
  for v in $vmms; do
    exits_arm
    peer_boot "$v" "/tmp/peer.$v.dmesg" "$DMESG_WORD"
    exits_report "$v"
    [ "$v" != kvmkit ] || awk '$2 == "lab-exec" { a = $1 } / DEBUG .*(building the VM|VM created|kernel loaded|vCPU threads started)/ && a != "" {
        t = $1; $1 = ""; $2 = ""; $3 = ""; printf "@@LAB-INFO boot-peers: kvmkit start-up %.3f s after lab-exec:%s\n", t - a, $0 }' "/tmp/peer.$v.dmesg"
    grep '^[0-9.]* lab-dmesg: ' "/tmp/peer.$v.dmesg" | sed 's/^[0-9.]* lab-dmesg: //' >"/tmp/peer.$v.log"
    sed "s/^/  | $v dmesg: /" "/tmp/peer.$v.log"
    if [ ! -s "/tmp/peer.$v.log" ]; then
      sed "s/^/  | $v timeline boot: /" "/tmp/peer.$v.dmesg" | tail -n 12
      fail "no dmesg from $v's timeline boot; its last line: $(grep . "/tmp/peer.$v.dmesg" | tail -n 1 | cut -d' ' -f2-)"
      continue
    fi
    info "boot-peers: $v guest /proc/cmdline: $(sed -n 's/^[0-9.]* lab-cmdline: //p' "/tmp/peer.$v.dmesg" | head -n 1 | sed 's/kvmkit\.cmd=b64:[^ ]*/kvmkit.cmd=(the dmesg command)/')"
    info "boot-peers: $v timeline: Run /init at $(sed -n 's/^\[ *\([0-9.]*\)\] Run \/init.*/\1/p' "/tmp/peer.$v.log" | head -n 1) s, last printk at $(tail -n 1 "/tmp/peer.$v.log" | sed -n 's/^\[ *\([0-9.]*\)\].*/\1/p') s"
    awk '/^\[ *[0-9]+\.[0-9]+\]/ { t = $0; sub(/^\[ */, "", t); sub(/\].*/, "", t); if (n++) printf "%.1f ms before: %s\n", (t - p) * 1000, $0; p = t }' "/tmp/peer.$v.log" |
      sort -rn | head -n 5 | sed "s/^/@@LAB-INFO boot-peers: $v gap /"
  done
  # Milestones side by side (first matching printk line's time per VMM).
  for pat in 'Linux version' 'tsc: Detected' 'ACPI: ' 'Memory: ' 'clocksource: Switched to' 'Trying to unpack rootfs' 'Freeing initrd memory' 'Serial: 8250' 'i8042' 'Freeing unused kernel image' 'Run /init'; do
    line=""
    for v in $vmms; do
      t=$(grep -m 1 -F -- "$pat" "/tmp/peer.$v.log" 2>/dev/null | sed -n 's/^\[ *\([0-9.]*\)\].*/\1/p')
      line="$line $v ${t:--}"
    done
    info "boot-peers: timeline '$pat':$line"
  done
}

# Heartbeat and watchdog. Every 30 s a @@LAB-TICK line, so the host tells a quiet scenario from
# a hung L1 (no ticks: the host dumps QEMU's CPU state and sends an NMI). A scenario still
# running at twice its budget (/lab/budgets, from the host) gets its processes, their states
# and kernel stacks dumped once, as "  ! " lines; the host stops L1 90 s later.
watchdog_dump() {
  info "watchdog: $1 has run $2 s, twice its budget of $3 s; processes, states and kernel stacks:"
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [ "$p" -gt 2 ] 2>/dev/null || continue
    grep -q '^PPid:[[:space:]]*2$' "$d/status" 2>/dev/null && continue # kernel threads
    echo "  ! $p $(sed -n 's/^State:[[:space:]]*//p' "$d/status" 2>/dev/null) $(tr '\0' ' ' <"$d/cmdline" 2>/dev/null | cut -c1-160)"
    for t in "$d"/task/*; do
      echo "  !   task ${t##*/} $(cat "$t/comm" 2>/dev/null) $(sed -n 's/^State:[[:space:]]*//p' "$t/status" 2>/dev/null) wchan=$(cat "$t/wchan" 2>/dev/null)"
      sed 's/^/  !     /' "$t/stack" 2>/dev/null | head -n 12
    done
  done
}
heartbeat() {
  dumped=""
  while sleep 30; do
    set -- $(cat /tmp/lab.current 2>/dev/null)
    if [ -n "$1" ]; then
      ran=$(awk -v a="$2" -v b="$(now)" 'BEGIN { printf "%d", b - a }')
      echo "@@LAB-TICK $(now) s, load $(cut -d' ' -f1-3 /proc/loadavg), $1 running for $ran s"
      if [ "$dumped" != "$1" ] && [ "$ran" -ge $((2 * $3)) ]; then
        dumped=$1
        watchdog_dump "$1" "$ran" "$3"
      fi
    else
      echo "@@LAB-TICK $(now) s, load $(cut -d' ' -f1-3 /proc/loadavg)"
    fi
  done
}
# Started from a subshell, so it is no job of this shell: the scenarios' plain `wait` does not
# wait for it.
(heartbeat </dev/null & echo $! >/tmp/heartbeat.pid)

for name in $SCENARIOS; do
  budget=$(awk -v n="$name" '$1 == n { print $2 }' /lab/budgets 2>/dev/null)
  echo "$name $(now) ${budget:-$((T + 15))}" >/tmp/lab.current
  echo "@@LAB $name START"
  why=""
  fn="sc_$(echo "$name" | tr - _)"
  if type "$fn" >/dev/null 2>&1; then
    "$fn"
  else
    fail "unknown scenario"
  fi
  if [ -z "$why" ]; then
    echo "@@LAB $name PASS"
  else
    echo "@@LAB $name FAIL $why"
  fi
  rm -f /tmp/lab.current
done
kill "$(cat /tmp/heartbeat.pid)" 2>/dev/null
echo "@@LAB DONE"
sync
poweroff -f
