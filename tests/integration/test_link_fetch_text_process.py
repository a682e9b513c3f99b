"""What a gateway's fetches name that no text column holds, against a real `twistd kcm-core`
on SQLite and on PostgreSQL (whose text holds no NUL), on a raw link of link version 9:

* a FETCH_SERVICE_KEY by an identifier with a NUL (a client's: an Encrypt under
  ``l3-\\0...`` at a gateway asks for it) is answered Object Not Found, as a missing one,
  on both (on PostgreSQL it was General Failure, a traceback in the core's log), and so is
  a service whose name has one; the link goes on;
* a FETCH_TOMBSTONES whose cursor is no TokenId (a NUL in it) is refused when the frame is
  read: GOAWAY with a short ASCII reason, no traceback; one whose identifier has a NUL is
  refused as a missing version's page (Object Not Found).
"""

from __future__ import annotations

import pytest

from kcm.kmip.enums import ResultReason
from kcm.link.frames import LINK_VERSION, Frame, FrameType
from tests.e2e_support import CoreProcess
from tests.integration.test_gateway_scope_link import TD, RawLink
from tests.pg import postgres_url  # noqa: F401  (fixture)

APP = f"{TD}/tenant/demo/service/app"
ADMIN = f"{TD}/tenant/demo/admin/alice"
UID = "l3-00000000-0000-4000-8000-000000000001"


@pytest.fixture(params=["sqlite", "postgresql"])
def core(request) -> CoreProcess:
    yield request.getfixturevalue(
        "core_process" if request.param == "sqlite" else "core_process_pg")


class Version9Link(RawLink):
    """A raw link of a gateway that names link version 9."""

    def __init__(self, core: CoreProcess) -> None:
        super().__init__(core)
        self.send(Frame(FrameType.VERSION, link_version=LINK_VERSION))

    def ask(self, frame: Frame, answer: FrameType) -> Frame:
        self.stream += 1
        frame.stream_id = self.stream
        self.send(frame)
        return self.until(answer, self.stream)


def _no_traceback(core: CoreProcess) -> None:
    log = core.log.read_text(errors="replace")
    assert "Traceback" not in log and "General Failure" not in log, log[-3000:]


def test_a_fetch_naming_a_nul_is_object_not_found(core: CoreProcess) -> None:
    link = Version9Link(core)
    for who, tenant, service, uid in [(APP, "", "", "l3-\0" + UID[4:]),
                                      (APP, "", "", "l3-" + UID[3:-1] + "\0"),
                                      (ADMIN, "demo", "a\0b", None)]:
        answer = link.ask(Frame(FrameType.FETCH_SERVICE_KEY, caller_identity=who,
                                tenant=tenant, service=service, unique_identifier=uid),
                          FrameType.SERVICE_KEYS)
        assert answer.result_reason == ResultReason.OBJECT_NOT_FOUND, answer
        assert answer.error is not None and answer.error.isascii() \
            and answer.error.isprintable(), answer.error
    # The link goes on: a fetch is answered on it.
    assert link.fetch(APP, "demo").type is FrameType.SERVICE_KEYS
    _no_traceback(core)


def test_a_page_after_a_cursor_with_a_nul_is_refused_when_read(core: CoreProcess) -> None:
    link = Version9Link(core)
    with pytest.raises(ConnectionError) as refused:
        link.ask(Frame(FrameType.FETCH_TOMBSTONES, caller_identity=APP,
                       unique_identifier=UID, after="a" * 31 + "\0"), FrameType.TOMBSTONES)
    reason = str(refused.value)
    assert reason.startswith("GOAWAY ") and reason.isascii() and reason.isprintable()
    assert "cursor is not a TokenId" in reason, reason
    _no_traceback(core)


def test_a_page_of_an_identifier_with_a_nul_is_object_not_found(core: CoreProcess) -> None:
    link = Version9Link(core)
    answer = link.ask(Frame(FrameType.FETCH_TOMBSTONES, caller_identity=APP,
                            unique_identifier=UID[:-1] + "\0"), FrameType.TOMBSTONES)
    assert answer.result_reason == ResultReason.OBJECT_NOT_FOUND, answer
    assert answer.error is not None and answer.error.isascii() and answer.error.isprintable()
    _no_traceback(core)
