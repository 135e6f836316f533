"""What running a sweep on Dask costs: 48 toy gradient runs and 8 short training runs, in-process,
with ``--jobs 2`` and on a 2-worker local Dask cluster; and Dask's overhead per run.

    python benchmarks/dask_overhead.py [--workers 2] [--samples 2000] [--rounds 56]

Wall times are of ``sweep.run_sweep`` into a fresh store (start-up of worker processes included;
the Dask sweep is also timed on a cluster already running). The overhead per run is measured one
run at a time on a warm cluster: the round trip of submitting the run and receiving its result
(pickling, scheduling, the worker's plugin check and host bookkeeping, the transfer back) minus the
run's own wall time, as a median over ``--rounds`` runs. Needs the [distributed] extra.
"""
from __future__ import annotations

if __name__ == "__main__":
    import argparse
    import os
    import statistics
    import tempfile
    import time
    from pathlib import Path

    import torch

    from bench import distributed as dask_sweep
    from bench import harness, sweep

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="--jobs and Dask workers")
    parser.add_argument("--samples", type=int, default=2000, help="estimates per toy run")
    parser.add_argument("--rounds", type=int, default=56, help="runs timed one at a time for the overhead")
    args = parser.parse_args()

    estimator_names = ("reinforce", "reinforce-ma", "straight-through", "arm")
    toy = [harness.make_config(e, {}, p, params, seed, args.samples, "cpu", 100)
           for p, params in (("bernoulli-target", {"d": 4}), ("bernoulli-quadratic", {"d": 6}))
           for e in estimator_names for seed in range(6)]
    training = [harness.make_config(e, {}, "sigmoid-belief-net-training",
                                    {"widths": "6-4", "steps": 60, "log_every": 30, "eval_samples": 1000}, seed, 0)
                for e in estimator_names for seed in range(2)]
    configs = toy + training
    print(f"{len(toy)} toy runs (--samples {args.samples}) + {len(training)} training runs; "
          f"{os.cpu_count()} cores, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")

    def timed(label: str, **executor) -> float:
        with tempfile.TemporaryDirectory() as folder:
            db = Path(folder) / "r.db"
            began = time.perf_counter()
            status, _ = sweep.run_sweep(configs, db, quiet=True, **executor)
            wall = time.perf_counter() - began
            with sweep.open_store(db, create=False) as store:
                runs = store.runs()
        assert status == 0 and len(runs) == len(configs), (status, len(runs))
        print(f"{label:<36} wall {wall:7.2f} s   sum of run times {runs['wall_time_s'].sum():7.2f} s")
        return wall

    timed("in-process")
    timed(f"--jobs {args.workers}", jobs=args.workers)
    timed(f"--dask-workers {args.workers} (cluster start incl.)", dask_workers=args.workers)

    from distributed import Client

    began = time.perf_counter()
    cluster = dask_sweep.local_cluster(args.workers, dashboard_address=":0")
    client = Client(cluster)
    print(f"{'local cluster start-up':<36} {time.perf_counter() - began:7.2f} s")
    try:
        timed(f"Dask, {args.workers} workers already running", scheduler=cluster.scheduler_address)
        overheads = []
        for i in range(args.rounds):
            config = configs[i % len(configs)]
            began = time.perf_counter()
            result = client.submit(dask_sweep.run_on_worker, config, (), None, None, pure=False).result()
            overheads.append(time.perf_counter() - began - result.wall_time_s)
        quartiles = statistics.quantiles(overheads, n=4)
        print(f"Dask overhead per run (one at a time, {args.rounds} runs): median {1e3 * quartiles[1]:.1f} ms, "
              f"quartiles {1e3 * quartiles[0]:.1f} - {1e3 * quartiles[2]:.1f} ms, max {1e3 * max(overheads):.1f} ms")
    finally:
        client.close()
        cluster.close()
