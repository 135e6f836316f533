"""``python -m bench``: list, run and export gradient-estimator benchmarks."""
import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
