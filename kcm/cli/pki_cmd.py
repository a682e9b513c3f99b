"""``kcm pki``: a development PKI for running KCM locally and in tests.

* ``kcm pki init DIR [--trust-domain TD] [--tenant T] [--service S] [--host H ...] [--days N]
  [--force]``: write a CA and the core, gateway, operator, tenant admin, application, second
  tenant application and subject-only certificates into ``DIR`` (see :mod:`kcm.pki`).
* ``kcm pki issue DIR NAME IDENTITY [--trust-domain TD] [--days N] [--force]``: one more
  certificate from DIR's CA, ``NAME.pem`` and ``NAME.key``, for ``IDENTITY``
  (``tenant/T/service/S``, ``tenant/T/admin/NAME``, ``operator/NAME``, or
  ``gateway/NAME`` with its ``--host`` names).
"""

from __future__ import annotations

import argparse
import ipaddress
import re
from pathlib import Path

from kcm import pki
from kcm.cli import CommandError, add_command
from kcm.identity import validate_trust_domain

#: The longest ``--days``: a hundred years (far beyond it, dates leave what X.509 encodes).
MAX_DAYS = 36500

_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def host_problem(host: str) -> str | None:
    """Why ``host`` cannot go into a certificate's subject alternative names (it must be an
    IP address or a DNS name: labels of letters, digits and inner hyphens), or None."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if (not host or len(host) > 253
            or not all(_DNS_LABEL.fullmatch(label) for label in host.split("."))):
        return f"--host {host!r} is neither a DNS name nor an IP address"
    return None


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``pki`` and its actions to the ``kcm`` parser."""
    actions = add_command(subparsers, "pki", "create a development PKI (CA and certificates)",
                          __doc__)
    init = actions.add_parser(
        "init", help="write a development CA and certificates into DIR",
        description="Write a development CA and every certificate a local KCM deployment "
        "needs into DIR. Private keys are unencrypted, mode 0600. Not for production.",
    )
    init.add_argument("directory", metavar="DIR", type=Path, help="where to write (created)")
    init.add_argument("--trust-domain", default="kcm.test", help="SPIFFE trust domain")
    init.add_argument("--tenant", default="demo", help="the application's tenant")
    init.add_argument("--service", default="app", help="the application's service")
    init.add_argument(
        "--host", dest="hosts", action="append", metavar="HOST",
        help="DNS name or IP address for the core and gateway certificates (repeatable; "
        "default: localhost, 127.0.0.1 and ::1)",
    )
    init.add_argument("--days", type=int, default=pki.DEFAULT_DAYS,
                      help="validity of the leaf certificates in days")
    init.add_argument("--force", action="store_true", help="replace an existing PKI in DIR")
    init.set_defaults(run=_run_init, prog="kcm pki init")
    issue = actions.add_parser(
        "issue", help="issue one more certificate from DIR's CA",
        description="Issue a certificate from the CA in DIR (made by kcm pki init) "
        "for IDENTITY, written as DIR/NAME.pem and DIR/NAME.key (mode 0600): a client's, or "
        "a gateway's (gateway/NAME: server and client, naming its --host names too). Not "
        "for production.",
    )
    issue.add_argument("directory", metavar="DIR", type=Path, help="the PKI (ca.pem, ca.key)")
    issue.add_argument("name", metavar="NAME", help="the files' name: NAME.pem, NAME.key")
    issue.add_argument("identity", metavar="IDENTITY",
                       help="tenant/T/service/S, tenant/T/admin/NAME, operator/NAME or "
                       "gateway/NAME")
    issue.add_argument(
        "--host", dest="hosts", action="append", metavar="HOST",
        help="gateway/NAME only: DNS name or IP address its clients connect to (repeatable; "
        "default: localhost, 127.0.0.1 and ::1)",
    )
    issue.add_argument("--trust-domain", default=None,
                       help="SPIFFE trust domain (default: that of DIR's gateway.pem, "
                       "else kcm.test)")
    issue.add_argument("--days", type=int, default=pki.DEFAULT_DAYS,
                       help="validity in days")
    issue.add_argument("--force", action="store_true", help="replace NAME.pem and NAME.key")
    issue.set_defaults(run=_run_issue, prog="kcm pki issue")


def _run_init(args: argparse.Namespace) -> int:
    try:
        validate_trust_domain(args.trust_domain)
    except ValueError as e:
        raise CommandError(str(e)) from e
    if not 1 <= args.days <= MAX_DAYS:
        raise CommandError(f"--days must be from 1 to {MAX_DAYS}")
    for host in args.hosts or ():
        problem = host_problem(host)
        if problem is not None:
            raise CommandError(problem)
    try:
        paths = pki.init_pki(
            args.directory,
            trust_domain=args.trust_domain,
            tenant=args.tenant,
            service=args.service,
            hosts=tuple(args.hosts) if args.hosts else pki.DEFAULT_HOSTS,
            days=args.days,
            force=args.force,
        )
    except FileExistsError as e:
        raise CommandError(f"{e}; pass --force to replace it") from e
    except ValueError as e:
        raise CommandError(str(e)) from e
    print(f"development PKI written to {paths.directory}")
    for pair in paths.all():
        print(f"  {pair.cert.name:16} {pair.key.name}")
    return 0


def _run_issue(args: argparse.Namespace) -> int:
    if not 1 <= args.days <= MAX_DAYS:
        raise CommandError(f"--days must be from 1 to {MAX_DAYS}")
    if args.hosts and not args.identity.startswith("gateway/"):
        raise CommandError("--host is for a gateway's certificate (gateway/NAME) only")
    for host in args.hosts or ():
        problem = host_problem(host)
        if problem is not None:
            raise CommandError(problem)
    try:
        pair = pki.issue_identity(args.directory, args.name, args.identity,
                                  trust_domain=args.trust_domain, days=args.days,
                                  force=args.force,
                                  hosts=tuple(args.hosts) if args.hosts else pki.DEFAULT_HOSTS)
    except FileExistsError as e:
        raise CommandError(f"{e}; pass --force to replace it") from e
    except FileNotFoundError as e:
        raise CommandError(f"{e}: run kcm pki init {args.directory} first") from e
    except ValueError as e:
        raise CommandError(str(e)) from e
    trust_domain = args.trust_domain or pki.pki_trust_domain(args.directory) or "kcm.test"
    print(f"{pair.cert} and {pair.key}: spiffe://{trust_domain}/{args.identity}")
    return 0
