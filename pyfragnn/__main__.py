"""``python -m pyfragnn``: the same as the ``pyfragnn`` command."""
import sys

from pyfragnn.cli import main

# guarded: the workers of ``python -m mpi4py.futures -m pyfragnn ...`` (and of spawned
# process pools) import the main module under another name
if __name__ == "__main__":
    sys.exit(main())
