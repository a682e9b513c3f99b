"""``kcm audit verify [-c CONFIG]``: check the audit log's hash chain.

Exit status 0 when every record is intact; 1, naming the first bad record, when one was
altered, removed or reordered.
"""

from __future__ import annotations

import argparse
import os

from kcm.cli import CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``audit`` to the ``kcm`` parser."""
    audit = subparsers.add_parser("audit", help="the audit log",
                                  description=__doc__.split("\n\n")[0])
    actions = audit.add_subparsers(dest="action", metavar="ACTION", required=True)
    verify = actions.add_parser("verify", help="verify the audit log's hash chain")
    verify.add_argument("-c", "--config", default=os.environ.get("KCM_CORE_CONFIG"),
                        help="kcm-core configuration file (default: $KCM_CORE_CONFIG)")
    verify.set_defaults(run=_run_verify, prog="kcm audit verify")


def _run_verify(args: argparse.Namespace) -> int:
    from kcm.config_file import ConfigError
    from kcm.core.audit import verify_chain
    from kcm.core.config import load_config
    from kcm.core.store.engine import Store

    try:
        config = load_config(args.config)
    except ConfigError as e:
        raise CommandError(str(e)) from e
    result = Store(config.database).run_sync(verify_chain, write=False)
    if result.ok:
        print(f"audit log intact: {result.records_checked} records verified")
        return 0
    print(f"audit log BROKEN at record {result.first_bad_seq}: {result.reason} "
          f"({result.records_checked} records checked)")
    return 1
