"""Usage counting at the gateway and its USAGE_REPORT frame (kcm.gateway.usage_report,
kcm.link.frames): what the engine counts, what is reported when, and the frame's rules."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from kcm.gateway.usage_report import UsageCounter, UsageReporter
from kcm.kmip.payloads import CreateRequest
from kcm.kmip.payloads.crypto import EncryptRequest
from kcm.l4.engine import L4Engine
from kcm.link.frames import (
    MAX_USAGE_ENTRIES,
    Frame,
    FrameError,
    FrameType,
    Tag,
    decode_frame,
    decode_frame_tree,
    encode_frame,
    frame_item,
)
from kcm.testing.requests import create_l4
from kcm.ttlv import Item, ItemType, encode
from tests.gateway_support import APP, L3, L3_UID

V21 = (2, 1)


class _Keys:
    def current_service_key(self, tenant, service):
        return L3

    def service_key(self, uid):
        return L3

    def is_tombstoned(self, token_id):
        return False


def _create_l4() -> CreateRequest:
    return create_l4().request_payload


def test_the_engine_counts_seals_and_dek_wraps_under_each_l3_not_record_encryptions() -> None:
    counter = UsageCounter()
    engine = counter.engine_factory(_Keys())
    token = engine.create(APP, V21, _create_l4()).unique_identifier
    engine.create(APP, V21, _create_l4())
    engine.encrypt(APP, V21, EncryptRequest(unique_identifier=L3_UID, data=bytes(32)))
    engine.encrypt(APP, V21, EncryptRequest(unique_identifier=token, data=b"a record"))
    assert counter.take() == {L3_UID: 3}
    assert counter.take() == {}
    # Without a counter the engine counts nothing, as before.
    L4Engine(_Keys()).create(APP, V21, _create_l4())


class _Link:
    def __init__(self) -> None:
        self.up = False
        self.sent: list[dict[str, int]] = []

    def report_usage(self, counts) -> bool:
        if not self.up:
            return False
        self.sent.append(dict(counts))
        return True


def test_counts_are_reported_every_interval_and_kept_while_they_cannot_be() -> None:
    clock, link, counter = Clock(), _Link(), UsageCounter()
    reporter = UsageReporter(counter, link, clock, interval=0.25)
    reporter.startService()
    counter.used("l3-a")
    clock.advance(0.25)
    assert link.sent == [] and counter.counts == {"l3-a": 1}  # no link: kept
    link.up = True
    counter.used("l3-a")
    counter.used("l3-b")
    clock.advance(0.25)
    assert link.sent == [{"l3-a": 2, "l3-b": 1}] and counter.counts == {}
    clock.advance(0.25)
    assert len(link.sent) == 1  # nothing counted: nothing sent
    counter.used("l3-b")
    reporter.stopService()  # the last counts go as it stops
    assert link.sent[-1] == {"l3-b": 1}


def test_a_usage_report_round_trips_through_both_codecs() -> None:
    frame = Frame(FrameType.USAGE_REPORT, usage=[("l3-a", 5), ("l3-b", 1 << 40)])
    wire = encode_frame(frame)
    assert decode_frame(wire) == frame == decode_frame_tree(wire)
    assert encode(frame_item(frame)) == wire


def _usage(*children: Item) -> Item:
    return Item(Tag.USAGE, ItemType.STRUCTURE, list(children))


def _report(*usage: Item) -> bytes:
    return encode(Item(Tag.LINK_FRAME, ItemType.STRUCTURE, [
        Item(Tag.FRAME_TYPE, ItemType.ENUMERATION, FrameType.USAGE_REPORT), *usage]))


_UID = Item(Tag.UNIQUE_IDENTIFIER, ItemType.TEXT_STRING, "l3-a")


@pytest.mark.parametrize("wire", [
    _report(),
    _report(_usage(_UID)),
    _report(_usage(Item(Tag.USAGE_COUNT, ItemType.LONG_INTEGER, 1), _UID)),
    _report(_usage(_UID, Item(Tag.USAGE_COUNT, ItemType.INTEGER, 1))),
    _report(_usage(_UID, Item(Tag.USAGE_COUNT, ItemType.LONG_INTEGER, -1))),
    _report(*[_usage(_UID, Item(Tag.USAGE_COUNT, ItemType.LONG_INTEGER, 1))]
            * (MAX_USAGE_ENTRIES + 1)),
    encode(Item(Tag.LINK_FRAME, ItemType.STRUCTURE, [
        Item(Tag.FRAME_TYPE, ItemType.ENUMERATION, FrameType.PING),
        _usage(_UID, Item(Tag.USAGE_COUNT, ItemType.LONG_INTEGER, 1))])),
], ids=["empty", "no count", "out of order", "not long", "negative", "too many",
        "in another frame"])
def test_a_broken_usage_report_is_refused(wire: bytes) -> None:
    with pytest.raises(FrameError):
        decode_frame(wire, max_size=1 << 20)


def test_the_report_and_sweep_intervals_are_settings() -> None:
    from kcm.config_file import ConfigError
    from kcm.core.config import load_config as core_config
    from kcm.gateway.config import load_config as gateway_config

    assert gateway_config(None).usage_report_interval == 0.25
    assert gateway_config(None, {"usage_report_interval": "0.5"}).usage_report_interval == 0.5
    assert core_config(None).state_sweep_interval == 5.0
    assert core_config(None, {"state_sweep_interval": "0.2"}).state_sweep_interval == 0.2
    for load, name in ((gateway_config, "usage_report_interval"),
                       (core_config, "state_sweep_interval")):
        for bad in ("0", "soon"):
            with pytest.raises(ConfigError, match=name):
                load(None, {name: bad})


def test_a_report_that_fails_to_send_is_kept_and_the_reports_go_on() -> None:
    clock, counter = Clock(), UsageCounter()

    class Broken:
        calls = 0

        def report_usage(self, counts) -> bool:
            Broken.calls += 1
            raise RuntimeError("no")

    reporter = UsageReporter(counter, Broken(), clock, interval=0.25)
    reporter.startService()
    counter.used("l3-a")
    clock.advance(0.25)
    clock.advance(0.25)
    assert Broken.calls == 2 and counter.counts == {"l3-a": 1}
    reporter.stopService()
