"""``kcm audit verify [-c CONFIG] [--checkpoint SEQ:DIGEST:MAC] [--checkpoint-log FILE]``:
check the audit log's keyed hash chain.

Runs on the core's host: it needs the database and the L1 key file (the chain is MACed under
a key derived from L1). Exit status 0 when every record is intact and every checkpoint given
is in the chain; 1, naming the first bad record, when one was altered, removed or reordered,
the tail was cut back, or a checkpoint is not in the chain (or is not genuine); 2 for bad
input (no L1 key file, another database's L1, an unreadable checkpoint).

Checkpoints are the ``kcm.audit.checkpoint`` events kcm-core writes to its log at start and
every ``audit_checkpoint_interval`` seconds; ``--checkpoint`` takes one as written (its
``checkpoint`` field), ``--checkpoint-log`` reads every one from a saved kcm-core log (either
log format). Both may be repeated.
"""

from __future__ import annotations

import argparse

from kcm.cli import CommandError, add_command
from kcm.cli.core_cmd import config_option, core_config


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``audit`` to the ``kcm`` parser."""
    actions = add_command(subparsers, "audit", "the audit log", __doc__)
    verify = actions.add_parser("verify", help="verify the audit log's keyed hash chain")
    config_option(verify)
    verify.add_argument("--checkpoint", action="append", default=[], metavar="SEQ:DIGEST:MAC",
                        help="a checkpoint from kcm-core's log the chain must still hold "
                             "(repeatable)")
    verify.add_argument("--checkpoint-log", action="append", default=[], metavar="FILE",
                        help="a saved kcm-core log: the chain must hold every checkpoint in it "
                             "(repeatable)")
    verify.set_defaults(run=_run_verify, prog="kcm audit verify")


def _run_verify(args: argparse.Namespace) -> int:
    from kcm.core.audit import Checkpoint, checkpoints_in_log, verify_chain
    from kcm.core.l1 import L1Error, open_l1
    from kcm.core.service import L1_CHECK_META
    from kcm.core.store import repository
    from kcm.core.store.engine import Store

    checkpoints = []
    for text in args.checkpoint:
        try:
            checkpoints.append(Checkpoint.parse(text))
        except ValueError as e:
            raise CommandError(str(e)) from e
    for path in args.checkpoint_log:
        try:
            with open(path, encoding="utf-8", errors="replace") as log:
                found = checkpoints_in_log(log)
        except OSError as e:
            raise CommandError(f"cannot read {path}: {e.strerror}") from e
        except ValueError as e:
            raise CommandError(f"{path}: {e}") from e
        if not found:
            raise CommandError(f"{path} holds no audit checkpoint")
        checkpoints.extend(found)

    config = core_config(args)
    try:
        l1, _ = open_l1(config.l1_key_file, config.l1_pkcs11)
    except L1Error as e:
        raise CommandError(f"cannot load the L1 key: {e}") from e
    store = Store(config.database)
    store.audit_key = l1.audit_key()

    def verify(session):
        known = repository.get_meta(session, L1_CHECK_META)
        if known is not None and known != l1.check_value():
            raise CommandError(f"the {l1.description} is not the L1 key of this database")
        return verify_chain(session, checkpoints=checkpoints)

    result = store.run_sync(verify, write=False)
    if result.ok:
        notes = []
        if result.unkeyed_records:
            notes.append(f"the first {result.unkeyed_records} written before the chain was "
                         "keyed, checked by digest only")
        if checkpoints:
            notes.append(f"{result.checkpoints_matched} checkpoints matched")
        print(f"audit log intact: {result.records_checked} records verified"
              + "".join(f"; {note}" for note in notes))
        return 0
    if result.first_bad_seq is None:
        print(f"audit log NOT verified: {result.reason}")
    else:
        print(f"audit log BROKEN at record {result.first_bad_seq}: {result.reason} "
              f"({result.records_checked} records checked)")
    return 1
