"""``python -m benchcli``: the same command line as ``python -m bench``."""
import sys

from benchcli.cli import main

if __name__ == "__main__":
    sys.exit(main())
