"""``kcm conformance``: replay the OASIS KMIP profile test cases against a running server.

* ``kcm conformance run [--host H] [--port P] --cert C --key K --ca CA [--vectors DIR]
  [--case PATTERN ...] [-v]``: play each selected case over mutual TLS, print
  ``PASS NAME`` or ``FAIL NAME step N: why`` per case and ``N passed, M failed`` at the end;
  exit 0 only when every case passed. Without ``--case``, the mandatory cases of the claimed
  profiles (see :data:`kcm.conformance.runner.MANDATORY_PATTERNS`) are played.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from kcm.cli import CommandError, add_command

#: The vectors directory when neither --vectors nor $KCM_VECTORS is given.
DEFAULT_VECTORS = Path("../shared/kmip-vectors")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``conformance`` and its ``run`` action to the ``kcm`` parser."""
    actions = add_command(subparsers, "conformance",
                          "replay the OASIS KMIP test cases against a server", __doc__)
    run = actions.add_parser(
        "run", help="play test cases against a KMIP server over mutual TLS",
        description="Play OASIS KMIP profile test cases against a KMIP server and judge each "
        "response under the permitted variations of KMIP Profiles 4.1.",
    )
    run.add_argument("--host", default="127.0.0.1", help="server address (default 127.0.0.1)")
    run.add_argument("--port", type=int, default=5696, help="server port (default 5696)")
    run.add_argument("--cert", required=True, type=Path, help="client certificate (PEM)")
    run.add_argument("--key", required=True, type=Path, help="client private key (PEM)")
    run.add_argument("--ca", required=True, type=Path, help="CA that issued the server's (PEM)")
    run.add_argument("--check-hostname", action="store_true",
                     help="also check the server certificate's names against --host")
    run.add_argument("--vectors", type=Path, default=None,
                     help="the kmip-vectors directory (default $KCM_VECTORS, else "
                     f"{DEFAULT_VECTORS})")
    run.add_argument("--case", dest="cases", action="append", metavar="PATTERN",
                     help="shell pattern of case names to play, such as 'SKLC-M-*-21' "
                     "(repeatable; default: the mandatory cases of the claimed profiles)")
    run.add_argument("--timeout", type=float, default=30.0,
                     help="seconds to wait for each response (default 30)")
    run.add_argument("-v", "--verbose", action="store_true",
                     help="print every finding of a failed step, and skipped Interop steps")
    run.set_defaults(run=_run, prog="kcm conformance run")


def _run(args: argparse.Namespace) -> int:
    from kcm.conformance.client import KmipClient
    from kcm.conformance.runner import MANDATORY_PATTERNS, run_case, select_cases

    for option in ("cert", "key", "ca"):
        path = getattr(args, option)
        if not path.is_file():
            raise CommandError(f"--{option} {path}: no such file")
    vectors = args.vectors or Path(os.environ.get("KCM_VECTORS", DEFAULT_VECTORS))
    try:
        cases = select_cases(vectors, args.cases or MANDATORY_PATTERNS)
    except FileNotFoundError as e:
        raise CommandError(str(e)) from e
    if not cases:
        raise CommandError(f"no test case matches {' '.join(args.cases or MANDATORY_PATTERNS)}")
    passed = failed = 0
    for path in cases:
        # One connection per case: a case's failure cannot leave the next one a broken stream.
        with KmipClient(args.host, args.port, cert=args.cert, key=args.key, ca=args.ca,
                        check_hostname=args.check_hostname, timeout=args.timeout) as client:
            result = run_case(path, client, now=int(time.time()))
        print(result.line(), flush=True)
        if args.verbose:
            if result.skipped:
                steps = ", ".join(str(step) for step in result.skipped)
                print(f"    skipped Interop step(s) {steps}: Operation Not Supported")
            if result.failure is not None:
                for finding in result.failure.findings:
                    print(f"    {finding}")
        if result.passed:
            passed += 1
        else:
            failed += 1
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1
