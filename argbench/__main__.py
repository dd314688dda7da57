"""``python -m argbench``: the same as the ``argbench`` command."""

import sys

from argbench.cli import main

sys.exit(main())
