"""Codec micro-benchmark: a typical Encrypt request and its response.

Measures kcm's full decode, encode and classifier peek, and, as a baseline in
the same run, PyKMIP's decode and encode of the very same bytes (PyKMIP is the
reference Python KMIP implementation). Prints p50/p90/p99 per operation and the
ratio of the baseline's p50 to ours.

    .venv/bin/python benchmarks/codec_bench.py [--rounds N]
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

from kcm.ttlv import Item, ItemType, decode, encode  # noqa: E402
from kcm.ttlv.peek import peek_request  # noqa: E402
from kcm.ttlv.types import structure  # noqa: E402

INT, E, T, B = ItemType.INTEGER, ItemType.ENUMERATION, ItemType.TEXT_STRING, ItemType.BYTE_STRING
UID = "kcm4.AQAB4f3c2a1d9e8b7f6a5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1"
RECORD = bytes(range(256))


def _header(tag: int, *extra: Item) -> Item:
    version = structure(0x420069, Item(0x42006A, INT, 1), Item(0x42006B, INT, 4))
    return structure(tag, version, *extra, Item(0x42000D, INT, 1))


def encrypt_request() -> Item:
    """Encrypt 256 bytes with AES-GCM under a key named by a gateway-style token (KMIP 1.4)."""
    parameters = structure(
        0x42002B, Item(0x420011, E, 9), Item(0x420028, E, 3), Item(0x4200CF, INT, 16),
    )
    payload = structure(
        0x420079, Item(0x420094, T, UID), parameters, Item(0x4200C2, B, RECORD),
        Item(0x42003D, B, bytes(12)),
    )
    batch = structure(0x42000F, Item(0x42005C, E, 0x1F), payload)
    return structure(0x420078, _header(0x420077), batch)


def encrypt_response() -> Item:
    """Its answer: key id, ciphertext and IV (PyKMIP's payload has no field for the GCM tag)."""
    payload = structure(
        0x42007C, Item(0x420094, T, UID), Item(0x4200C2, B, RECORD), Item(0x42003D, B, bytes(12)),
    )
    batch = structure(0x42000F, Item(0x42005C, E, 0x1F), Item(0x42007F, E, 0), payload)
    stamp = Item(0x420092, ItemType.DATE_TIME, 1_700_000_000)
    return structure(0x42007B, _header(0x42007A, stamp), batch)


def measure(fn: Callable[[], object], rounds: int, inner: int = 20) -> list[float]:
    """Per-call times in µs: ``rounds`` samples, each the mean of ``inner`` back-to-back calls."""
    for _ in range(200):
        fn()
    clock = time.perf_counter_ns
    samples = []
    for _ in range(rounds):
        start = clock()
        for _ in range(inner):
            fn()
        samples.append((clock() - start) / inner / 1000)
    return samples


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    cuts = statistics.quantiles(samples, n=100)
    return statistics.median(samples), cuts[89], cuts[98]


def pykmip_codec(wire_request: bytes, wire_response: bytes) -> dict[str, Callable[[], object]]:
    from kmip.core import utils
    from kmip.core.messages import messages

    def decode_request() -> object:
        message = messages.RequestMessage()
        message.read(utils.BytearrayStream(wire_request))
        return message

    def decode_response() -> object:
        message = messages.ResponseMessage()
        message.read(utils.BytearrayStream(wire_response))
        return message

    request, response = decode_request(), decode_response()

    def encode_request() -> bytes:
        stream = utils.BytearrayStream()
        request.write(stream)
        return stream.buffer

    def encode_response() -> bytes:
        stream = utils.BytearrayStream()
        response.write(stream)
        return stream.buffer

    assert bytes(encode_request()) == wire_request, "PyKMIP does not reproduce the request"
    assert bytes(encode_response()) == wire_response, "PyKMIP does not reproduce the response"
    return {
        "decode request": decode_request, "encode request": encode_request,
        "decode response": decode_response, "encode response": encode_response,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()

    request, response = encrypt_request(), encrypt_response()
    wire_request, wire_response = encode(request), encode(response)
    assert decode(wire_request) == request and decode(wire_response) == response
    assert peek_request(wire_request, unique_identifier=True).items[0].unique_identifier == UID

    ours: dict[str, Callable[[], object]] = {
        "decode request": lambda: decode(wire_request),
        "encode request": lambda: encode(request),
        "decode response": lambda: decode(wire_response),
        "encode response": lambda: encode(response),
        "peek op + UID": lambda: peek_request(wire_request, unique_identifier=True),
    }
    try:
        baseline = pykmip_codec(wire_request, wire_response)
    except ImportError:
        baseline = {}
        print("PyKMIP is not installed: no baseline (pip install pykmip)")

    print(f"# kcm codec benchmark — Python {platform.python_version()}, {platform.machine()}")
    print(f"# Encrypt request {len(wire_request)} B, response {len(wire_response)} B; "
          f"{args.rounds} samples of 20 calls each; times in µs per call")
    print(f"{'operation':<18}{'p50':>9}{'p90':>9}{'p99':>9}  {'PyKMIP p50':>11}{'ratio':>9}")
    for name, fn in ours.items():
        p50, p90, p99 = percentiles(measure(fn, args.rounds))
        line = f"{name:<18}{p50:9.2f}{p90:9.2f}{p99:9.2f}"
        if name in baseline:
            base50 = percentiles(measure(baseline[name], max(100, args.rounds // 10)))[0]
            line += f"  {base50:11.1f}{base50 / p50:8.0f}x"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
