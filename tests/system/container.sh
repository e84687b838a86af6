#!/bin/bash
# A throw-away machine for the system test: the host's Debian, booted with a real systemd as PID 1 of
# new pid/mount/net/uts/ipc/cgroup namespaces, on an overlay of the host's / (the host is never
# written to). Needs root with CAP_SYS_ADMIN and util-linux (unshare, nsenter, setsid); nothing else.
# Adapted from ../shared/tools/systemd-container.sh (systemd 252, hybrid cgroups); this copy installs
# nothing of OpenSEG itself: the test runs deploy/install-gateway inside, as a technician would.
#
#   container.sh prepare SRC WHEELS  # overlay; the source tree to /root/openseg, WHEELS to /root/wheels;
#                                    # the host's own services masked
#   container.sh boot            # start systemd; returns once its manager answers; prints PID 1's host pid
#   container.sh sh CMD...       # run CMD inside (every namespace of the container's PID 1)
#   container.sh reboot | stop | clean
# State (overlay layers, pids) lives in $OPENSEG_CONTAINER (required: one per test run, so parallel
# runs never share a cgroup or an overlay). Its network namespace has only loopback.
set -eu
S=${OPENSEG_CONTAINER:?set OPENSEG_CONTAINER to a fresh directory}
R=$S/root
# Named for the whole state path: two runs' pytest tmp dirs share a basename (container0), and two
# machines in one cgroup would fight over it (and `clean` would remove the other's).
CG=openseg-ci-$(printf %s "$S" | sha256sum | cut -c1-16)
pid1() { cat "$S/unshare.pid" 2>/dev/null | xargs -r pgrep -P | head -1; }
case $1 in
prepare)
  mkdir -p "$S/upper" "$S/work" "$R"
  unshare --mount --propagation private env S="$S" R="$R" SRC="$2" WHEELS="$3" bash -euc '
    mount -t overlay overlay -o lowerdir=/,upperdir=$S/upper,workdir=$S/work $R
    # The host'"'"'s own services (whatever an admin or a package enabled in /etc) stay off inside;
    # the distribution'"'"'s defaults boot as on any Debian machine.
    units=$(find $R/etc/systemd/system -mindepth 2 -maxdepth 2 -path "*.wants/*" -printf "%f\n" | sort -u)
    [ -z "$units" ] || systemctl --root=$R -q mask $units
    systemctl --root=$R -q mask console-getty.service getty@tty1.service serial-getty@.service
    mkdir -p $R/root/openseg $R/root/wheels
    tar -C "$SRC" --exclude=./.venv --exclude=./.git --exclude=./build --exclude="*.egg-info" \
      --exclude=./tests/artifacts --exclude=./run -cf - . | tar -C $R/root/openseg -xf -
    cp -a "$WHEELS"/. $R/root/wheels/
  ' ;;
boot)
  # Its own cgroup in every hierarchy (read /proc/self/cgroup once: it changes as we move).
  cgs=$(cat /proc/self/cgroup)
  while IFS=: read -r _ ctl path; do
    case "$ctl" in "") d=/sys/fs/cgroup/unified ;; name=systemd) d=/sys/fs/cgroup/systemd ;; *) d=/sys/fs/cgroup/$ctl ;; esac
    [ -d "$d" ] || continue; cg="$d${path%/}/$CG"; mkdir -p "$cg"
    [ "$ctl" = cpuset ] && { cat "$d${path%/}/cpuset.cpus" > "$cg/cpuset.cpus"; cat "$d${path%/}/cpuset.mems" > "$cg/cpuset.mems"; }
    # The machine under test stands for a dedicated gateway: the largest share of this host's CPU, so
    # that other jobs on a shared CI host do not decide the timing measured inside; inside, its own
    # services compete as they would on the gateway.
    [ "$ctl" = cpu ] && echo 262144 > "$cg/cpu.shares"
    [ -z "$ctl" ] && [ -e "$cg/cpu.weight" ] && echo 10000 > "$cg/cpu.weight"
    echo $$ > "$cg/cgroup.procs"
  done <<< "$cgs"
  setsid unshare --mount --uts --ipc --net --pid --fork --cgroup --propagation private env S="$S" R="$R" bash -euc '
    mount -t overlay overlay -o lowerdir=/,upperdir=$S/upper,workdir=$S/work $R
    mount -t proc proc $R/proc
    mount --bind $R/proc/sys $R/proc/sys; mount -o remount,bind,ro $R/proc/sys
    mount -t sysfs -o ro sysfs $R/sys
    mount -t tmpfs -o mode=755 tmpfs $R/sys/fs/cgroup
    while IFS=: read -r _ ctl _; do
      case "$ctl" in
        "") mkdir $R/sys/fs/cgroup/unified; mount -t cgroup2 cgroup2 $R/sys/fs/cgroup/unified ;;
        name=systemd) mkdir $R/sys/fs/cgroup/systemd; mount -t cgroup -o none,name=systemd cgroup $R/sys/fs/cgroup/systemd ;;
        *) mkdir $R/sys/fs/cgroup/$ctl; mount -t cgroup -o $ctl cgroup $R/sys/fs/cgroup/$ctl ;;
      esac
    done < <(cat /proc/self/cgroup)
    mount -t tmpfs -o mode=755,nosuid tmpfs $R/dev
    for n in "null 1 3" "zero 1 5" "full 1 7" "random 1 8" "urandom 1 9" "tty 5 0"; do set -- $n; mknod -m 666 $R/dev/$1 c $2 $3; done
    mkdir $R/dev/pts $R/dev/shm; mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts $R/dev/pts
    ln -s pts/ptmx $R/dev/ptmx; mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs $R/dev/shm
    ln -s /proc/self/fd $R/dev/fd; touch $R/dev/console
    mount -t tmpfs -o mode=755,nosuid,nodev tmpfs $R/run; mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs $R/tmp
    hostname openseg-ci; mkdir -p $R/oldroot; cd $R; pivot_root . oldroot; umount -l /oldroot; rmdir /oldroot
    exec env -i container=openseg-ci /lib/systemd/systemd </dev/null >/dev/null 2>&1
  ' > "$S/boot.log" 2>&1 & echo $! > "$S/unshare.pid"
  for _ in $(seq 100); do
    p=$(pid1) && [ -n "$p" ] && nsenter -t "$p" -m test -S /run/systemd/private 2>/dev/null && { echo "$p"; exit 0; }
    kill -0 "$(cat "$S/unshare.pid")" 2>/dev/null || break
    sleep 0.1
  done
  echo "systemd did not come up as PID 1 of the container: $(tr '\n' ' ' < "$S/boot.log")" >&2; exit 1 ;;
sh) shift; exec nsenter -t "$(pid1)" -a "$@" ;;
reboot|stop)
  u=$(cat "$S/unshare.pid"); nsenter -t "$(pid1)" -a systemctl $([ "$1" = stop ] && echo poweroff || echo reboot)
  for _ in $(seq 300); do kill -0 "$u" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$u" 2>/dev/null && { echo "the container did not shut down within 30 s" >&2; exit 1; }
  if [ "$1" = reboot ]; then exec "$0" boot; fi ;;
clean)
  u=$(cat "$S/unshare.pid" 2>/dev/null || true)
  if [ -n "$u" ] && kill -0 "$u" 2>/dev/null; then
    p=$(pid1); [ -n "$p" ] && kill -KILL "$p" 2>/dev/null || true   # PID 1 of a pid namespace: all inside go with it
    for _ in $(seq 50); do kill -0 "$u" 2>/dev/null || break; sleep 0.1; done
  fi
  for d in /sys/fs/cgroup/*/; do
    find "$d" -depth -type d \( -name "$CG" -o -path "*/$CG/*" \) -exec rmdir {} + 2>/dev/null || true
  done
  rm -rf "$S" ;;
*) echo "usage: container.sh prepare SRC WHEELS | boot | sh CMD... | reboot | stop | clean" >&2; exit 2 ;;
esac
