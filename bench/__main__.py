"""``python -m bench``: list, run and export gradient-estimator benchmarks.

A script, not a module of the library: ``python -m`` needs it in bench's folder, but nothing imports
it, so its one import of the command line (:mod:`benchcli`, the floor above) points down from where
it is run. The import test (tests/test_layers.py) counts it on the command line's floor and checks
that no module imports it.
"""
import sys

from benchcli.cli import main

if __name__ == "__main__":
    sys.exit(main())
