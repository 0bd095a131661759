#!/usr/bin/env bash
# tests/local_slurm.sh: a one-node SLURM cluster on this machine, for launch.sh's SLURM tests
# (tests/test_launch.py, marked `slurm`) and by hand.
#
#   tests/local_slurm.sh start DIR [CTLD_PORT SLURMD_PORT]
#       installs Debian's slurmctld, slurmd, slurm-client and munge if missing (apt-get), writes
#       DIR/slurm.conf for one node named localhost with this machine's cores and memory (as
#       `slurmd -C` reports them), starts munged, slurmctld and slurmd with everything (keys,
#       sockets, state, logs) in DIR, and returns once `sinfo` shows the node idle. Then:
#       export SLURM_CONF=DIR/slurm.conf; sbatch ...
#   tests/local_slurm.sh stop DIR
#       cancels every job, waits for them to end, stops the three daemons.
#
# Runs as root (slurmd starts jobs as their users). Exit status 77: this machine cannot run a
# cluster (not root, or the packages are missing and apt-get is not there); 1: it failed.
# Written for a container: no systemd (the daemons are started directly), no cgroups
# (proctrack/linuxproc, task/none), no accounting database.
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge)
START_TIMEOUT_S=60
STOP_TIMEOUT_S=60

die() {
  echo "local_slurm: $1" >&2
  exit "${2:-1}"
}

install_if_missing() {
  local missing=()
  for tool in slurmctld slurmd sinfo munged; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  [[ ${#missing[@]} -eq 0 ]] && return
  command -v apt-get >/dev/null ||
    die "${missing[*]} missing and no apt-get to install them: install ${PACKAGES[*]}" 77
  echo "local_slurm: installing ${PACKAGES[*]} (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  # An install without the package lists (a fresh container) needs `apt-get update` first.
  apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null 2>&1 || {
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
  } || die "apt-get could not install ${PACKAGES[*]}"
}

node_hardware() {  # this machine's CPUs=... RealMemory=..., so that slurmd registers as configured
  slurmd -C | head -n 1 | tr ' ' '\n' | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore|RealMemory)=' | tr '\n' ' '
}

write_conf() {  # write_conf DIR MUNGE_SOCKET CTLD_PORT SLURMD_PORT
  local dir=$1
  cat >"$dir/slurm.conf" <<EOF
# Written by tests/local_slurm.sh: one node, everything in $dir.
ClusterName=resjax-local
# The node is called localhost whatever the machine's name, so that its name always resolves
# (jax.distributed's SLURM detection connects to the first node of SLURM_STEP_NODELIST).
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$3
SlurmdPort=$4
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s;
# 5, the least SLURM 22.05 accepts, keeps the requeue tests short).
AuthInfo=socket=$2,cred_expire=5
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
# No cgroups in a container: track processes by parent id, bind nothing, gather nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
# One core per task by default: two one-task jobs run side by side on a 2-core machine.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Pending jobs (a requeued one whose wait is over) are looked at every 2 s, not every 60 s.
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
# Finished jobs stay visible to squeue/scontrol for 10 minutes.
MinJobAge=600
KillWait=30
NodeName=localhost NodeAddr=127.0.0.1 $(node_hardware)State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {  # start_munge DIR SOCKET_DIR: a munged of our own, its key in DIR/munge
  local dir=$1/munge sockets=$2
  mkdir -p "$dir"
  if [[ ! -s $dir/munge.key ]]; then
    (umask 077 && head -c 1024 /dev/urandom >"$dir/munge.key")
  fi
  munged --socket="$sockets/munge.socket" --key-file="$dir/munge.key" \
    --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munged.seed"
}

wait_idle() {  # until sinfo shows the node idle; the daemons' last log lines if it never does
  local deadline=$((SECONDS + START_TIMEOUT_S)) state=""
  while ((SECONDS < deadline)); do
    state=$(sinfo -h -N -o %t 2>/dev/null || true)
    [[ $state == idle ]] && return
    sleep 0.5
  done
  echo "local_slurm: the node is not idle after ${START_TIMEOUT_S} s (sinfo: '${state}')" >&2
  tail -n 5 "$1/slurmctld.log" "$1/slurmd.log" "$1/munge/munged.log" >&2 || true
  return 1
}

start() {  # start DIR [CTLD_PORT SLURMD_PORT]
  local dir=$1
  [[ $(id -u) == 0 ]] || die "needs root (slurmd starts jobs as their users)" 77
  install_if_missing
  mkdir -p "$dir/state" "$dir/spool"
  dir=$(cd "$dir" && pwd)
  # munged wants every directory above its socket searchable by all (pytest's tmp dirs are
  # not), and a socket's path is limited to 107 bytes: the socket goes in a short /tmp dir.
  sockets=$(mktemp -d /tmp/local-slurm-munge.XXXXXX)
  chmod 755 "$sockets"
  echo "$sockets" >"$dir/munge-socket-dir"
  write_conf "$dir" "$sockets/munge.socket" "${2:-6817}" "${3:-6818}"
  export SLURM_CONF=$dir/slurm.conf
  trap 'stop "$dir"' ERR
  start_munge "$dir" "$sockets"
  slurmctld -f "$SLURM_CONF"
  slurmd -f "$SLURM_CONF" -N localhost
  wait_idle "$dir"
  trap - ERR
  echo "local_slurm: node localhost idle ($(node_hardware)); export SLURM_CONF=$SLURM_CONF"
}

stop_pid_file() {  # stop_pid_file FILE: TERM to the daemon it names, KILL if it does not go
  local file=$1 pid deadline
  [[ -s $file ]] || return 0
  pid=$(cat "$file")
  kill "$pid" 2>/dev/null || return 0
  deadline=$((SECONDS + 10))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
}

stop() {  # stop DIR: every job cancelled and gone, then the daemons
  local dir=$1 deadline sockets
  export SLURM_CONF=$dir/slurm.conf
  if [[ -s $dir/slurmctld.pid ]] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
    scancel --user=root 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT_S))
    # (squeue lists pending, running and completing jobs: those whose processes may live on)
    while [[ -n $(squeue -h -o %i 2>/dev/null) ]] && ((SECONDS < deadline)); do
      sleep 0.5
    done
    scontrol shutdown 2>/dev/null || true
  fi
  stop_pid_file "$dir/slurmd.pid"
  stop_pid_file "$dir/slurmctld.pid"
  stop_pid_file "$dir/munge/munged.pid"
  sockets=$(cat "$dir/munge-socket-dir" 2>/dev/null || true)
  [[ $sockets == /tmp/local-slurm-munge.* ]] && rm -rf "$sockets"
  rm -f "$dir/munge-socket-dir"
}

case ${1:-} in
  start) [[ $# -ge 2 ]] || die "usage: $0 start DIR [CTLD_PORT SLURMD_PORT]" 2; start "${@:2}" ;;
  stop) [[ $# -eq 2 ]] || die "usage: $0 stop DIR" 2; stop "$2" ;;
  *) die "usage: $0 start DIR [CTLD_PORT SLURMD_PORT] | stop DIR" 2 ;;
esac
