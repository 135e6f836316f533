"""The reader race: a writer process saves runs (each with 40 metrics, in one transaction) and
checkpoints (it opens and closes the store for every save, so the -wal file comes and goes), while
this process opens the store read-only ``--reads`` times and reads runs and metrics as ``report``
does. Counts half-written runs seen (a run whose metrics are not all there, or metrics of a run
not in runs) and healthy stores called damaged; both must be 0.

    python benchmarks/reader_race.py [--reads 1000] [--db /tmp/reader-race.db]
"""
from __future__ import annotations

METRICS = 40


def _result(seed: int, value: float):
    from bench.metrics import Metric
    from bench.runconfig import RunConfig, RunResult

    config = RunConfig("reinforce", {}, "bernoulli-target", {"d": 3}, seed, 1000)
    return RunResult(config, "finished", [Metric(f"m{i}", value + i) for i in range(METRICS)], {}, "t0", "t1", 1.0)


def _writer(path: str, stop) -> None:
    from bench.store import Store

    i = 0
    while not stop.is_set():
        with Store(path) as store:
            store.save(_result(i % 30, float(i)), {"python": "3"}, None, "cpu")
            if i % 3 == 0:
                store.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        i += 1


if __name__ == "__main__":
    import argparse
    import multiprocessing
    import time
    from pathlib import Path

    from bench.store import Store, StoreError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=1000)
    parser.add_argument("--db", type=Path, default=Path("/tmp/reader-race.db"))
    args = parser.parse_args()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{args.db}{suffix}").unlink(missing_ok=True)
    with Store(args.db) as store:
        store.save(_result(0, 0.0), {"python": "3"}, None, "cpu")
    stop = multiprocessing.Event()
    writer = multiprocessing.Process(target=_writer, args=(str(args.db), stop))
    writer.start()
    half = damaged = other = 0
    began = time.monotonic()
    try:
        for _ in range(args.reads):
            try:
                with Store(args.db, create=False) as store:
                    runs, metrics = store.runs(), store.metrics()
            except StoreError as exc:
                damaged += "damaged" in str(exc)
                other += "damaged" not in str(exc)
                continue
            counts = metrics.groupby("run_id").size()
            half += set(counts.index) != set(runs["run_id"]) or bool((counts != METRICS).any())
    finally:
        stop.set()
        writer.join()
    print(f"{args.reads} reads in {time.monotonic() - began:.0f} s: {half} half-written runs seen, "
          f"{damaged} healthy stores called damaged, {other} other errors")
