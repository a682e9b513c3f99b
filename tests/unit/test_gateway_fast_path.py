"""kcm.gateway.fast_path against the general path: for every request the fast path answers,
the general path's answer is the same, byte for byte (same clock, correlation id and random
bytes), over generated L4 requests in every protocol version and over mutations of them;
and the fast path does answer the plain ones (so the equality is not vacuous)."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from kcm.gateway import fast_path as fast_path_module
from kcm.gateway import handler as handler_module
from kcm.gateway.fast_path import FAST_VERSIONS, FastPath
from kcm.gateway.handler import GatewayRequestHandler
from kcm.gateway.l3_cache import L3Cache
from kcm.gateway.local_batch import LocalRunner
from kcm.kernel.plain_messages import NOT_PLAIN
from kcm.kmip.attributes import Attribute, CryptographicParameters, Link, Name
from kcm.kmip.enums import (
    AsynchronousIndicator,
    BlockCipherMode,
    CryptographicAlgorithm,
    KeyFormatType,
    LinkType,
    NameType,
    ObjectType,
    Operation,
    PaddingMethod,
    ResultReason,
    ResultStatus,
)
from kcm.kmip.payloads import CreateRequest, DecryptRequest, EncryptRequest, GetRequest
from kcm.kmip.tags import Tag
from kcm.kmip_protocol import ConnectionInfo
from kcm.l4 import token as l4_token
from kcm.l4.engine import L4Engine
from kcm.l4.identifiers import l3_uuid_bytes
from kcm.l4.opened_keys import OpenedKeys
from kcm.testing.requests import (
    create_l4,
    create_managed,
    item,
    request,
    response,
    with_critical_extension,
    with_header,
)
from kcm.ttlv import Item, ItemType
from tests.core_support import service_principal
from tests.gateway_support import APP, CONNECTION, L3, L3_UID, FakeLink

CORRELATION = "00112233aabbccdd"
VERSIONS = [(1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (2, 0), (2, 1)]


def fixed_random(n: int) -> bytes:
    return bytes((7 * i + 3) & 0xFF for i in range(n))


class Planes:
    """One L3 cache, the general handler (no fast path) and the fast path over it; with
    ``keep_opened``, both keep opened DEKs in one cache (kcm.l4.opened_keys), as the
    gateway's do."""

    def __init__(self, keep_opened: bool = False) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.link = FakeLink()
        self.link.keys[("demo", "app")] = [L3]
        self.link.keys[L3_UID] = [L3]
        opened_keys = OpenedKeys(clock=self.clock.seconds) if keep_opened else None

        def engine(keys) -> L4Engine:
            return L4Engine(keys, fixed_random, opened_keys=opened_keys)

        self.cache = L3Cache(self.link.fetch_service_keys, connected=lambda: True,
                             clock=self.clock.seconds, opened_keys=opened_keys)
        self.general = GatewayRequestHandler(
            runner=LocalRunner(new_correlation_id=lambda: CORRELATION, engine_factory=engine),
            cache=self.cache, link=self.link, clock=self.clock.seconds, max_batch_items=100)
        self.fast = FastPath(cache=self.cache, engine_factory=engine, clock=self.clock.seconds,
                             new_correlation_id=lambda: CORRELATION,
                             max_message_size=1 << 20, max_batch_items=100)
        created = self.general_answer(request(create_l4()))
        self.token = response(created).batch_items[0].response_payload.unique_identifier
        #: (Data, AAD) and what Encrypt made of them: IV, ciphertext, tag; with the L4,
        #: and (``l3_sealed``) DEKs wrapped with the L3.
        self.sealed = self._sealed(self.token)
        self.l3_sealed = self._sealed(L3_UID)

    def _sealed(self, uid: str) -> list[tuple[bytes | None, bytes, bytes, bytes]]:
        sealed = []
        for data, aad in [(b"", None), (b"record", None), (b"x" * 70, b"context")]:
            answer = response(self.general_answer(request(item(
                Operation.ENCRYPT, EncryptRequest(
                    unique_identifier=uid, data=data,
                    authenticated_encryption_additional_data=aad))))).batch_items[0]
            out = answer.response_payload
            sealed.append((aad, out.iv_counter_nonce, out.data,
                           out.authenticated_encryption_tag))
        return sealed

    def general_answer(self, wire: bytes) -> bytes:
        answer = self.general.handle_request(wire, CONNECTION)
        if isinstance(answer, Deferred):
            results: list[bytes] = []
            answer.addCallback(results.append)
            assert results, "the fake link answers at once"
            return results[0]
        return answer


def _planes(keep_opened: bool):
    patch = pytest.MonkeyPatch()
    patch.setattr(handler_module, "new_correlation_id", lambda: CORRELATION)
    try:
        yield Planes(keep_opened=keep_opened)
    finally:
        patch.undo()


@pytest.fixture(scope="module")
def planes() -> Planes:
    yield from _planes(False)


@pytest.fixture(scope="module")
def kept_planes() -> Planes:
    """Planes whose engines keep the DEKs they open between requests."""
    yield from _planes(True)


# Generated L4 requests ---------------------------------------------------------------------

def identifiers(token: str) -> st.SearchStrategy[str | None]:
    return st.sampled_from([token, token, token, L3_UID, None, "l4.1.AAAA", token[:-2] + "AA",
                            "l3-00000000-0000-4000-8000-000000000009", "other"])


binary = st.binary(max_size=80)
parameters = st.one_of(st.none(), st.builds(
    CryptographicParameters,
    block_cipher_mode=st.sampled_from([BlockCipherMode.GCM, BlockCipherMode.CBC,
                                       BlockCipherMode.ECB, BlockCipherMode.CTR, None]),
    cryptographic_algorithm=st.sampled_from([None, CryptographicAlgorithm.AES]),
    padding_method=st.sampled_from([None, None, PaddingMethod.NONE, PaddingMethod.PKCS5]),
    tag_length=st.sampled_from([None, None, 16, 12, 8, 4]),
    iv_length=st.sampled_from([None, None, 96, 64, 128]),
    random_iv=st.sampled_from([None, None, True, False])))
#: The associated data of every token under the L3 (docs/link-protocol.md §3).
BINDING = l4_token.associated_data(l3_uuid_bytes(L3_UID), L3.tenant, L3.service)
#: A client's associated data: none, its own, or a token's (refused with an L3).
aads = st.one_of(st.none(), binary, st.just(BINDING),
                 st.builds(lambda tail: b"l4.1" + tail, binary))


def l4_items(token_uid: str) -> st.SearchStrategy:
    uid = identifiers(token_uid)
    batch_id = st.one_of(st.none(), st.binary(min_size=1, max_size=9))
    encrypt = st.builds(lambda u, p, d, iv, aad, b: item(Operation.ENCRYPT, EncryptRequest(
        unique_identifier=u, cryptographic_parameters=p, data=d, iv_counter_nonce=iv,
        authenticated_encryption_additional_data=aad), b),
        uid, parameters, st.one_of(st.none(), binary),
        st.one_of(st.none(), st.none(), st.binary(min_size=8, max_size=16)),
        aads, batch_id)
    decrypt = st.builds(lambda u, p, d, iv, aad, tag, b: item(Operation.DECRYPT, DecryptRequest(
        unique_identifier=u, cryptographic_parameters=p, data=d, iv_counter_nonce=iv,
        authenticated_encryption_additional_data=aad, authenticated_encryption_tag=tag), b),
        uid, parameters, binary,
        st.one_of(st.none(), st.binary(min_size=12, max_size=12),
                  st.binary(min_size=8, max_size=16)),
        aads, st.one_of(st.none(), st.binary(min_size=16, max_size=16),
                        st.binary(min_size=4, max_size=16)),
        batch_id)
    # The reviewer's attack: the token's own sealed DEK opened with its L3.
    sealed = l4_token.parse(token_uid)
    unseal = st.builds(lambda p, b: item(Operation.DECRYPT, DecryptRequest(
        unique_identifier=L3_UID, cryptographic_parameters=p, data=sealed.ciphertext[:-16],
        iv_counter_nonce=sealed.nonce, authenticated_encryption_additional_data=BINDING,
        authenticated_encryption_tag=sealed.ciphertext[-16:]), b),
        st.sampled_from([None, CryptographicParameters(block_cipher_mode=BlockCipherMode.GCM,
                                                       tag_length=16)]), batch_id)
    get = st.builds(lambda u, f, b: item(Operation.GET, GetRequest(
        unique_identifier=u, key_format_type=f), b),
        uid, st.sampled_from([None, KeyFormatType.RAW, KeyFormatType.TRANSPARENT_SYMMETRIC_KEY,
                              KeyFormatType.PKCS_8]), batch_id)
    return st.one_of(encrypt, decrypt, get, unseal)


def _vendor(name: str, value: str) -> Attribute:
    return Attribute.vendor("x", name, Item(Tag.ATTRIBUTE_VALUE, ItemType.TEXT_STRING, value))


def create_items(plain: bool) -> st.SearchStrategy:
    """Creates of L4s (marked by x-kcm-level or a Parent Link to the L3), with the attributes
    an L4 takes; unless ``plain``, also odd ones: a managed key's, attributes an L4 cannot
    keep, another algorithm or length, another object type, a service of another name."""
    marker = st.sampled_from([
        [_vendor("kcm-level", "L4")],
        [Attribute.of(Tag.LINK, Link(link_type=LinkType.PARENT_LINK,
                                     linked_object_identifier=L3_UID))],
        [_vendor("kcm-level", "L4"), _vendor("kcm-service", "app")]])
    algorithm = st.sampled_from([[Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM,
                                               CryptographicAlgorithm.AES)], []])
    length = st.sampled_from([[Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, n)]
                              for n in (128, 192, 256)] + [[]])
    usage = st.sampled_from([[], [Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, 12)]])
    object_type = st.just(ObjectType.SYMMETRIC_KEY)
    if not plain:
        marker = st.one_of(marker, st.sampled_from([
            [], [_vendor("kcm-level", "L3")], [_vendor("kcm-level", "L4"),
                                               _vendor("kcm-service", "other")]]))
        algorithm = st.one_of(algorithm, st.just([Attribute.of(
            Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.DES3)]))
        length = st.one_of(length, st.just([Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 512)]))
        usage = st.one_of(usage, st.just([Attribute.of(Tag.NAME, Name(
            name_value="n", name_type=NameType.UNINTERPRETED_TEXT_STRING))]))
        object_type = st.sampled_from([ObjectType.SYMMETRIC_KEY, ObjectType.SECRET_DATA])
    batch_id = st.one_of(st.none(), st.binary(min_size=1, max_size=9))
    return st.builds(
        lambda t, a, n, u, m, b: item(Operation.CREATE, CreateRequest(
            object_type=t, attributes=[*a, *n, *u, *m]), b),
        object_type, algorithm, length, usage, marker, batch_id)


def plain_items(planes: Planes) -> st.SearchStrategy:
    """L4 items that succeed: the token or the L3, default or GCM parameters, a decrypt of
    what an encrypt made."""
    token = planes.token
    batch_id = st.one_of(st.none(), st.binary(min_size=1, max_size=9))
    gcm = st.sampled_from([None, CryptographicParameters(block_cipher_mode=BlockCipherMode.GCM),
                           CryptographicParameters(block_cipher_mode=BlockCipherMode.GCM,
                                                   tag_length=16, iv_length=96)])
    key = st.sampled_from([token, token, L3_UID])
    encrypt = st.builds(lambda u, d, aad, p, b: item(Operation.ENCRYPT, EncryptRequest(
        unique_identifier=u, data=d, authenticated_encryption_additional_data=aad,
        cryptographic_parameters=p), b), key, binary, st.one_of(st.none(), binary), gcm,
        batch_id)
    decrypt = st.builds(lambda u_sealed, b: item(Operation.DECRYPT, DecryptRequest(
        unique_identifier=u_sealed[0], data=u_sealed[1][2], iv_counter_nonce=u_sealed[1][1],
        authenticated_encryption_additional_data=u_sealed[1][0],
        authenticated_encryption_tag=u_sealed[1][3]), b),
        st.sampled_from([(token, sealed) for sealed in planes.sealed]
                        + [(L3_UID, sealed) for sealed in planes.l3_sealed]), batch_id)
    get = st.builds(lambda f, b: item(Operation.GET, GetRequest(
        unique_identifier=token, key_format_type=f), b),
        st.sampled_from([None, KeyFormatType.RAW]), batch_id)
    return st.one_of(encrypt, decrypt, get, create_items(plain=True))


@st.composite
def l4_requests(draw: st.DrawFn, planes: Planes) -> bytes:
    """Mostly plain requests (that the fast path should answer), some odd ones."""
    if draw(st.integers(0, 3)):
        items = draw(st.lists(plain_items(planes), min_size=1, max_size=5))
        version = draw(st.sampled_from([*sorted(FAST_VERSIONS)] * 3 + VERSIONS))
    else:
        items = draw(st.lists(st.one_of(l4_items(planes.token), plain_items(planes)),
                              min_size=1, max_size=4))
        version = draw(st.sampled_from(VERSIONS))
    maximum = draw(st.one_of(st.none(), st.none(), st.none(),
                             st.integers(min_value=100, max_value=600)))
    return request(*items, version=version, maximum_response_size=maximum)


SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(data=st.data())
def test_the_fast_answer_is_the_general_answer_byte_for_byte(planes: Planes, data) -> None:
    wire = data.draw(l4_requests(planes))
    fast = planes.fast.answer(wire, APP)
    if fast is not None:
        assert fast == planes.general_answer(wire)


@SETTINGS
@given(data=st.data())
def test_with_opened_deks_kept_the_fast_answer_is_still_the_general_answer(
        kept_planes: Planes, data) -> None:
    wire = data.draw(l4_requests(kept_planes))
    fast = kept_planes.fast.answer(wire, APP)
    if fast is not None:
        assert fast == kept_planes.general_answer(wire)


@SETTINGS
@given(data=st.data())
def test_mutated_requests_the_fast_path_answers_are_answered_alike(planes: Planes,
                                                                   data) -> None:
    wire = bytearray(data.draw(l4_requests(planes)))
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    for _ in range(rng.randint(1, 3)):
        position = rng.randrange(len(wire))
        wire[position] = rng.choice([0, 1, 0xFF, wire[position] ^ (1 << rng.randrange(8))])
    fast = planes.fast.answer(bytes(wire), APP)
    if fast is not None:
        assert fast == planes.general_answer(bytes(wire))


@pytest.mark.parametrize("version", VERSIONS)
def test_plain_l4_requests_take_the_fast_path_in_its_versions(planes: Planes,
                                                              version) -> None:
    token = planes.token
    plain = [
        request(item(Operation.ENCRYPT, EncryptRequest(unique_identifier=token, data=b"r")),
                version=version),
        request(item(Operation.GET, GetRequest(unique_identifier=token)), version=version),
        request(create_l4(), version=version),
        request(create_l4(via_link=L3_UID), version=version),
        request(*[item(Operation.ENCRYPT, EncryptRequest(unique_identifier=token,
                                                         data=b"x" * 64), bytes([i]))
                  for i in range(1, 101)], version=version),
    ]
    too_many = request(*[item(Operation.GET, GetRequest(unique_identifier=token))] * 101,
                       version=version)
    assert planes.fast.answer(too_many, APP) is None
    for wire in plain:
        fast = planes.fast.answer(wire, APP)
        if version in FAST_VERSIONS:
            assert fast is not None and fast == planes.general_answer(wire)
        else:
            assert fast is None


def test_what_the_fast_path_cannot_be_sure_of_is_declined(planes: Planes) -> None:
    token = planes.token
    declined = [
        request(item(Operation.ENCRYPT, EncryptRequest(unique_identifier=None, data=b"r"))),
        request(item(Operation.ENCRYPT, EncryptRequest(unique_identifier="l4.1.AAAA",
                                                       data=b"r"))),
        request(item(Operation.GET, GetRequest(
            unique_identifier=token, key_format_type=KeyFormatType.TRANSPARENT_SYMMETRIC_KEY))),
        request(item(Operation.ENCRYPT, EncryptRequest(unique_identifier=token, data=b"r",
                                                       init_indicator=True))),
        request(create_managed()),  # a stored key: the core's
    ]
    for wire in declined:
        assert planes.fast.answer(wire, APP) is None
    other_tenant = ConnectionInfo(2, service_principal("other"), "127.0.0.1:40001").principal
    wire = request(item(Operation.GET, GetRequest(unique_identifier=token)))
    assert planes.fast.answer(wire, other_tenant) is None


def _l3_attacks(planes: Planes) -> list[tuple[object, ResultReason]]:
    """Encrypt/Decrypt items with the L3 that it refuses (docs/link-protocol.md §3), and
    the 2.x reason of each: a token's DEK opened or a token minted through the L3, other
    modes, a client's IV, short tags, short IVs."""
    sealed = l4_token.parse(planes.token)
    gcm = CryptographicParameters(block_cipher_mode=BlockCipherMode.GCM, tag_length=16)
    r = ResultReason

    def encrypt(parameters=None, iv=None, aad=None, data=bytes(16)):
        return item(Operation.ENCRYPT, EncryptRequest(
            unique_identifier=L3_UID, data=data, cryptographic_parameters=parameters,
            iv_counter_nonce=iv, authenticated_encryption_additional_data=aad))

    def decrypt(parameters=None, iv=bytes(12), aad=None, data=bytes(16), tag=bytes(16)):
        return item(Operation.DECRYPT, DecryptRequest(
            unique_identifier=L3_UID, data=data, cryptographic_parameters=parameters,
            iv_counter_nonce=iv, authenticated_encryption_additional_data=aad,
            authenticated_encryption_tag=tag))

    attacks = [
        (decrypt(gcm, sealed.nonce, BINDING, sealed.ciphertext[:-16], sealed.ciphertext[-16:]),
         r.INVALID_FIELD),
        (decrypt(None, sealed.nonce, BINDING, sealed.ciphertext[:-16], sealed.ciphertext[-16:]),
         r.INVALID_FIELD),
        (encrypt(gcm, bytes(12), BINDING, bytes(32)), r.INVALID_FIELD),
        (encrypt(None, None, BINDING, bytes(32)), r.INVALID_FIELD),
        (encrypt(None, None, b"l4.1"), r.INVALID_FIELD),
        (encrypt(gcm, sealed.nonce), r.INVALID_FIELD),
        (encrypt(None, bytes(12)), r.INVALID_FIELD),
        (encrypt(CryptographicParameters(random_iv=False)), r.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS),
        (encrypt(CryptographicParameters(tag_length=4)), r.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS),
        (encrypt(CryptographicParameters(iv_length=64)), r.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS),
        (decrypt(CryptographicParameters(tag_length=8), tag=bytes(8)),
         r.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS),
        (decrypt(iv=bytes(8)), r.INVALID_FIELD),
        (decrypt(tag=bytes(4)), r.CRYPTOGRAPHIC_FAILURE),
    ]
    for mode in (BlockCipherMode.ECB, BlockCipherMode.CBC, BlockCipherMode.CTR):
        attacks.append((encrypt(CryptographicParameters(block_cipher_mode=mode)),
                        r.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS))
        attacks.append((decrypt(CryptographicParameters(block_cipher_mode=mode), bytes(16)),
                        r.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS))
    return attacks


@pytest.mark.parametrize("version", sorted(FAST_VERSIONS))
def test_what_an_l3_refuses_is_declined_here_and_refused_by_the_general_path(
        planes: Planes, version) -> None:
    """With a service key a client wraps DEKs with AES-GCM alone (a 12-byte IV the server
    draws, a 16-byte tag, associated data no token's): the fast path declines every other
    request, and the general path refuses it, as kcm-core does."""
    for batch_item, reason in _l3_attacks(planes):
        wire = request(batch_item, version=version)
        assert planes.fast.answer(wire, APP) is None
        [refused] = response(planes.general_answer(wire)).batch_items
        assert refused.result_status == ResultStatus.OPERATION_FAILED, batch_item
        if version < (2, 0) and reason == ResultReason.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS:
            reason = ResultReason.FEATURE_NOT_SUPPORTED
        assert refused.result_reason == reason, refused.result_message


@pytest.mark.parametrize("version", sorted(FAST_VERSIONS))
def test_a_dek_wrapped_with_an_l3_takes_the_fast_path(planes: Planes, version) -> None:
    gcm = CryptographicParameters(block_cipher_mode=BlockCipherMode.GCM, tag_length=16)
    for parameters in (None, gcm):
        wire = request(item(Operation.ENCRYPT, EncryptRequest(
            unique_identifier=L3_UID, data=b"k" * 32, cryptographic_parameters=parameters,
            authenticated_encryption_additional_data=b"row 7")), version=version)
        fast = planes.fast.answer(wire, APP)
        assert fast is not None and fast == planes.general_answer(wire)
        aad, iv, data, tag = planes.l3_sealed[2]
        wire = request(item(Operation.DECRYPT, DecryptRequest(
            unique_identifier=L3_UID, data=data, iv_counter_nonce=iv,
            cryptographic_parameters=parameters, authenticated_encryption_additional_data=aad,
            authenticated_encryption_tag=tag)), version=version)
        fast = planes.fast.answer(wire, APP)
        assert fast is not None and fast == planes.general_answer(wire)


@pytest.mark.parametrize("version", sorted(FAST_VERSIONS))
def test_what_the_general_path_refuses_in_the_header_or_item_is_declined(
        planes: Planes, version) -> None:
    """A critical Message Extension, an undefined Batch Error Continuation Option, an
    Asynchronous Indicator of the wrong type or Mandatory: the fast path declines them all,
    and the general path refuses them."""
    token = planes.token
    r = ResultReason
    v2 = version >= (2, 0)
    asynchronous = (AsynchronousIndicator.MANDATORY if v2 else True)
    wrong_type = True if v2 else int(AsynchronousIndicator.OPTIONAL)
    for make in (lambda: item(Operation.ENCRYPT, EncryptRequest(unique_identifier=token,
                                                                data=b"r")),
                 lambda: item(Operation.GET, GetRequest(unique_identifier=token)),
                 create_l4):
        cases = [
            (request(with_critical_extension(make()), version=version),
             r.UNKNOWN_MESSAGE_EXTENSION if v2 else r.FEATURE_NOT_SUPPORTED),
            (with_header(make(), version, batch_error_continuation_option=9),
             r.UNKNOWN_ENUMERATION if v2 else r.INVALID_FIELD),
            (with_header(make(), version, asynchronous_indicator=wrong_type),
             r.INVALID_FIELD),
        ]
        if v2:
            cases.append((with_header(make(), version, asynchronous_indicator=asynchronous),
                          r.FEATURE_NOT_SUPPORTED))
        else:  # a 1.x client able to take an asynchronous answer is answered synchronously
            wire = with_header(make(), version, asynchronous_indicator=asynchronous)
            [answered] = response(planes.general_answer(wire)).batch_items
            assert answered.result_status == ResultStatus.SUCCESS
        for wire, reason in cases:
            assert planes.fast.answer(wire, APP) is None
            [refused] = response(planes.general_answer(wire)).batch_items
            assert refused.result_status == ResultStatus.OPERATION_FAILED
            assert refused.result_reason == reason


def test_declining_keeps_no_traceback(planes: Planes) -> None:
    """The fast path declines by raising one shared exception: a traceback kept on it would
    grow by a few frames with every request declined (every forwarded one), forever."""
    wire = request(create_managed())
    for _ in range(3):
        assert planes.fast.answer(wire, APP) is None
    assert NOT_PLAIN.__traceback__ is None


def test_a_create_sent_again_is_decoded_once_and_judged_each_time(planes: Planes) -> None:
    """The last decoded L4 Create payloads are kept (kcm.gateway.fast_path._decoded_create):
    a repeated one is not decoded again, yet each request is still judged for its caller,
    and a payload the fast path declines is not kept."""
    memo = fast_path_module._decoded_create
    memo.cache_clear()
    wire = request(create_l4())
    first, second = planes.fast.answer(wire, APP), planes.fast.answer(wire, APP)
    assert first is not None and first == second == planes.general_answer(wire)
    assert (memo.cache_info().hits, memo.cache_info().currsize) == (1, 1)
    other_tenant = ConnectionInfo(2, service_principal("other"), "127.0.0.1:40001").principal
    assert planes.fast.answer(wire, other_tenant) is None  # no key of its own: the core's
    assert planes.fast.answer(request(create_managed()), APP) is None
    assert memo.cache_info().currsize == 1
