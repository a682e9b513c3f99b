"""Append generated audit records to an initialised kcm-core database, to measure how long
``kcm audit verify``, ``kcm audit archive`` and ``kcm core backup`` take on a chain of a
given length (docs/operations.md, "Audit").

Run from the repository root, kcm-core stopped::

    python tools/gen_audit_records.py CONFIG COUNT

``CONFIG`` is the kcm-core configuration (its database and L1 key file); each record is of
a request's size (a principal, a gateway, a source address, an object id, a correlation id
and a small ``detail``), 2,000 to a transaction.
"""

from __future__ import annotations

import sys
import time

from kcm.core.audit import AuditEvent, append_audit
from kcm.core.config import load_config
from kcm.core.l1 import open_configured_l1
from kcm.core.store.engine import Store


def main(config_path: str, count: int) -> None:
    config = load_config(config_path)
    l1, _ = open_configured_l1(config)
    store = Store(config.database)
    store.audit_key = l1.audit_key()
    started = time.perf_counter()
    for start in range(0, count, 2000):
        store.run_sync(lambda session, start=start: [append_audit(session, AuditEvent(
            principal="spiffe://kcm.example/tenant/t1/service/payments", operation="Get",
            result_status="SUCCESS", correlation_id=f"c0ffee{n:010d}",
            source="10.0.3.17:51234", tenant="t1", gateway="spiffe://kcm.example/gateway/gw1",
            object_ids=(f"5f0c6a1e-{n % 65536:04x}-4d2b-9a3e-2c6f1b7d8e90",),
            detail={"client_correlation": "req-42"}))
            for n in range(start, min(count, start + 2000))])
    store.stopService()
    print(f"{count} audit records appended in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
