"""L4 engine micro-benchmark: Encrypt of a record with an L4 token, in process.

Measures :meth:`kcm.l4.engine.L4Engine.encrypt` (parse the token, look up its L3, authorize,
check the tombstone set, open the token, AES-GCM the record, build the response payload)
with an in-memory key source, as the gateway runs it once its L3 is cached. The baseline,
in the same run, is ``cryptography``'s raw AESGCM encrypt of the same record under the same
DEK: the ratio is the engine's overhead over the cipher itself. Also times Create, Get and
Decrypt. Prints p50/p99 per operation (microseconds).

    .venv/bin/python benchmarks/l4_bench.py [--rounds N] [--record-size BYTES]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from kcm.identity import Principal, Role  # noqa: E402
from kcm.kmip.attributes import VENDOR_TAG, Attribute  # noqa: E402
from kcm.kmip.enums import ObjectType, State  # noqa: E402
from kcm.kmip.payloads import (  # noqa: E402
    CreateRequest,
    DecryptRequest,
    EncryptRequest,
    GetRequest,
)
from kcm.l4 import token  # noqa: E402
from kcm.l4.engine import L4Engine  # noqa: E402
from kcm.l4.identifiers import new_l3_uid  # noqa: E402
from kcm.l4.service_key import ServiceKey  # noqa: E402
from kcm.ttlv import Item, ItemType  # noqa: E402

VERSION = (2, 1)
APP = Principal(Role.SERVICE, "kcm.test", tenant="demo", service="app",
                uri="spiffe://kcm.test/tenant/demo/service/app")


class MemoryKeys:
    """What a gateway's warm L3 cache answers: dict lookups."""

    def __init__(self, l3: ServiceKey) -> None:
        self._by_uid = {l3.uid: l3}
        self._current = {(l3.tenant, l3.service): l3}
        self._tombstones: set[str] = set()

    def current_service_key(self, tenant: str, service: str) -> ServiceKey:
        return self._current[(tenant, service)]

    def service_key(self, uid: str) -> ServiceKey:
        return self._by_uid[uid]

    def is_tombstoned(self, token_id: str) -> bool:
        return token_id in self._tombstones


def timed(action: Callable[[], object], rounds: int) -> list[float]:
    for _ in range(min(rounds, 2000)):
        action()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(rounds):
        start = clock()
        action()
        samples.append((clock() - start) / 1000)
    return samples


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50_000)
    parser.add_argument("--record-size", type=int, default=256)
    args = parser.parse_args()

    l3 = ServiceKey(new_l3_uid(os.urandom), "demo", "app", 1, State.ACTIVE, os.urandom(32))
    engine = L4Engine(MemoryKeys(l3), os.urandom)
    level = Attribute.vendor("x", "kcm-level", Item(VENDOR_TAG, ItemType.TEXT_STRING, "L4"))
    create = CreateRequest(object_type=ObjectType.SYMMETRIC_KEY, attributes=[level])
    uid = engine.create(APP, VERSION, create).unique_identifier
    dek = token.open(uid, l3)
    record = os.urandom(args.record_size)
    encrypt = EncryptRequest(unique_identifier=uid, data=record)
    sealed = engine.encrypt(APP, VERSION, encrypt)
    decrypt = DecryptRequest(unique_identifier=uid, data=sealed.data,
                             iv_counter_nonce=sealed.iv_counter_nonce,
                             authenticated_encryption_tag=sealed.authenticated_encryption_tag)
    get = GetRequest(unique_identifier=uid)

    def raw_aesgcm() -> bytes:
        return AESGCM(dek).encrypt(os.urandom(12), record, None)

    cases: list[tuple[str, Callable[[], object]]] = [
        ("baseline: AESGCM(dek).encrypt", raw_aesgcm),
        ("engine Encrypt (L4)", lambda: engine.encrypt(APP, VERSION, encrypt)),
        ("engine Decrypt (L4)", lambda: engine.decrypt(APP, VERSION, decrypt)),
        ("engine Get (L4, Raw)", lambda: engine.get(APP, VERSION, get)),
        ("engine Create (L4)", lambda: engine.create(APP, VERSION, create)),
    ]
    print(f"L4 engine, {args.rounds} rounds, {args.record_size}-byte record; "
          f"Python {platform.python_version()} on {platform.machine()}")
    print(f"{'operation':34} {'p50 µs':>8} {'p99 µs':>8} {'mean µs':>8}")
    results = {}
    for name, action in cases:
        samples = timed(action, args.rounds)
        results[name] = samples
        print(f"{name:34} {percentile(samples, 50):8.2f} {percentile(samples, 99):8.2f} "
              f"{statistics.fmean(samples):8.2f}")
    base = percentile(results[cases[0][0]], 50)
    engine_p50 = percentile(results[cases[1][0]], 50)
    print(f"engine Encrypt p50 / raw AESGCM p50 = {engine_p50 / base:.1f}x "
          f"(+{engine_p50 - base:.1f} µs of Python per operation)")


if __name__ == "__main__":
    main()
