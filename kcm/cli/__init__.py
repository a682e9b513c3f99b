"""The ``kcm`` command line: one subcommand per module, registered by name.

Each module listed in :data:`SUBCOMMAND_MODULES` has ``register(subparsers)``, which
adds its subcommand and sets ``run`` (``run(args) -> int``) as the parser default.
A subcommand reports a bad input by raising :class:`CommandError`; :func:`main`
turns it into one line on stderr and exit status 2. Any other exception is a failure no
command foresaw: one line too (its type and message), exit status 2, never a traceback.
Either is exit status 75 instead (``EX_TEMPFAIL``) when it, or its cause, says the database
or the KMIP server is unavailable now (:mod:`kcm.cli.exit_status`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import sys
from collections.abc import Sequence

from kcm.cli.exit_status import EXIT_BAD_INPUT, EXIT_TRY_AGAIN, exit_status

#: Subcommand modules, imported when the parser is built. Add new ones here.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "kcm.cli.ttlv_cmd", "kcm.cli.pki_cmd", "kcm.cli.conformance_cmd", "kcm.cli.core_cmd",
    "kcm.cli.audit_cmd", "kcm.cli.key_cmd", "kcm.cli.envelope_cmd", "kcm.cli.dev_cmd",
    "kcm.cli.config_cmd",
)

__all__ = ["EXIT_BAD_INPUT", "EXIT_TRY_AGAIN", "CommandError", "add_command", "build_parser",
           "main", "run"]


class CommandError(Exception):
    """Bad input to a subcommand: the message is printed as one line, exit status 2."""


def add_command(subparsers: argparse._SubParsersAction, name: str, help_text: str,
                module_doc: str | None) -> argparse._SubParsersAction:
    """Add subcommand ``name``, described by the first paragraph of ``module_doc`` (its
    module's docstring); return the subparsers its actions go into (the chosen action is
    ``args.action``)."""
    parser = subparsers.add_parser(name, help=help_text,
                                   description=(module_doc or "").split("\n\n")[0])
    return parser.add_subparsers(dest="action", metavar="ACTION", required=True)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line too (and where to look for the usage);
    subcommands' parsers are of this class as well."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT,
                  f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``kcm`` parser with every registered subcommand."""
    parser = _Parser(prog="kcm", description="KCM, a KMIP key-management suite.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def run() -> None:
    """The ``kcm`` program (its console script, ``python -m kcm``): :func:`main` in a
    process kept out of core dumps and away from other processes of its user
    (:mod:`kcm.no_core_dumps`), as kcm-core's and kcm-gateway's are. Its commands hold
    what a dump would give away: L1 (``core init``, ``tenant``/``service add|rotate``,
    ``audit verify``, ``config check``), unwrapped tenant and service keys, a new L1 key
    (``core new-l1-key``), a development CA's private key (``pki init``). :func:`main`
    itself changes nothing of the kind: it also runs inside other programs (tests)."""
    from kcm.no_core_dumps import forbid_core_dumps

    try:
        forbid_core_dumps()
    except OSError as e:
        print(f"kcm: error: cannot keep this process out of core dumps: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    sys.exit(main())


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``kcm`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed by argparse
        return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT
    # Whatever a command creates (the L1 key file, the database and its WAL, key files of a
    # development PKI) is the owner's alone unless it sets a mode itself.
    umask = os.umask(0o077)
    # What a command opens for its run (its database connections) is closed when it ends,
    # so that main() leaves nothing open in a program it runs inside of (a test, say).
    args.closing = contextlib.ExitStack()
    try:
        with args.closing:
            return args.run(args)
    except CommandError as e:
        print(f"{_prog(args)}: error: {_one_line(str(e))}", file=sys.stderr)
        return exit_status(e)
    except KeyboardInterrupt:
        print(f"{_prog(args)}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`kcm ttlv dump x | head`): not an error worth a traceback,
        # and stdout must not be flushed again at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as e:  # a bug, or a failure no command foresaw: still one line
        print(f"{_prog(args)}: error: {_described(e)}", file=sys.stderr)
        return exit_status(e)
    finally:
        os.umask(umask)  # main() also runs inside other programs (tests)


def _described(error: Exception) -> str:
    """``error`` as one line: its type and message, or the message alone where it says all
    (a SQLite database file of several names, refused wherever it is opened)."""
    from kcm.core.store.sqlite_links import SqliteFileLinked

    if isinstance(error, SqliteFileLinked):
        return _one_line(str(error))
    from sqlalchemy.exc import SQLAlchemyError

    cause = getattr(error, "orig", None)
    if isinstance(error, SQLAlchemyError) and cause is not None:
        # The driver's words, without SQLAlchemy's wrapping and its web link.
        return _one_line(f"database: {database_error(str(cause))}")
    return f"{type(error).__name__}: {_one_line(str(error))}"


_MISSING_DATABASE = re.compile(r'database "([^"]+)" does not exist')


def database_error(text: str) -> str:
    """A database driver's message ``text``, and what to do when it says the PostgreSQL
    database of the URL is not there (``kcm core init`` makes a schema, not a database)."""
    missing = _MISSING_DATABASE.search(text)
    if missing is None:
        return text
    return (f"{text}: kcm core init creates the schema, not the database: create it first "
            f"(CREATE DATABASE {missing.group(1)} OWNER the URL's role; docs/operations.md, "
            f"\"Storage\")")


def _prog(args: argparse.Namespace) -> str:
    return getattr(args, "prog", None) or f"kcm {args.command}"


def _one_line(message: str) -> str:
    """``message`` as exactly one line (long ones, such as a database driver's, cut short)."""
    line = " ".join(message.split())
    return line if len(line) <= 300 else line[:297] + "..."
