"""`python -m kdbench ...`: the command line (kdbench/cli/), as the `kdbench` script."""

import sys

from kdbench.cli import main

sys.exit(main())
