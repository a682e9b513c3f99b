"""Hash, RNG Retrieve and RNG Seed: cryptographic services that use no managed object
(KMIP 1.4 §4.35-§4.37; 2.1 §6.1.24, §6.1.47, §6.1.48). Any authenticated principal may
call them; each is audited like every operation.

* Hash: the digest of the data with the Hashing Algorithm of the Cryptographic Parameters
  (:func:`kcm.crypto.hashing.digest`: SHA-1, the SHA-2 family and SHA-3). Streaming
  accumulates the data in the Correlation Value; it holds nothing secret (the client
  sent all of it), so it is carried as is, bounded like every stream. Unlike the keyed
  streams' values (:mod:`kcm.core.stream_parts`) it may be sent again: a replay only
  hashes data the client could hash anyway, and counts against nothing.
* RNG Retrieve: Data Length bytes (1 to :data:`MAX_RNG_BYTES`) from the server's random
  source, the operating system's CSPRNG.
* RNG Seed: the seed is mixed into the operating system's CSPRNG (written to its input
  pool, which does not credit it as entropy, so a client can add unpredictability but
  never weaken the generator) and the answer's Data Length is the number of bytes used:
  all of them. The CS-RNG profile permits a server to accept all, part or none of a seed,
  or to refuse (CS-RNG-O-1..4); KCM accepts all.
"""

from __future__ import annotations

import struct

from kcm.core.context import OperationContext
from kcm.crypto.hashing import digest
from kcm.crypto.sealed_state import check_stream_size
from kcm.kmip.enums import HashingAlgorithm, ResultReason
from kcm.kmip.errors import KmipError
from kcm.kmip.labels import enum_label
from kcm.kmip.payloads import (
    HashRequest,
    HashResponse,
    RngRetrieveRequest,
    RngRetrieveResponse,
    RngSeedRequest,
    RngSeedResponse,
)

__all__ = ["MAX_RNG_BYTES", "MAX_SEED_BYTES", "hash_data", "rng_retrieve", "rng_seed"]

#: The most random bytes one RNG Retrieve returns.
MAX_RNG_BYTES = 1 << 16
#: The largest seed RNG Seed takes.
MAX_SEED_BYTES = 1 << 12
_HASH_STREAM = struct.Struct(">4sI")  # format mark, Hashing Algorithm
_HASH_MARK = b"KCMh"


def hash_data(ctx: OperationContext, request: HashRequest) -> HashResponse:
    params = request.cryptographic_parameters
    streaming = bool(request.init_indicator) or request.correlation_value is not None
    if request.correlation_value is not None:
        algorithm, data = _open_hash_stream(request.correlation_value)
    else:
        algorithm = None if params is None else params.hashing_algorithm
        data = b""
    if request.data is None and not streaming:
        raise KmipError(ResultReason.INVALID_MESSAGE, "the request has no Data")
    data += request.data or b""
    check_stream_size(len(data))
    if algorithm is None:
        digest(None, b"")  # refuses: no Hashing Algorithm
    ctx.audit_detail["hash"] = enum_label(HashingAlgorithm, algorithm)
    ctx.audit_detail["bytes"] = len(request.data or b"")
    if streaming and not request.final_indicator:
        digest(algorithm, b"")  # refuse an unsupported algorithm at the stream's start
        return HashResponse(correlation_value=_HASH_STREAM.pack(_HASH_MARK, int(algorithm))
                            + data)
    return HashResponse(data=digest(algorithm, data))


def _open_hash_stream(value: bytes) -> tuple[int, bytes]:
    if len(value) < _HASH_STREAM.size or value[:4] != _HASH_MARK:
        raise KmipError(ResultReason.INVALID_CORRELATION_VALUE,
                        "the Correlation Value is not a Hash stream")
    _, algorithm = _HASH_STREAM.unpack_from(value)
    return algorithm, value[_HASH_STREAM.size:]


def rng_retrieve(ctx: OperationContext, request: RngRetrieveRequest) -> RngRetrieveResponse:
    length = request.data_length
    if length is None:
        raise KmipError(ResultReason.INVALID_MESSAGE, "the request has no Data Length")
    if length < 1:
        raise KmipError(ResultReason.INVALID_FIELD, "Data Length must be positive")
    if length > MAX_RNG_BYTES:
        raise KmipError(ResultReason.SERVER_LIMIT_EXCEEDED,
                        f"RNG Retrieve returns at most {MAX_RNG_BYTES} bytes")
    ctx.audit_detail["bytes"] = length
    return RngRetrieveResponse(data=ctx.random_bytes(length))  # type: ignore[operator]


def rng_seed(ctx: OperationContext, request: RngSeedRequest) -> RngSeedResponse:
    seed = request.data
    if seed is None:
        raise KmipError(ResultReason.INVALID_MESSAGE, "the request has no Data")
    if len(seed) > MAX_SEED_BYTES:
        raise KmipError(ResultReason.SERVER_LIMIT_EXCEEDED,
                        f"RNG Seed takes at most {MAX_SEED_BYTES} bytes")
    used = ctx.keyring.seed_random(seed)
    ctx.audit_detail["bytes"] = used
    return RngSeedResponse(data_length=used)
