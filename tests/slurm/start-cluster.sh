#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine from Debian's packages (munge, slurmctld, slurmd), for the
# tests marked 'slurm' (tests/test_slurm.py). No systemd: the daemons are started directly. Run as root.
#
#   bash tests/slurm/start-cluster.sh          # install if needed, configure, start; prints the partition
#   bash tests/slurm/start-cluster.sh stop     # stop the daemons this script started
#
# One partition 'cpu' (the default) with all cores of this node. No accounting database (no slurmdbd), so
# sacct has nothing: the workflow's SLURM profile asks squeue for job states (slurm-status-command: squeue).
#
#   FAKE_GPU=h100 bash tests/slurm/start-cluster.sh   # also one fake GPU gres of type h100 and a partition
#                                                     # 'gpu' on the same node, so --gpus=h100:1 schedules
# The fake GPU is /dev/null: jobs get scheduled, not a card (a GPU job's own check then fails, as it should).
set -euo pipefail

STATE=/run/panoptic-slurm
CONF_DIR=/etc/slurm
HOST=$(hostname -s)

stop() {
    for name in slurmd slurmctld munged; do
        if [[ -f "$STATE/$name.pid" ]]; then
            kill "$(cat "$STATE/$name.pid")" 2>/dev/null || true
            rm -f "$STATE/$name.pid"
        fi
    done
}

if [[ "${1:-}" == stop ]]; then
    stop
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "start-cluster.sh: run as root (it installs packages and starts daemons)" >&2
    exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        munge slurmctld slurmd slurm-client >/dev/null
fi

mkdir -p "$STATE" "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/lib/munge \
    /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge /etc/munge 2>/dev/null || true

# munge: a key, then the daemon (as the munge user, which it insists on unless forced).
if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
if ! munge -n >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    cp /run/munge/munged.pid "$STATE/munged.pid"
fi
munge -n | unmunge >/dev/null

CPUS=$(nproc)
FAKE_GPU=${FAKE_GPU:-}
if [[ -n "$FAKE_GPU" && ! "$FAKE_GPU" =~ ^[a-z0-9][a-z0-9_.-]*$ ]]; then
    echo "start-cluster.sh: FAKE_GPU must be a GPU type like the config's gpus (e.g. h100), not '$FAKE_GPU'" >&2
    exit 1
fi
GRES_TYPES="" NODE_GRES="" GPU_PARTITION=""
if [[ -n "$FAKE_GPU" ]]; then
    GRES_TYPES="GresTypes=gpu"
    NODE_GRES="Gres=gpu:$FAKE_GPU:1"
    GPU_PARTITION="PartitionName=gpu Nodes=$HOST MaxTime=INFINITE State=UP OverSubscribe=NO"
    # No AutoDetect: there is no card; File= must name a device file, and /dev/null is one.
    printf 'AutoDetect=off\nNodeName=%s Name=gpu Type=%s File=/dev/null\n' "$HOST" "$FAKE_GPU" >"$CONF_DIR/gres.conf"
else
    rm -f "$CONF_DIR/gres.conf"
fi
MEM_MB=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512))

cat >"$CONF_DIR/slurm.conf" <<CONF
# Written by tests/slurm/start-cluster.sh: one node, one partition, no accounting, no cgroups.
ClusterName=panoptic
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# squeue must still know a job some time after it ended, or the status check takes it for lost.
MinJobAge=600
$GRES_TYPES
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB $NODE_GRES State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
$GPU_PARTITION
CONF

if ! scontrol ping >/dev/null 2>&1 || ! scontrol ping | grep -q UP; then
    /usr/sbin/slurmctld -i
fi
if ! pgrep -F "$STATE/slurmd.pid" >/dev/null 2>&1; then
    /usr/sbin/slurmd
fi

for _ in $(seq 60); do
    if sinfo -h -N -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
        sinfo
        exit 0
    fi
    sleep 1
done
echo "start-cluster.sh: the node did not come up; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
sinfo -N -l >&2 || true
exit 1
