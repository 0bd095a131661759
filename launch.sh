#!/usr/bin/env bash
# launch.sh: fans a config's sweep out over this machine's accelerators, or over SLURM.
# See `./launch.sh --help`. Plain bash that runs processes; what it knows of the sweep (its points,
# their names and flags, which are finished, the default workdir, sweep_status.json and the
# report) comes from `python -m resjax.sweep` subcommands, the sequential runner's own code.
set -euo pipefail

PROG=${0##*/}
PYTHON=${RESJAX_PYTHON:-python3}
POLL_S=${RESJAX_LAUNCH_POLL_S:-0.5}
TPU_BASE_PORT=8476

usage() {
  cat <<EOF
Usage: ./$PROG [options] CONFIG[:ARG] [--config.key=value ...]
       ./$PROG --slurm [sbatch options] [--nodes N] [--per-point G] CONFIG[:ARG] [--config...]

Runs every point of the sweep CONFIG[:ARG] (as listed by \`python -m resjax.sweep list\`), each
as \`python -m resjax.train FLAGS --workdir=WORKDIR/<point>\`, logging to WORKDIR/<point>/log.txt.

On this machine (default):
  one point per accelerator slot, a queue when there are more points than slots. Slots:
  the GPUs in CUDA_VISIBLE_DEVICES (else those nvidia-smi lists), or the TPU chips in
  /dev/accel*, --per-point of them per point; on a CPU-only machine (or with
  JAX_PLATFORMS=cpu) --parallel points at once. A failed point does not stop the others; the
  exit status is 1 if any failed, and the summary names each with its log. Rerunning skips
  finished points and resumes interrupted ones (from their checkpoints). Ctrl-C (or SIGTERM)
  asks every running point to checkpoint and stop; a second Ctrl-C kills them.

With --slurm:
  writes WORKDIR/slurm/<name>.sbatch, a job array with one task per unfinished point,
  --signal=TERM@120 --requeue (a preempted or timed-out point checkpoints and is requeued; its
  rerun resumes; a point that fails is not), and submits it with \`sbatch [sbatch options]
  SCRIPT\`. sbatch options go between --slurm and CONFIG (e.g. --partition=gpu --time=4:00:00
  --gres=... ; a value may follow its option as a separate word) and override the script's
  #SBATCH lines (--ntasks-per-node=2: two processes per host, e.g. on CPUs). --nodes N runs
  each point on N hosts with srun and jax.distributed.initialize() (SLURM detection: one
  process per task). A point logs to WORKDIR/<point>/log.txt, SLURM's own messages go to
  WORKDIR/slurm/<name>-<job>_<task>.out, and the last task to end writes sweep_status.json and
  the report. Nothing is submitted while a job of WORKDIR is still queued or running.

Options:
  --workdir DIR   where the points' directories go (default: runs/<config>[_<arg>], as the
                  sequential runner)
  --per-point N   accelerators per point (default 1). With --slurm: GPUs per host per point,
                  one process per GPU (--gpus-per-node=N --ntasks-per-node=N)
  --parallel N    points at once on a CPU-only machine (default 1); with accelerators, at
                  most N at once
  --slurm         submit to SLURM instead of running here
  --nodes N       (--slurm) hosts per point (default 1); with GPUs give --per-point too:
                  JAX under srun gives each process one GPU (SLURM_LOCALID)
  --dry-run       print the commands (and the sbatch script) without running anything
  -h, --help      this text

Environment: RESJAX_PYTHON (default python3), CUDA_VISIBLE_DEVICES, JAX_PLATFORMS.
Examples:
  ./$PROG configs/depth_sweep.py --parallel 2
  ./$PROG configs/depth_sweep.py:cifar10 --per-point 1 --workdir runs/cifar
  ./$PROG --slurm --partition=gpu --time=8:00:00 --per-point 4 configs/depth_sweep.py:cifar10
EOF
}

die() {  # die MESSAGE [STATUS]: one line, as every resjax command answers bad input
  echo "error: $1" >&2
  exit "${2:-2}"
}

sweep() {  # sweep SUBCOMMAND ARGS...: python -m resjax.sweep (its errors are one line too)
  "$PYTHON" -m resjax.sweep "$@"
}

say() { echo "[launch $(date +%H:%M:%S)] $*"; }

duration() {  # whole seconds -> H:MM:SS: resjax.duration.hms in shell (tests/test_duration.py)
  local s=$1
  printf '%d:%02d:%02d' $((s / 3600)) $((s / 60 % 60)) $((s % 60))
}

positive_int() {  # positive_int OPTION VALUE
  [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 needs a positive integer; got '${2}'"
}

# ---------------------------------------------------------------- arguments
spec="" workdir="" per_point="" parallel="" nodes="" slurm=0 dry_run=0
overrides=() sbatch_opts=()
need_value() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (see --help)"; }
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --workdir) need_value "$@"; workdir=$2; shift 2 ;;
    --workdir=*) workdir=${1#*=}; shift ;;
    --per-point) need_value "$@"; positive_int "$1" "$2"; per_point=$2; shift 2 ;;
    --per-point=*) positive_int --per-point "${1#*=}"; per_point=${1#*=}; shift ;;
    --parallel) need_value "$@"; positive_int "$1" "$2"; parallel=$2; shift 2 ;;
    --parallel=*) positive_int --parallel "${1#*=}"; parallel=${1#*=}; shift ;;
    --nodes) need_value "$@"; positive_int "$1" "$2"; nodes=$2; shift 2 ;;
    --nodes=*) positive_int --nodes "${1#*=}"; nodes=${1#*=}; shift ;;
    --slurm) slurm=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --config.*) overrides+=("$1"); shift ;;
    --config | --config=*) die "give the config as CONFIG[:ARG], without --config= (see --help)" ;;
    -*)
      if [[ $slurm == 1 && -z $spec ]]; then
        sbatch_opts+=("$1"); shift  # an sbatch option
      else
        die "unknown option '$1' (see --help)"
      fi
      ;;
    *)
      if [[ -z $spec && ($1 == *.py || $1 == *.py:*) ]]; then
        spec=$1
      elif [[ $slurm == 1 && -z $spec && ${#sbatch_opts[@]} -gt 0 ]]; then
        sbatch_opts+=("$1")  # the value of the sbatch option before it
      else
        die "unexpected argument '$1': expected one CONFIG[:ARG] (a .py file) (see --help)"
      fi
      shift
      ;;
  esac
done
[[ -n $spec ]] || die "no CONFIG given (usage: ./$PROG [options] CONFIG[:ARG]; see --help)"
[[ -z $nodes || $slurm == 1 ]] || die "--nodes needs --slurm (multi-host runs go through srun)"

# An interpreter that cannot import resjax and its dependencies (an environment not activated)
# is said once, here, rather than as a traceback in every point's log.
python_path=$(command -v "$PYTHON") ||
  die "no Python '$PYTHON' found: name the one resjax is installed in with RESJAX_PYTHON=/path/to/python" 1
if ! why=$("$PYTHON" -c 'import importlib.util as u, resjax.sweep
for m in ("jax", "flax", "optax", "orbax.checkpoint"):
    assert u.find_spec(m), f"No module named {m!r}"' 2>&1); then
  die "$PYTHON ($python_path) cannot import resjax ($(tail -n 1 <<<"$why")): activate the environment resjax is installed in, or name its Python with RESJAX_PYTHON=/path/to/python" 1
fi

# ---------------------------------------------------------------- the points
# On bad input (no such file, a rejected point, an unknown key) Python has said so in one line.
default_workdir=$(sweep workdir "$spec") || exit 1
workdir=${workdir:-$default_workdir}
workdir=${workdir%/}
listing=$(sweep list "$spec" ${overrides[@]+"${overrides[@]}"}) || exit 1
names=() flags=()
while IFS=$'\t' read -r name point_flags; do
  [[ -n $name ]] || continue
  names+=("$name")
  flags+=("$point_flags")
done <<<"$listing"
[[ ${#names[@]} -gt 0 ]] || die "$spec has no points" 1
n_points=${#names[@]}

is_finished() {  # is_finished NAME: WORKDIR/NAME holds the results of this very config
  [[ $(sweep state "$spec" "$workdir" --point="$1" ${overrides[@]+"${overrides[@]}"}) == "$1"$'\t'finished ]]
}
finished=()  # per point: 1 when it finished before this launch
states=$(sweep state "$spec" "$workdir" ${overrides[@]+"${overrides[@]}"}) || exit 1
for i in "${!names[@]}"; do
  finished+=(0)
  grep -qxF "${names[$i]}"$'\t'finished <<<"$states" && finished[i]=1
done

# ---------------------------------------------------------------- SLURM
if [[ $slurm == 1 ]]; then
  todo=()
  for i in "${!names[@]}"; do
    if [[ ${finished[$i]} == 1 ]]; then
      say "${names[$i]}: finished earlier (results.json), not submitted"
    else
      todo+=("$i")
    fi
  done
  if [[ ${#todo[@]} -eq 0 ]]; then
    say "every point of $spec is finished in $workdir; nothing to submit"
    exit 0
  fi
  job=resjax-$(basename "$default_workdir")
  run=$job-$(date +%Y%m%d-%H%M%S)  # this submission: its script, its points' outcomes
  script_path=$workdir/slurm/$run.sbatch
  abs_workdir=$workdir
  [[ $workdir == /* ]] || abs_workdir=$PWD/$workdir
  hosts=${nodes:-1}
  gpus=${per_point:-}
  script=$(
    echo "#!/bin/bash"
    echo "# Generated by launch.sh $(date -Iseconds): $spec, ${#todo[@]} of $n_points points."
    echo "#SBATCH --job-name=$job"
    echo "#SBATCH --array=0-$((${#todo[@]} - 1))"
    echo "#SBATCH --signal=TERM@120  # 2 min before the end: checkpoint and exit 0"
    echo "#SBATCH --requeue  # a preempted task is requeued; its rerun resumes"
    echo "#SBATCH --open-mode=append"
    echo "#SBATCH --output=${abs_workdir//%/%%}/slurm/%x-%A_%a.out  # %% is a literal %"
    echo "#SBATCH --nodes=$hosts"
    if [[ -n $gpus && $hosts -gt 1 ]]; then
      echo "#SBATCH --ntasks-per-node=$gpus  # one process per GPU (JAX's SLURM default)"
      echo "#SBATCH --gpus-per-node=$gpus"
    elif [[ -n $gpus ]]; then
      echo "#SBATCH --ntasks-per-node=1  # one process sees all of the point's GPUs"
      echo "#SBATCH --gpus-per-node=$gpus"
    else
      echo "#SBATCH --ntasks-per-node=1"
    fi
    echo "set -euo pipefail"
    printf 'cd %q\n' "$PWD"
    echo "# Task i runs point names[i] with flags[i] (python -m resjax.train flags, shell-quoted)."
    echo "names=("
    for i in "${todo[@]}"; do printf '  %q\n' "${names[$i]}"; done
    echo ")"
    echo "flags=("
    for i in "${todo[@]}"; do printf '  %q\n' "${flags[$i]}"; done
    echo ")"
    echo "# Points that finished before this submission (they count as finished in the report)."
    echo "skipped=("
    for i in "${!names[@]}"; do [[ ${finished[$i]} == 1 ]] && printf '  %q\n' "${names[$i]}"; done
    echo ")"
    printf 'workdir=%q\n' "$abs_workdir"
    printf 'python=%q\n' "$(command -v "$PYTHON")"
    echo "# Whether a point finished: python -m resjax.sweep state SPEC WORKDIR --point=NAME OVERRIDES"
    printf 'spec=%q\n' "$spec"
    echo "overrides=("
    for o in ${overrides[@]+"${overrides[@]}"}; do printf '  %q\n' "$o"; done
    echo ")"
    echo "# Each point's final outcome (NAME=finished:S or NAME=failed:EXIT:S), one file per point."
    printf 'outcomes=%q\n' "$abs_workdir/slurm/$run.outcomes"
    printf 'submitted=%d  # epoch seconds: the sweep'"'"'s wall time runs from here\n' "$(date +%s)"
    cat <<'EOF'
i=${SLURM_ARRAY_TASK_ID:?run this script with sbatch}
name=${names[$i]}
dir=$workdir/$name
mkdir -p "$dir"
log=$dir/log.txt
eval "args=(${flags[$i]})"
echo "=== $(date -Iseconds) SLURM job ${SLURM_JOB_ID:-?} (array ${SLURM_ARRAY_JOB_ID:-?}_$i, restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST:-?}: $name" >>"$log"
# SIGTERM to the steps only (--signal=TERM@120, scancel --signal=TERM) reaches the point, which
# checkpoints; SIGTERM to the batch shell too means SLURM is ending the job (requeue, preemption,
# scancel, time limit): the shell waits for the point to save, and leaves the rest to SLURM.
terminated=0
trap 'terminated=1; echo "=== batch shell got SIGTERM; waiting for the point to checkpoint" >>"$log"' TERM
start=$SECONDS
rc=0
# The point's output goes straight to its log (srun's own messages to this job's --output file),
# so that the log's last words are the point's. %% is a literal % in srun's file patterns.
srun --kill-on-bad-exit=1 --open-mode=append --output="${log//%/%%}" \
  "$python" -m resjax.train "${args[@]}" --workdir="$dir" || rc=$?
state=$("$python" -m resjax.sweep state "$spec" "$workdir" --point="$name" ${overrides[@]+"${overrides[@]}"} 2>>"$log") || state=
if [[ $state == "$name"$'\t'finished ]]; then
  outcome=finished:$((SECONDS - start))
elif [[ $terminated == 1 ]]; then
  # Requeued by SLURM (its rerun records the outcome) or cancelled (rerun launch.sh).
  echo "=== $name stopped by SLURM (exit $rc): requeued by SLURM, or cancelled" >>"$log"
  exit 0
elif [[ $rc -eq 0 || $rc -eq 143 ]]; then
  # Stopped by SIGTERM (preempted, out of time): it checkpointed and exited 0, or the signal
  # came before the point could handle it (Python still starting) and killed it (143 = 128 +
  # SIGTERM). Either way its rerun resumes or restarts it; a point that fails for a reason of
  # its own exits 1.
  echo "=== $name stopped before the end (preempted or out of time, exit $rc): requeued" >>"$log"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
else
  outcome=failed:$rc:$((SECONDS - start))
  echo "=== $name failed (exit $rc): not requeued" >>"$log"
fi
mkdir -p "$outcomes"
printf '%s\n' "$name=$outcome" >"$outcomes/$name.tmp"
mv -f "$outcomes/$name.tmp" "$outcomes/$name"
# The last of the array's points to end writes sweep_status.json and the report, as launch.sh
# does on one machine when its last point ends (flock: two tasks may end at the same moment).
exec 9>>"$outcomes/lock"
flock 9
ended=()
for n in "${names[@]}"; do
  [[ -s $outcomes/$n ]] || exit $rc # a point still runs or waits: it will record
  ended+=("$(<"$outcomes/$n")")
done
if [[ ! -e $outcomes/recorded ]]; then
  for n in ${skipped[@]+"${skipped[@]}"}; do ended+=("$n=skipped"); done
  "$python" -m resjax.sweep record "$spec" "$workdir" "${ended[@]}" --launcher="launch.sh --slurm" \
    --wall-time=$(($(date +%s) - submitted)) ${overrides[@]+"${overrides[@]}"} || true
  touch "$outcomes/recorded"
fi
exit $rc
EOF
  )
  submit=(sbatch ${sbatch_opts[@]+"${sbatch_opts[@]}"} "$script_path")
  if [[ $dry_run == 1 ]]; then
    echo "# $script_path"
    echo "$script"
    echo "# submit:"
    printf '%q ' "${submit[@]}"
    echo
    exit 0
  fi
  command -v sbatch >/dev/null || die "sbatch not found: is this a SLURM login node? (--dry-run prints the script)" 1
  # A job of this workdir still queued or running would train its points twice at once.
  active=()
  while IFS='|' read -r id command; do
    [[ $command == "$abs_workdir/slurm/"*.sbatch ]] && active+=("$id")
  done < <(squeue -u "$(id -un)" -h -o '%i|%o' 2>/dev/null || true)
  [[ ${#active[@]} -eq 0 ]] || die "job(s) ${active[*]} of $workdir are still queued or running (squeue); rerun when they have ended, or scancel them first" 1
  mkdir -p "$workdir/slurm"
  printf '%s\n' "$script" >"$script_path"
  say "submitting ${#todo[@]} point(s) of $spec: ${submit[*]}"
  "${submit[@]}"
  say "logs: $workdir/<point>/log.txt; the last task to end writes $workdir/report.md; rerun this command after the job to submit what did not finish"
  exit 0
fi

# ---------------------------------------------------------------- slots on this machine
accel_kind=cpu accels=()
platforms=${JAX_PLATFORMS:-}
if [[ -n $platforms && ! $platforms =~ (cuda|gpu|rocm|tpu) ]]; then
  : # JAX_PLATFORMS asks for CPU only
elif [[ -v CUDA_VISIBLE_DEVICES ]]; then
  IFS=',' read -r -a accels <<<"$CUDA_VISIBLE_DEVICES"
  [[ ${#accels[@]} -eq 1 && ${accels[0]} == -1 ]] && accels=()
  [[ ${#accels[@]} -gt 0 ]] && accel_kind=gpu
elif command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  mapfile -t accels < <(nvidia-smi --query-gpu=index --format=csv,noheader)
  [[ ${#accels[@]} -gt 0 ]] && accel_kind=gpu
elif compgen -G '/dev/accel[0-9]*' >/dev/null; then
  n_chips=$(compgen -G '/dev/accel[0-9]*' | wc -l)
  mapfile -t accels < <(seq 0 $((n_chips - 1)))
  accel_kind=tpu
fi
slot_env=()  # per slot: "VAR=value VAR=value"
if [[ $accel_kind == cpu ]]; then
  if [[ -n $per_point ]]; then
    die "--per-point $per_point asks for accelerators, but this machine has none that launch.sh can see (GPUs: CUDA_VISIBLE_DEVICES, else nvidia-smi; TPU chips: /dev/accel*; JAX_PLATFORMS=cpu means none); on a CPU-only machine use --parallel N to run N points at once"
  fi
  n_slots=${parallel:-1}
  for ((s = 0; s < n_slots; s++)); do slot_env+=(""); done
  what="CPU only: $n_slots point(s) at once (--parallel)"
else
  per=${per_point:-1}
  n_acc=${#accels[@]}
  ((per <= n_acc)) || die "--per-point $per asks for more accelerators than this machine has ($n_acc ${accel_kind^^}s: ${accels[*]})"
  if [[ $accel_kind == tpu && $per -ne 1 && $per -ne $n_acc ]]; then
    die "on TPU, --per-point must be 1 or all $n_acc chips (other sub-slices need their own topology settings)"
  fi
  n_slots=$((n_acc / per))
  [[ -n $parallel && $parallel -lt $n_slots ]] && n_slots=$parallel
  for ((s = 0; s < n_slots; s++)); do
    ids=$(IFS=,; echo "${accels[*]:s*per:per}")
    if [[ $accel_kind == gpu ]]; then
      slot_env+=("CUDA_VISIBLE_DEVICES=$ids")
    elif [[ $per -eq $n_acc ]]; then
      slot_env+=("")
    else
      slot_env+=("TPU_VISIBLE_CHIPS=$ids TPU_CHIPS_PER_PROCESS_BOUNDS=1,1,1 TPU_PROCESS_BOUNDS=1,1,1 TPU_PROCESS_PORT=$((TPU_BASE_PORT + s))")
    fi
  done
  what="$n_acc ${accel_kind^^}(s) [${accels[*]}], $per per point: $n_slots point(s) at once"
fi
((n_slots > n_points)) && n_slots=$n_points

point_cmd() {  # point_cmd INDEX -> sets cmd=(...) for point INDEX
  eval "cmd=(${flags[$1]})"
  cmd=("$PYTHON" -m resjax.train "${cmd[@]}" "--workdir=$workdir/${names[$1]}")
}

if [[ $dry_run == 1 ]]; then
  echo "# $spec: $n_points point(s) in $workdir; $what"
  for i in "${!names[@]}"; do
    point_cmd "$i"
    env_text=${slot_env[$((i % n_slots))]}
    if [[ $i -ge $n_slots ]]; then
      echo "# queued: runs in the first slot that frees up"
      [[ -n $env_text ]] && env_text="<that slot's ${env_text%%=*}>"
    fi
    echo "${env_text:+$env_text }$(printf '%q ' "${cmd[@]}")>>$workdir/${names[$i]}/log.txt 2>&1"
  done
  exit 0
fi

# ---------------------------------------------------------------- run
mkdir -p "$workdir"
say "$spec: $n_points point(s) in $workdir; $what"
declare -A pid_of_slot=() point_of_slot=() start_of_slot=()
status=() elapsed=()
for i in "${!names[@]}"; do
  status+=(pending)
  elapsed+=(0)
  if [[ ${finished[$i]} == 1 ]]; then
    status[i]=skipped
    say "skipped  ${names[$i]}  (finished earlier)"
  fi
done
stopping=0
t_start=$SECONDS

stop_all() {  # forward a stop request (Ctrl-C / SIGTERM) to every running point
  local sig=TERM
  if [[ $stopping == 1 ]]; then
    sig=KILL
    say "second interrupt: killing the running points (their last checkpoints stay)"
  else
    say "interrupted: asking the running points to checkpoint and stop (Ctrl-C again kills them)"
  fi
  stopping=1
  for slot in "${!pid_of_slot[@]}"; do
    kill -s "$sig" "${pid_of_slot[$slot]}" 2>/dev/null || true
  done
}
trap stop_all INT TERM

next=0
while :; do
  # Start points in free slots.
  for ((s = 0; s < n_slots; s++)); do
    while [[ $next -lt $n_points && ${status[$next]} == skipped ]]; do next=$((next + 1)); done
    [[ $stopping == 0 && $next -lt $n_points && -z ${pid_of_slot[$s]:-} ]] || continue
    i=$next
    next=$((next + 1))
    dir=$workdir/${names[$i]}
    mkdir -p "$dir"
    log=$dir/log.txt
    point_cmd "$i"
    env_words=()
    [[ -n ${slot_env[$s]} ]] && read -r -a env_words <<<"${slot_env[$s]}"
    echo "=== $(date -Iseconds) launch.sh slot $s ${slot_env[$s]}: $(printf '%q ' "${cmd[@]}")" >>"$log"
    # A background child of a non-interactive shell ignores SIGINT: stop_all sends SIGTERM.
    env ${env_words[@]+"${env_words[@]}"} "${cmd[@]}" >>"$log" 2>&1 </dev/null &
    pid_of_slot[$s]=$!
    point_of_slot[$s]=$i
    start_of_slot[$s]=$SECONDS
    status[$i]=running
    say "start    ${names[$i]}  (slot $s${slot_env[$s]:+: ${slot_env[$s]}})  log: $log"
  done
  [[ ${#pid_of_slot[@]} -gt 0 ]] || break
  # Reap finished points.
  for s in "${!pid_of_slot[@]}"; do
    pid=${pid_of_slot[$s]}
    kill -0 "$pid" 2>/dev/null && continue
    rc=0
    wait "$pid" || rc=$?
    i=${point_of_slot[$s]}
    unset "pid_of_slot[$s]" "point_of_slot[$s]"
    elapsed[$i]=$((SECONDS - start_of_slot[$s]))
    took=$(duration "${elapsed[$i]}")
    dir=$workdir/${names[$i]}
    if [[ $rc -ne 0 ]]; then
      status[i]=failed:$rc
      say "FAILED   ${names[$i]}  (exit $rc) after $took  log: $dir/log.txt"
    elif is_finished "${names[$i]}"; then
      status[i]=finished
      say "finished ${names[$i]}  in $took"
    else
      status[i]=interrupted
      say "stopped  ${names[$i]}  after $took (checkpointed; rerun to resume)  log: $dir/log.txt"
    fi
  done
  sleep "$POLL_S" || true
done
trap - INT TERM

# ---------------------------------------------------------------- summary
# sweep_status.json as the sequential runner writes it, the report, and the summary: Python's.
outcomes=() n_failed=0
for i in "${!names[@]}"; do
  case ${status[$i]} in
    finished | interrupted) outcomes+=("${names[$i]}=${status[$i]}:${elapsed[$i]}") ;;
    failed:*) outcomes+=("${names[$i]}=failed:${status[$i]#failed:}:${elapsed[$i]}"); n_failed=$((n_failed + 1)) ;;
    *) outcomes+=("${names[$i]}=${status[$i]}") ;;
  esac
done
sweep record "$spec" "$workdir" "${outcomes[@]}" --wall-time="$((SECONDS - t_start))" \
  ${overrides[@]+"${overrides[@]}"} || true
if [[ $stopping == 1 ]]; then
  exit 130
elif [[ $n_failed -gt 0 ]]; then
  exit 1
fi
exit 0
