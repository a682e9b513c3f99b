"""The compiled load generator (``benchmarks/loadgen.c``) as a benchmark client.

Python clients cost about 85 µs of CPU per request on this kind of machine (the ``ssl``
module, the socket calls, the interpreter), so when 8 of them share two cores with the server
under test they take a large part of the machine and cap what a server with more processes
can show. :func:`native_load` drives the same mutual-TLS round trips from threads of one C
process (OpenSSL; a blocked thread per connection, or with ``event_threads`` a few
threads sharing the connections through epoll), checks every answer and returns the same
:class:`benchmarks.harness.Outcome` as :func:`benchmarks.harness.load`. An echo's answer must
be the request byte for byte; any other is compared with a reference answer the program
checked in full first (a Response Message with the request's Operation and Result Status
Success in each Batch Item): the same TTLV tree, tags, types and lengths, every value the
same but those that vary from answer to answer: Byte Strings and Date-Times (IV, ciphertext,
tag, time stamps), and the correlation values (``loadgen.c``). A
bad answer is a failure of the outcome, and the program says how many on standard error.

The program is built on first use with the machine's C compiler into ``.bench-build/`` at
the repository root (it needs OpenSSL's headers: Debian's ``libssl-dev``), and rebuilt when
``loadgen.c`` changes.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks.harness import Outcome, Server, cpu_snapshot, new_histogram

SOURCE = Path(__file__).with_name("loadgen.c")
BUILD = Path(__file__).resolve().parent.parent / ".bench-build"

_HEAD = struct.Struct("<4Q")


class NativeClientUnavailable(RuntimeError):
    """The load generator cannot be built here (no C compiler or no OpenSSL headers)."""


def build(path: Path = SOURCE, *, library: bool = False) -> Path:
    """The executable of ``path`` (a C program of ``benchmarks/`` using OpenSSL; by default
    the load generator), compiled when missing or out of date; with ``library``, the shared
    library of ``path`` instead (one that takes its OpenSSL functions as addresses, linked
    to no libssl)."""
    source = path.read_bytes()
    binary = BUILD / (f"{path.stem}-{hashlib.sha256(source).hexdigest()[:12]}"
                      + (".so" if library else ""))
    if binary.exists():
        return binary
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise NativeClientUnavailable("no C compiler (cc or gcc) on PATH")
    BUILD.mkdir(exist_ok=True)
    linking = ["-shared", "-fPIC", "-lpthread"] if library else ["-lssl", "-lcrypto", "-lpthread"]
    built = subprocess.run(
        [compiler, "-O2", "-Wall", "-o", str(binary), str(path), *linking],
        capture_output=True, text=True)
    if built.returncode != 0:
        raise NativeClientUnavailable(
            f"building benchmarks/{path.name} failed (OpenSSL's headers: apt-get install "
            f"libssl-dev):\n{built.stderr.strip()}")
    return binary


def native_load(name: str, server: Server, wire: bytes, *, connections: int,
                requests: int, warmup: int, watched: Sequence[Server],
                echo: bool = False, event_threads: int = 0) -> Outcome:
    """``connections`` mutual-TLS connections to ``server``, each sending ``wire``
    ``warmup`` times untimed, then ``requests`` times timed, all connections together.
    With ``event_threads`` above 0 that many threads share the connections (epoll);
    otherwise each connection has a thread. Server CPU is read while the timed part runs
    (the program waits for a word on its standard input before and after it)."""
    binary = build()
    with tempfile.TemporaryDirectory(prefix="kcm-loadgen-") as scratch:
        request_file, out_file = Path(scratch) / "request", Path(scratch) / "out"
        request_file.write_bytes(wire)
        pki = server.pki
        host = server.path if server.path is not None else "127.0.0.1"
        command = [str(binary), host, str(server.port), str(pki.app.cert),
                   str(pki.app.key), str(pki.ca.cert), str(request_file), str(connections),
                   str(requests), str(warmup), str(out_file)] + (["--echo"] if echo else []) + (
                   ["--event-threads", str(event_threads)] if event_threads > 0 else [])
        with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) as process:
            assert process.stdin is not None and process.stdout is not None
            _expect(process, "ready")
            before = cpu_snapshot(watched)
            process.stdin.write("go\n")
            process.stdin.flush()
            _expect(process, "done")
            after = cpu_snapshot(watched)
            process.stdin.write("close\n")
            process.stdin.flush()
            status = process.wait(timeout=60)
        data = out_file.read_bytes() if out_file.exists() else b""
    if len(data) < _HEAD.size:
        raise RuntimeError(f"the load generator wrote no figures (exit status {status})")
    wall_ns, cpu_ns, failures, count = _HEAD.unpack_from(data)
    histogram = new_histogram()
    for (latency,) in struct.iter_unpack("<Q", data[_HEAD.size:_HEAD.size + 8 * count]):
        if latency:
            histogram.record_value(max(1_000, latency))
    problems = ["a bad answer or a broken connection"] * failures
    if status == 3:  # bad answers: the program's FAILED line on standard error says more
        bad = "bad answers (see loadgen's FAILED line on standard error)"
        if problems:
            problems[0] = bad
        else:  # in the warm-up only
            problems.append(bad)
    elif status not in (0, 1):
        problems.append(f"the load generator exited with status {status}")
    seconds = wall_ns / 1e9
    server_cpu = {s.name: after[1][s.name] - before[1][s.name] for s in watched}
    client_cpu = cpu_ns / 1e9
    foreign = (after[0] - before[0]) - sum(server_cpu.values()) - client_cpu
    return Outcome(name, connections, count, problems, seconds, [histogram], client_cpu,
                   server_cpu, max(0.0, foreign) / seconds if seconds else 0.0, [])


def _expect(process: subprocess.Popen, word: str) -> None:
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if line != word:
        process.kill()
        raise RuntimeError(f"the load generator said {line!r}, not {word!r}")
