"""``python -m pipeline.nightly``: the same command as ``edgekiln nightly``."""

import sys

from pipeline.nightly.cli import main

sys.exit(main(sys.argv[1:]))
