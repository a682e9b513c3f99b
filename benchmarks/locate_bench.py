"""Locate in a large tenant, against a real `twistd kcm-core` on SQLite.

Builds a deployment whose tenant ``demo`` holds ``--objects`` ordinary objects (default
50,000: SQL copies of one key the application ``app`` created, with the Cryptographic Usage
Mask Encrypt | Decrypt), starts kcm-core with its default limits (10 s request deadline) and
times Locates of ``app``, one at a time, each ``--rounds`` times (median, seconds; a Locate
the core refused is printed with its Result Reason):

* a page of 100 (Maximum Items), and the same counted (Offset Items 0: Located Items);
* by Cryptographic Usage Mask Encrypt, counted; by Usage Mask Sign, which no object has;
* by an ``x-`` attribute no object has, and one that one object has (added to the oldest
  copy through kcm-core before the timing), by a Name one object has (added likewise) and
  one no object has, and by a Link to an object none links to: the store keeps their keys
  (migration 0008) or names, and reads the few objects they name by identifier;
* by a Contact Information no object has: judged object by object (the store keeps no
  copy of it), the cost every such criterion has.

    .venv/bin/python benchmarks/locate_bench.py [--objects N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kcm.kmip.attributes import Attribute, Name  # noqa: E402
from kcm.kmip.enums import (  # noqa: E402
    CryptographicUsageMask,
    NameType,
    ObjectType,
    Operation,
    ResultReason,
    ResultStatus,
)
from kcm.kmip.payloads import (  # noqa: E402
    AddAttributeRequest,
    CreateRequest,
    LocateRequest,
)
from kcm.kmip.tags import Tag  # noqa: E402
from kcm.testing.processes import CoreProcess, deploy  # noqa: E402
from kcm.testing.requests import aes256, item, request, response  # noqa: E402
from kcm.ttlv import Item, ItemType  # noqa: E402

USAGE = CryptographicUsageMask.ENCRYPT | CryptographicUsageMask.DECRYPT


def _mask(bits: int) -> Attribute:
    return Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, bits)


def _name(text: str) -> Attribute:
    return Attribute.of(Tag.NAME, Name(value=text, type=NameType.UNINTERPRETED_TEXT_STRING))


def _custom(name: str) -> Attribute:
    return Attribute.vendor("x", name, Item(Tag.ATTRIBUTE_VALUE, ItemType.TEXT_STRING, "found"))


#: The Locates timed: (label, request).
LOCATES = [
    ("Maximum Items 100", LocateRequest(maximum_items=100)),
    ("Offset Items 0, Maximum Items 100 (counted)",
     LocateRequest(maximum_items=100, offset_items=0)),
    ("Usage Mask Encrypt, counted", LocateRequest(
        maximum_items=100, offset_items=0, attributes=[_mask(CryptographicUsageMask.ENCRYPT)])),
    ("Usage Mask Sign, which no object has",
     LocateRequest(attributes=[_mask(CryptographicUsageMask.SIGN)])),
    ("an x- attribute no object has", LocateRequest(attributes=[_custom("bench-absent")])),
    ("an x- attribute one object has", LocateRequest(attributes=[_custom("bench-marker")])),
    ("a Name one object has", LocateRequest(attributes=[_name("bench-name")])),
    ("a Name no object has", LocateRequest(attributes=[_name("bench-absent")])),
    ("a Link to an object none links to", LocateRequest(attributes=[Attribute(
        Tag.LINK, Item(Tag.LINK, ItemType.STRUCTURE, [
            Item(Tag.LINKED_OBJECT_IDENTIFIER, ItemType.TEXT_STRING, "nobody")]))])),
    ("Contact Information no object has", LocateRequest(attributes=[
        Attribute.of(Tag.CONTACT_INFORMATION, "nobody")])),
]


def build(root: Path, objects: int) -> CoreProcess:
    """A deployment in ``root`` whose tenant demo holds ``objects`` copies of app's key."""
    core = deploy(root, f"sqlite:///{root / 'kcm.db'}")
    core.start()
    try:
        with core.client("app") as kmip:
            [created] = response(kmip.send(request(item(Operation.CREATE, CreateRequest(
                object_type=ObjectType.SYMMETRIC_KEY,
                attributes=aes256([_mask(USAGE)])))))).batch_items
        assert created.result_status == ResultStatus.SUCCESS, created.result_message
    finally:
        core.stop()
    connection = sqlite3.connect(root / "kcm.db")
    try:
        columns = [row[1] for row in connection.execute("PRAGMA table_info(managed_objects)")]
        base = connection.execute("SELECT max(created_seq) FROM managed_objects").fetchone()[0]
        # (copies without a row MAC, as an earlier release wrote rows: the original's
        # MAC is not theirs)
        made = {"uid": "'copy-' || n", "created_seq": f"{base} + n", "row_mac": "NULL"}
        selected = ", ".join(made.get(column, column) for column in columns)
        connection.execute(
            f"INSERT INTO managed_objects ({', '.join(columns)}) "
            "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq "
            f"WHERE n < {objects - 1}) "
            f"SELECT {selected} FROM seq, (SELECT * FROM managed_objects WHERE uid = ?)",
            (created.response_payload.unique_identifier,))
        connection.commit()
    finally:
        connection.close()
    return core


def timed(core: CoreProcess, payload: LocateRequest, rounds: int) -> str:
    """The median time of ``rounds`` Locates, and what they answered."""
    times, said = [], ""
    with core.client("app") as kmip:
        for _ in range(rounds):
            started = time.perf_counter()
            [answer] = response(kmip.send(request(item(Operation.LOCATE, payload)))).batch_items
            times.append(time.perf_counter() - started)
            if answer.result_status != ResultStatus.SUCCESS:
                said = f"{ResultReason(answer.result_reason).name}: {answer.result_message}"
            else:
                found = answer.response_payload
                said = (f"{len(found.unique_identifiers)} identifiers"
                        + ("" if found.located_items is None
                           else f", Located Items {found.located_items}"))
    return f"{statistics.median(times):7.3f} s  ({said})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kcm-locate-bench-") as work:
        started = time.perf_counter()
        core = build(Path(work) / "core", args.objects)
        print(f"tenant demo: {args.objects} objects, built in "
              f"{time.perf_counter() - started:.1f} s; median of {args.rounds} Locates of app")
        core.start()
        try:
            with core.client("app") as kmip:
                [marked] = response(kmip.send(request(item(
                    Operation.ADD_ATTRIBUTE, AddAttributeRequest(
                        unique_identifier="copy-1", attribute=_custom("bench-marker")))))
                ).batch_items
                [named] = response(kmip.send(request(item(
                    Operation.ADD_ATTRIBUTE, AddAttributeRequest(
                        unique_identifier="copy-2", attribute=_name("bench-name")))))
                ).batch_items
            assert marked.result_status == ResultStatus.SUCCESS, marked.result_message
            assert named.result_status == ResultStatus.SUCCESS, named.result_message
            for label, payload in LOCATES:
                print(f"{label:<45} {timed(core, payload, args.rounds)}")
        finally:
            core.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
