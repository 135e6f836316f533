"""asv benchmarks (bench_*.py, see asv.conf.json) and stand-alone measurement scripts; asv imports every
module here, so scripts do their work only under ``if __name__ == "__main__":``."""
