"""``kcm audit verify [-c CONFIG]``: check the audit log's hash chain.

Exit status 0 when every record is intact; 1, naming the first bad record, when one was
altered, removed or reordered.
"""

from __future__ import annotations

import argparse

from kcm.cli import add_command
from kcm.cli.core_cmd import config_option, core_config


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``audit`` to the ``kcm`` parser."""
    actions = add_command(subparsers, "audit", "the audit log", __doc__)
    verify = actions.add_parser("verify", help="verify the audit log's hash chain")
    config_option(verify)
    verify.set_defaults(run=_run_verify, prog="kcm audit verify")


def _run_verify(args: argparse.Namespace) -> int:
    from kcm.core.audit import verify_chain
    from kcm.core.store.engine import Store

    config = core_config(args)
    result = Store(config.database).run_sync(verify_chain, write=False)
    if result.ok:
        print(f"audit log intact: {result.records_checked} records verified")
        return 0
    print(f"audit log BROKEN at record {result.first_bad_seq}: {result.reason} "
          f"({result.records_checked} records checked)")
    return 1
