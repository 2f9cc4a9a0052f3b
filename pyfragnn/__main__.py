"""``python -m pyfragnn``: the same as the ``pyfragnn`` command."""
import sys

from pyfragnn.cli import main

sys.exit(main())
