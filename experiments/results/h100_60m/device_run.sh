#!/bin/bash
# Device-side driver, run from the repository root (it ran as runs/gpu/run.sh):
# the train-step throughput runs (T5/, one at a time), then one compare
# process per optimizer side by side, each stopped after SECONDS in all.
# usage: bash experiments/results/h100_60m/device_run.sh SECONDS [all|compare]
# (compare: skip the throughput runs). Carry runs/data and a copy of .git as
# runs/gitdir; the outputs land in runs/h100_throughput, runs/h100_60m and
# runs/h100_60m_b099, with logs in runs/gpu/ (create it first).
set -u
BUDGET=$1; PHASE=${2:-all}
T0=$(date +%s)
left() { local l=$(( BUDGET - ($(date +%s) - T0) )); [ $l -lt 5 ] && l=1; echo $l; }
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR=/tmp/jaxcache
export GIT_DIR=$PWD/runs/gitdir GIT_WORK_TREE=$PWD
git config --global --add safe.directory '*' 2>/dev/null
echo "git: $(git --version 2>&1) head $(git rev-parse --short HEAD 2>&1) dirty[$(git status --porcelain -- sgg_optax experiments pyproject.toml | head -3)]"
nvidia-smi -L
DATA="--corpus english --vocab-size 8192 --seq-len 256 --bf16 --data-dir runs/data --no-progress"
if [ "$PHASE" = all ] && [ ! -f runs/h100_throughput/done ]; then
  mkdir -p runs/h100_throughput
  for P in small 60m; do for O in adam adam_sgg adam_sgg_momentum; do
    f=runs/h100_throughput/$P-$O.json
    [ -f $f ] || timeout $(left) python -m experiments.train --preset $P $DATA \
      --batch-size 128 --steps 100 --optimizer $O --lr 1e-3 --recluster-interval 5 \
      --beta3 0.9 --eval-every 0 --eval-windows 16 --log-every 20 --out $f 2>&1 | grep -v Warning | tail -2
  done; done
  touch runs/h100_throughput/done
fi
C="--experiment compare --preset 60m $DATA --batch-size 128 --steps 300 \
 --lrs 1e-3,2e-3,3e-3,5e-3,1e-2 --seeds 3 --max-extensions 1 --eval-windows 1024 --log-every 20"
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.18
lane() {  # out optimizer [extra...]
  local out=$1 opt=$2; shift 2
  timeout $(left) python -m experiments.pretrain $C --optimizers $opt --out $out "$@" \
    > runs/gpu/log-$opt-$(basename $out).txt 2>&1
  echo "lane $opt $out rc=$? at $(( $(date +%s) - T0 )) s"
}
if [ "$PHASE" = all ] || [ "$PHASE" = compare ]; then
  (lane runs/h100_60m adam; lane runs/h100_60m_b099 adam_sgg --beta3 0.99) &
  (lane runs/h100_60m adam_sgg; lane runs/h100_60m_b099 adam_sgg_momentum --beta3 0.99) &
  (lane runs/h100_60m adam_sgg_momentum) &
  wait
fi
ls runs/h100_60m/runs runs/h100_60m_b099/runs 2>/dev/null | wc -l
