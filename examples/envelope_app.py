"""An application that keeps customer records encrypted with kcm.client's envelope.

It stores records in a SQLite table as envelopes sealed under L4 data keys of the gateway
(one key seals many records; docs/sdk.md), with the record's id as associated data so a
blob moved to another row does not open; it reads them back, and it seals a file as a
stream. Control operations (none here) would go to the core if ``--core`` is given.

Run from the repository root while ``make run`` is up::

    .venv/bin/python examples/envelope_app.py
    .venv/bin/python examples/envelope_app.py --gateway 127.0.0.1:5698 --core 127.0.0.1:5696
"""

from __future__ import annotations

import argparse
import io
import sqlite3
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kcm.client import EnvelopeError, Session, SplitHorizon  # noqa: E402
from kcm.client.data_key_cache import CacheLimits  # noqa: E402
from kcm.client.sealer import Envelope  # noqa: E402
from kcm.client.stream import open_stream, seal_stream  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", default="127.0.0.1:5698",
                        help="kcm-gateway(s), comma-separated: failover in order")
    parser.add_argument("--core", help="kcm-core, for control operations (default: the "
                                       "gateway forwards them)")
    parser.add_argument("--pki", default="var/pki", help="where app.pem, app.key, ca.pem are")
    args = parser.parse_args()
    files = {"cert": f"{args.pki}/app.pem", "key": f"{args.pki}/app.key",
             "ca": f"{args.pki}/ca.pem"}

    gateway = Session.connect(args.gateway.split(","), **files)
    client = SplitHorizon(gateway, Session.connect([args.core], **files) if args.core else None)
    # Each data key seals at most 1M records and lives 5 minutes here (defaults: 2^24, 300 s).
    envelope = Envelope(client, CacheLimits(max_age=300.0, max_messages=1_000_000))

    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, sealed BLOB)")
    for customer_id, record in enumerate([b"Ada, 12 Analytical St", b"Grace, 1 Cobol Way",
                                          b"Alan, 8 Turing Rd"], start=1):
        aad = b"customers/%d" % customer_id
        db.execute("INSERT INTO customers VALUES (?, ?)", (customer_id,
                                                           envelope.seal(record, aad)))

    for customer_id, sealed in db.execute("SELECT id, sealed FROM customers ORDER BY id"):
        print(customer_id, envelope.open(sealed, b"customers/%d" % customer_id).decode())

    # A blob copied to another row does not open there.
    (blob,) = db.execute("SELECT sealed FROM customers WHERE id = 1").fetchone()
    try:
        envelope.open(blob, b"customers/2")
    except EnvelopeError as e:
        print("moved blob refused:", e)

    # Large data: a stream of chunks under a data key of its own.
    report = io.BytesIO(b"quarterly figures\n" * 100_000)
    sealed_file = io.BytesIO()
    seal_stream(envelope, report, sealed_file, aad=b"report.txt")
    restored = io.BytesIO()
    open_stream(envelope, io.BytesIO(sealed_file.getvalue()), restored, aad=b"report.txt")
    assert restored.getvalue() == report.getvalue()
    print(f"stream: {len(report.getvalue()):,} bytes sealed into "
          f"{len(sealed_file.getvalue()):,} and opened again")
    print("gateway requests:", envelope.stats)

    envelope.close()
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
