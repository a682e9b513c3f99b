"""kcm.client's envelope: seal/open of 64-byte and 4 KiB records with the data-key cache,
per core, and the gateway requests it costs per million records; against the same records
encrypted through PyKMIP's client (one gateway Encrypt per record), and through kcm.client
itself without the cache (one Encrypt per record, blocking and pipelined).

Starts a kcm-core and a kcm-gateway (kcm.testing.processes) in a temporary directory. The
envelope runs in this process, on one thread: records/s is wall-clock on one core, and the
CPU seconds of this process are reported beside it. Per-record latencies are the means of
batches of 1,000 records (timing each record alone would cost as much as sealing it), given
as percentiles over the batches. The target is >= 100,000 64-byte seals/s on one core.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import parse_args, work_directory  # noqa: E402
from kcm.client import Session  # noqa: E402
from kcm.client.data_key_cache import CacheLimits  # noqa: E402
from kcm.client.sealer import Envelope  # noqa: E402
from kcm.testing.processes import GatewayProcess, deploy, running  # noqa: E402

BATCH = 1000
TARGET_64B_SEALS = 100_000


def timed(what: str, records: int, one: Callable[[int], object], batch: int = BATCH) -> dict:
    """Run ``one(i)`` for ``records`` records in batches of ``batch``; rate, CPU and the
    percentiles of the batches' mean per record."""
    batches = []
    cpu = time.process_time()
    started = time.perf_counter()
    done = 0
    while done < records:
        count = min(batch, records - done)
        t = time.perf_counter_ns()
        for i in range(done, done + count):
            one(i)
        batches.append((time.perf_counter_ns() - t) / count)
        done += count
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu
    batches.sort()
    result = {"what": what, "records": records, "per_s": records / wall,
              "per_cpu_s": records / cpu if cpu else float("inf"),
              "p50_us": _pct(batches, 50) / 1000, "p99_us": _pct(batches, 99) / 1000,
              "max_us": batches[-1] / 1000}
    print(f"{what:44} {result['per_s']:>12,.0f}/s  {result['per_cpu_s']:>12,.0f}/CPU-s  "
          f"p50 {result['p50_us']:8.2f} us  p99 {result['p99_us']:8.2f} us", flush=True)
    return result


def _figure(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


def _pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def records_per_key(rate: float, size: int) -> float:
    """Records one data key seals at ``rate`` records/s under the default bounds (the first
    of age, messages and bytes it reaches)."""
    limits = CacheLimits()
    return min(limits.max_messages, rate * limits.max_age, limits.max_bytes / size)


def envelope_runs(session_for: Callable[[], Session], size: int, records: int) -> list[dict]:
    payload = os.urandom(size)
    out = []
    sealer = Envelope(session_for())
    blobs: list[bytes] = []
    keep = min(records, 20_000)

    def seal(i: int) -> None:
        blob = sealer.seal(payload)
        if i < keep:
            blobs.append(blob)

    result = timed(f"kcm.client Envelope.seal {size} B", records, seal)
    requests = sealer.stats["create"] + sealer.stats["get"]
    result["gateway_requests_per_million"] = requests * 1_000_000 / records
    result["sustained_per_million"] = 2 * 1_000_000 / records_per_key(result["per_s"], size)
    out.append(result)

    opener = Envelope(session_for())  # a reader that has to fetch the key once
    result = timed(f"kcm.client Envelope.open {size} B", records,
                   lambda i: opener.open(blobs[i % keep]))
    result["gateway_requests_per_million"] = opener.stats["get"] * 1_000_000 / records
    # A reader Gets each key once per max_age: at most as often as the writer makes them.
    result["sustained_per_million"] = 1_000_000 / records_per_key(result["per_s"], size)
    out.append(result)
    assert opener.open(blobs[0]) == payload
    sealer.close()
    opener.close()
    return out


def pykmip_runs(gateway: GatewayProcess, token: str, size: int, records: int) -> list[dict]:
    from kmip.core import enums

    payload = os.urandom(size)
    client = gateway.pykmip()
    parameters = {"block_cipher_mode": enums.BlockCipherMode.CBC,
                  "padding_method": enums.PaddingMethod.PKCS5,
                  "cryptographic_algorithm": enums.CryptographicAlgorithm.AES}
    sealed: list[tuple[bytes, bytes]] = []

    def encrypt(i: int) -> None:
        data, iv = client.encrypt(payload, uid=token, cryptographic_parameters=parameters)
        if i < 100:
            sealed.append((data, iv))

    try:
        out = [timed(f"PyKMIP encrypt at the gateway {size} B", records, encrypt, 1)]
        out.append(timed(f"PyKMIP decrypt at the gateway {size} B", records,
                         lambda i: client.decrypt(sealed[i % len(sealed)][0], uid=token,
                                                  cryptographic_parameters=parameters,
                                                  iv_counter_nonce=sealed[i % len(sealed)][1]),
                         1))
    finally:
        client.close()
    for result in out:
        result["gateway_requests_per_million"] = 1_000_000
    return out


def kcm_encrypt_runs(session: Session, token: str, size: int, records: int) -> list[dict]:
    payload = os.urandom(size)
    result = timed(f"kcm.client Session.encrypt (remote) {size} B", records,
                   lambda i: session.encrypt(token, payload), 1)
    result["gateway_requests_per_million"] = 1_000_000
    return [result]


def pipelined_runs(gateway: GatewayProcess, token: str, sizes: tuple[int, ...],
                   records: int) -> list[dict]:
    """Encrypts with 1,000 in flight on one connection of the Twisted client (one reactor
    run for every size: a reactor does not restart)."""
    from twisted.internet import defer, task

    from kcm.client.pool import KmipClient

    pki = gateway.pki
    out: list[dict] = []

    async def run(reactor) -> None:
        client = KmipClient.tls(reactor, [f"127.0.0.1:{gateway.port}"], cert=str(pki.app.cert),
                                key=str(pki.app.key), ca=str(pki.ca.cert), size=1)
        for size in sizes:
            payload = os.urandom(size)
            await client.encrypt(token, payload)
            cpu = time.process_time()
            started = time.perf_counter()
            done = 0
            while done < records:
                count = min(1000, records - done)
                await defer.gatherResults([client.encrypt(token, payload)
                                           for _ in range(count)])
                done += count
            wall = time.perf_counter() - started
            result = {"what": f"kcm.client KmipClient.encrypt, 1000 in flight {size} B",
                      "records": records, "per_s": records / wall,
                      "per_cpu_s": records / (time.process_time() - cpu),
                      "gateway_requests_per_million": 1_000_000}
            print(f"{result['what']:44} {result['per_s']:>12,.0f}/s  "
                  f"{result['per_cpu_s']:>12,.0f}/CPU-s", flush=True)
            out.append(result)
        await client.close()

    try:
        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    except SystemExit as e:
        if e.code:
            raise
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int,
                        help="records per envelope run (default 1000000; 20000 with --quick)")
    parser.add_argument("--baseline-records", type=int,
                        help="records per PyKMIP / remote run (default 2000; 200 with --quick)")
    args = parse_args(parser, records=(1_000_000, 20_000), baseline_records=(2000, 200))
    with work_directory("kcm-sdk-bench-", args.keep) as work:
        return measure(args, work)


def measure(args: argparse.Namespace, work: Path) -> int:
    core = deploy(work / "core", f"sqlite:///{work / 'core' / 'kcm.db'}")
    results: list[dict] = []
    with running(core, GatewayProcess(work / "gateway", core)) as (_, gateway):
        pki = core.pki

        def session_for() -> Session:
            return Session.connect("127.0.0.1", gateway.port,
                                   cert=str(pki.app.cert), key=str(pki.app.key),
                                   ca=str(pki.ca.cert))

        print(f"# {os.cpu_count()} CPUs; envelope in one thread of this process; "
              f"{args.records:,} records per envelope run, {args.baseline_records:,} per "
              "baseline run", flush=True)
        for size in (64, 4096):
            records = args.records if size == 64 else max(1, args.records // 5)
            results += envelope_runs(session_for, size, records)
        with session_for() as session:
            token = session.create_l4()
            for size in (64, 4096):
                results += pykmip_runs(gateway, token, size, args.baseline_records)
                results += kcm_encrypt_runs(session, token, size, args.baseline_records)
        results += pipelined_runs(gateway, token, (64, 4096), args.baseline_records * 5)
    report(results)
    seal64 = next(r for r in results if r["what"] == "kcm.client Envelope.seal 64 B")
    return 0 if seal64["per_s"] >= TARGET_64B_SEALS or args.quick else 1


def report(results: list[dict]) -> None:
    by = {r["what"]: r for r in results}
    print()
    print("| path | record | records/s (one core) | records per CPU-second | p50 | p99 "
          "| gateway requests per million records: this run | sustained |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        size = r["what"].rsplit(" ", 2)[-2] + " B"
        name = r["what"].rsplit(" ", 2)[0]
        p50 = f"{r['p50_us']:.2f} µs" if "p50_us" in r else "—"
        p99 = f"{r['p99_us']:.2f} µs" if "p99_us" in r else "—"
        print(f"| {name} | {size} | {r['per_s']:,.0f} | {r['per_cpu_s']:,.0f} | {p50} | {p99} "
              f"| {r['gateway_requests_per_million']:,.0f} "
              f"| {_figure(r.get('sustained_per_million', r['gateway_requests_per_million']))} |")
    print()
    for size in (64, 4096):
        seal = by[f"kcm.client Envelope.seal {size} B"]
        opened = by[f"kcm.client Envelope.open {size} B"]
        encrypt = by[f"PyKMIP encrypt at the gateway {size} B"]
        decrypt = by[f"PyKMIP decrypt at the gateway {size} B"]
        print(f"{size} B: seal {seal['per_s'] / encrypt['per_s']:,.0f}x PyKMIP's encrypt, "
              f"open {opened['per_s'] / decrypt['per_s']:,.0f}x PyKMIP's decrypt")
    seal64 = by["kcm.client Envelope.seal 64 B"]
    met = "met" if seal64["per_s"] >= TARGET_64B_SEALS else "NOT met"
    print(f"target >= {TARGET_64B_SEALS:,} 64-byte seals/s on one core: {met} "
          f"({seal64['per_s']:,.0f}/s)")
    print(f"p50/p99: envelope runs, of the mean per record over batches of {BATCH:,} records; "
          "the others, of each record")
    print("sustained: at this rate and the default bounds (max_age 300 s, 2^24 records, "
          "2^36 bytes per key): 2 requests (Create, Get) per key sealed, 1 (Get) per key "
          "opened")


if __name__ == "__main__":
    sys.exit(main())
