#!/usr/bin/env bash
# Device check for the discrete VAEs (issues 15 and 16): the CUDA contract tests, then the Bernoulli
# VAE experiment with every run on one GPU at once (--jobs = runs), and the categorical VAE.
# Usage: bash benchmarks/gpu_vae_share.sh DEVICE STEPS JOBS OUT_DIR   (data: STOCHGRAD_BENCH_DATA)
# e.g. on a GPU machine: bash benchmarks/gpu_vae_share.sh cuda 30000 10 out
# (VAE_ARGS=--quick: the experiment's tiny evaluation settings, for a rehearsal on a CPU;
#  CPU_BENCH=1: first the per-step and categorical benchmarks on two pinned cores)
set -u
device=${1:-cuda}; steps=${2:-30000}; jobs=${3:-10}; out=${4:-gpu-out}
mkdir -p "$out"
python - <<'PY'
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-", flush=True)
PY
if [ -n "${CPU_BENCH:-}" ]; then  # first, while the machine is quiet: two pinned cores stand in for CI's 2-core machine
  for threads in 1 2; do
    timeout 90 taskset -c 0,1 python benchmarks/vae_step.py --threads $threads --steps 300 --repeats 3 2>&1 | tail -14
  done
  timeout 60 taskset -c 0,1 python benchmarks/categorical_estimates_per_second.py --seconds 1 2>&1 | tail -20
fi
if [ "$device" != cpu ]; then
  timeout 120 python -m pytest -q -x -p no:cacheprovider tests/test_problems.py -k cuda 2>&1 | tail -3
fi
began=$(date +%s)
timeout ${VAE_TIMEOUT:-240} python -m bench vae --device "$device" --steps "$steps" --jobs "$jobs" --threads 1 --quiet ${VAE_ARGS:-} \
  --db "$out/vae.db" 2>&1 | tail -40
echo "bernoulli-vae: $(( $(date +%s) - began )) s wall for the ten runs at $steps steps, jobs $jobs"
if python -c "import problems; problems.PROBLEMS.entry('categorical-vae')" 2>/dev/null; then
  began=$(date +%s)
  timeout ${CATVAE_TIMEOUT:-150} python -m bench run --device "$device" --jobs 6 --threads 1 --quiet --db "$out/catvae.db" \
    --estimators 'reinforce-loo(K=2),straight-through,st-gumbel,gumbel-softmax,reinmax,gapped-st' \
    --problems "categorical-vae(latents=30,categories=10,steps=$steps${CATVAE_ARGS:-})" 2>&1 | tail -30
  echo "categorical-vae: $(( $(date +%s) - began )) s wall for six runs at $steps steps"
fi
python - "$out" <<'PY'
import sqlite3, sys
for name in ("vae.db", "catvae.db"):
    try:
        db = sqlite3.connect(f"file:{sys.argv[1]}/{name}?mode=ro", uri=True)
        rows = db.execute("select r.estimator, m.metric, avg(m.value) from runs r join metrics m using(run_id) "
                          "where m.metric = 'seconds_per_step' group by r.estimator").fetchall()
    except sqlite3.Error as exc:
        print(name, "not read:", exc); continue
    for estimator, metric, value in rows:
        print(f"{name}: {estimator:28s} mean seconds_per_step {value:.5f}")
PY
