"""``python -m kcm``: the ``kcm`` command line."""

import sys

from kcm.cli import main

sys.exit(main())
