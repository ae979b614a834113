#!/usr/bin/env bash
# GPU check + timings (under 10 minutes on one H100/H200): brief training on DC2 full, the amortised
# PDFs of 10^6 synthetic galaxies on every GPU (with the arithmetic limit), the posterior modes,
# CPU-vs-GPU agreement, then data-parallel training (torchrun, NCCL) of 10^6 galaxies x 1 epoch on
# 1 GPU and on all of them (benchmarks/gpu_ddp.py).
# Usage: bash benchmarks/gpu.sh [DATA_DIR] [OUT_DIR]
#   DATA_DIR holds test_dc2_training_9816.hdf5 and test_dc2_validation_9816.hdf5 (default: found
#   with rail.photovaez.data.dc2_path when RAIL is installed, else ./.gpu). Needs torch, jax, numpyro, h5py.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-}
out=${2:-${OUT:-benchmarks/results}}
if [ -z "$data" ]; then
  data=$(PYTHONPATH=src python3 -c 'import os; from rail.photovaez.data import dc2_path; print(os.path.dirname(dc2_path("training")))' 2>/dev/null || echo .gpu)
fi
mkdir -p "$out"
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python3 benchmarks/gpu.py --train "$data/test_dc2_training_9816.hdf5" --valid "$data/test_dc2_validation_9816.hdf5" \
  --epochs "${EPOCHS:-40}" --n-galaxies "${N_GALAXIES:-1000000}" --n-posterior "${N_POSTERIOR:-10000}" \
  --n-hmc "${N_HMC:-2000}" --out "$out/gpu.json"
work=${WORK:-/tmp/photovaez_gpu_ddp}
PYTHONPATH=src python3 benchmarks/gpu_ddp.py --labelled "$data/test_dc2_training_9816.hdf5" --rows "${DDP_ROWS:-1000000}" \
  --work "$work" --out "$out/gpu_ddp.json"
