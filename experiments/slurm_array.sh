#!/usr/bin/env bash
# One sweep row per SLURM array task: task i runs row i of the CSV (row 0 = the first run after the header).
#
#   N=$(($(wc -l < experiments/ablation_scale.csv) - 1))
#   sbatch --array=0-$((N - 1)) experiments/slurm_array.sh configs/ablation_scale.py experiments/ablation_scale.csv
#
# Every task writes its own run folder under one shared --workdir, skips a finished row and resumes an
# interrupted one, so resubmitting the array is safe. When all tasks are done, the results table and report:
#   python -m inception_jax.main --config=$CONFIG --rows_csv=$CSV --workdir=$WORKDIR   (finished rows are skipped)
# One row on several hosts: set --nodes and `--config.distributed.enabled=True`; jax.distributed then reads
# the SLURM environment itself.
#SBATCH --job-name=inception_jax
#SBATCH --output=slurm-%A_%a.out
#SBATCH --time=04:00:00
#SBATCH --gres=gpu:1
set -euo pipefail
CONFIG=${1:?config file, e.g. configs/ablation_scale.py:preset=gpu}
CSV=${2:?rows CSV, e.g. experiments/ablation_scale.csv}
WORKDIR=${WORKDIR:-workdir/$(basename "${CONFIG%%:*}" .py)}
ROW=$(python - "$CSV" "${SLURM_ARRAY_TASK_ID:?run me as a SLURM array task}" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print(rows[int(sys.argv[2])]["run_id"])
PY
)
exec python -m inception_jax.main --config="$CONFIG" --rows_csv="$CSV" --workdir="$WORKDIR" --row="$ROW"
