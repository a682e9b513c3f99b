"""``python -m kcm``: the ``kcm`` command line."""

from kcm.cli import run

run()
