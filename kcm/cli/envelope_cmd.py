"""``kcm seal`` and ``kcm open``: envelope encryption of standard input to standard output,
on kcm.client (docs/sdk.md).

``kcm seal`` creates an L4 data key at kcm-gateway, fetches it, and writes standard input
sealed as one envelope (``--stream``: in chunks of ``--chunk-size`` bytes, the STREAM
construction, for input of any size); ``kcm open`` reads an envelope or a stream from
standard input, fetches its data key (a Get of the token it names) and writes the plaintext.
``--aad-hex`` binds associated data, which ``open`` must be given again. A stream is
written as its chunks prove authentic: when one does not, or the stream is cut, ``open``
stops there with exit status 1, and what it wrote is authentic but incomplete. Both take the
connection options of ``kcm key`` (``--server`` is the gateway; several, separated by
commas, fail over in order).

Exit status: 0 success; 1 the envelope cannot be opened (not authentic, malformed, or its
data key refused by the gateway, with the server's Result Reason) or the server refused a
request; 75 the gateway could not be reached or did not answer in time (try again); 2
anything else (bad usage, a TLS handshake refused).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from kcm.cli import CommandError
from kcm.cli.exit_status import EXIT_KMIP_FAILURE
from kcm.cli.key_cmd import _kmip, connection_options, parse_hex

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``seal`` and ``open`` to the ``kcm`` parser."""
    first_paragraph = (__doc__ or "").split("\n\n")[1]
    seal = subparsers.add_parser("seal", help="envelope-encrypt stdin to stdout under an L4",
                                 description=first_paragraph)
    connection_options(seal)
    seal.add_argument("--aad-hex", metavar="HEX", help="associated data to bind, in hex")
    seal.add_argument("--stream", action="store_true",
                      help="seal in chunks (STREAM), for input of any size")
    seal.add_argument("--chunk-size", type=int, default=64 * 1024, metavar="BYTES",
                      help="plaintext bytes per chunk with --stream (default: 65536)")
    seal.set_defaults(run=_run_seal, prog="kcm seal")

    open_ = subparsers.add_parser("open", help="open an envelope from stdin to stdout",
                                  description=first_paragraph)
    connection_options(open_)
    open_.add_argument("--aad-hex", metavar="HEX", help="the associated data it was sealed "
                                                        "with, in hex")
    open_.set_defaults(run=_run_open, prog="kcm open")


def _envelope_errors(args: argparse.Namespace, work: Any) -> Any:
    """``work(session)`` under :func:`_kmip`, with an envelope that cannot be opened as exit
    status 1 and its reason on one stderr line."""
    from kcm.client import EnvelopeError

    def run(session: Any) -> int:
        try:
            return work(session)
        except EnvelopeError as e:
            print(f"{args.prog}: {' '.join(str(e).split())}", file=sys.stderr)
            return EXIT_KMIP_FAILURE
    return _kmip(args, run)


def _run_seal(args: argparse.Namespace) -> int:
    aad = parse_hex(args.aad_hex, "--aad-hex") or b""
    if args.stream and not 0 < args.chunk_size <= 2 ** 24:
        raise CommandError(f"--chunk-size {args.chunk_size} is not in 1..16777216")

    def seal(session: Any) -> int:
        from kcm.client.sealer import Envelope
        from kcm.client.stream import seal_stream

        envelope = Envelope(session)
        try:
            if args.stream:
                seal_stream(envelope, sys.stdin.buffer, sys.stdout.buffer, aad,
                            args.chunk_size)
            else:
                sys.stdout.buffer.write(envelope.seal(sys.stdin.buffer.read(), aad))
            sys.stdout.buffer.flush()
        finally:
            envelope.close()
        return 0

    return _envelope_errors(args, seal)


def _run_open(args: argparse.Namespace) -> int:
    aad = parse_hex(args.aad_hex, "--aad-hex") or b""

    def open_(session: Any) -> int:
        from kcm.client.envelope import ALGORITHM_AES_256_GCM_STREAM
        from kcm.client.sealer import Envelope
        from kcm.client.stream import StreamOpener

        envelope = Envelope(session)
        source = sys.stdin.buffer
        head = source.read(5)
        try:
            if len(head) == 5 and head[4] == ALGORITHM_AES_256_GCM_STREAM:
                # Chunk by chunk, each authentic when written; a cut or changed stream
                # stops at the first bad chunk with exit status 1 (check it).
                opener = StreamOpener(envelope, aad)
                sys.stdout.buffer.write(opener.update(head))
                while block := source.read(64 * 1024 + 16):
                    sys.stdout.buffer.write(opener.update(block))
                sys.stdout.buffer.write(opener.finish())
            else:
                sys.stdout.buffer.write(envelope.open(head + source.read(), aad))
            sys.stdout.buffer.flush()
        finally:
            envelope.close()
        return 0

    return _envelope_errors(args, open_)
