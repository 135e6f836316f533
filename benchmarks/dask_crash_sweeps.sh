#!/bin/bash
# The Dask bad-plugin sweep, repeated: 24 configs (10 good estimators and crash(action=exit),
# crash(action=kill), on 2 problems) on --dask-workers 2; per sweep: exit status, wall time, runs
# stored, good runs finished / lost, bad runs stored failed, tracebacks on stderr.
#     bash benchmarks/dask_crash_sweeps.sh [SWEEPS] [FOLDER]      (from the repository root)
set -u
sweeps=${1:-10}
folder=${2:-$(mktemp -d /tmp/dask-crash-sweeps-XXXX)}
root=$(pwd)
python - "$folder/crash_plugin.py" <<'PY'
import re, sys
source = open("tests/test_distributed.py").read()
open(sys.argv[1], "w").write(re.search(r"CRASH_PLUGIN = '''(.*?)'''", source, re.S).group(1))
PY
estimators="reinforce,reinforce-ma,reinforce-loo,arm,disarm,straight-through,straight-through-sigmoid,gumbel-softmax,sts,crash,crash(action=exit),crash(action=kill)"
for i in $(seq 1 "$sweeps"); do
  start=$(date +%s)
  (cd "$folder" && PYTHONPATH="$root" python -m bench run --plugin crash_plugin.py --estimators "$estimators" \
    --problems "bernoulli-target(d=3),bernoulli-quadratic(d=4)" --seeds 0 --warmup 100 --samples 2000 --quiet \
    --dask-workers 2 --db "sweep$i.db" > "out$i.txt" 2> "err$i.txt")
  status=$?
  counts=$(python -c "
import sqlite3, sys
rows = sqlite3.connect(sys.argv[1]).execute('SELECT estimator_params, status FROM runs').fetchall()
bad = [s for p, s in rows if 'exit' in p or 'kill' in p]
good = [s for p, s in rows if not ('exit' in p or 'kill' in p)]
print(f'{len(rows)} stored, good {good.count(\"finished\")} finished / {20 - good.count(\"finished\")} lost, '
      f'bad {bad.count(\"failed\")} of 4 failed')" "$folder/sweep$i.db")
  echo "sweep $i: exit $status, $(( $(date +%s) - start )) s, $counts, tracebacks $(grep -c Traceback "$folder/err$i.txt")"
done
