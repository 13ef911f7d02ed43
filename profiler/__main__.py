"""Entry point: python -m profiler COMMAND ... (see profiler/cli.py)."""

import sys

from profiler.cli import main

sys.exit(main())
