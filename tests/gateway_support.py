"""Fakes for kcm-gateway unit tests, and the KMIP request builders they use
(:mod:`kcm.testing.requests`) (test support)."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed

from kcm.gateway.core_origin import FollowedOrigin
from kcm.gateway.link_client import LinkDown, ServiceKeyRefused
from kcm.identity import Principal
from kcm.kmip.enums import State
from kcm.kmip_protocol import ConnectionInfo
from kcm.l4.authorize import ServiceKeyUseDenied, check_service_key_use
from kcm.l4.service_key import ServiceKey
from kcm.link.frames import LINK_VERSION, ORIGIN_VERSION, Frame, FrameType, encode_frame
from kcm.testing.requests import (
    CONTINUE,
    STOP,
    UNDO,
    activate,
    create_l4,
    create_managed,
    decrypt,
    encrypt,
    get,
    item,
    locate,
    request,
    response,
)
from tests.core_support import LINEAGE, service_principal

__all__ = ["APP", "CONNECTION", "CONTINUE", "L3", "L3_UID", "STOP", "UNDO", "FakeLink",
           "activate", "core_welcome", "create_l4", "create_managed", "decrypt", "encrypt",
           "get", "item", "locate", "origin", "request", "response"]

L3_UID = "l3-00000000-0000-4000-8000-000000000001"
#: The demo tenant's service "app", connected to a gateway directly, and its L3 (Active).
APP = service_principal()
CONNECTION = ConnectionInfo(1, APP, "127.0.0.1:40000")
L3 = ServiceKey(L3_UID, "demo", "app", 1, State.ACTIVE, bytes(range(32)))


def origin(generation: int = LINEAGE.generation, deployment: str = LINEAGE.deployment
           ) -> bytes:
    """An ORIGIN frame (link version 7): the core's database."""
    return encode_frame(Frame(FrameType.ORIGIN, deployment=deployment,
                              restore_generation=generation))


def core_welcome(version: int = LINK_VERSION, *, sequence: int = 0, heartbeat_interval: int = 1,
                 **fields: object) -> bytes:
    """What a core of link version ``version`` sends to make a gateway's link: WELCOME
    (``fields`` added) and, from version 7, ORIGIN (of :data:`tests.core_support.LINEAGE`)."""
    welcome = encode_frame(Frame(FrameType.WELCOME, link_version=version,
                                 peer_name=str(fields.pop("peer_name", "core")),
                                 sequence=sequence, heartbeat_interval=heartbeat_interval,
                                 **fields))  # type: ignore[arg-type]
    return welcome + (origin() if version >= ORIGIN_VERSION else b"")


class FakeLink:
    """A link to a core: records forwarded bytes and answers with ``answer(wire)``; serves
    the service keys in :attr:`keys` to whoever may use them, and refuses the others as the
    core does (a refusal of who asks names the key's tenant and service)."""

    def __init__(self, answer=None) -> None:
        self.forwarded: list[tuple[bytes, Principal, str]] = []
        self.fetches: list[tuple[Principal, str, str, str | None]] = []
        self.connected = True
        self.relinking = False
        #: The core's last VIEW (None: none, a core before link version 6).
        self.view: bytes | None = None
        self.down = False
        self.answer = answer or (lambda wire: wire)
        self.keys: dict[tuple[str, str] | str, list] = {}
        self.pending: list[Deferred] = []
        self.hold_fetches = False
        self.followed = FollowedOrigin()

    def forward(self, wire: bytes, caller: Principal, source: str) -> Deferred[bytes]:
        self.forwarded.append((wire, caller, source))
        if self.down:
            return fail(LinkDown("the link to the core is down"))
        return succeed(self.answer(wire))

    def fetch_service_keys(self, caller: Principal, tenant: str, service: str,
                           uid: str | None = None) -> Deferred[list]:
        self.fetches.append((caller, tenant, service, uid))
        if self.down:
            return fail(LinkDown("the link to the core is down"))
        if self.hold_fetches:
            d: Deferred[list] = Deferred()
            self.pending.append(d)
            return d
        keys = self.keys.get(uid) if uid else self.keys.get((tenant, service))
        owner = (keys[0].tenant, keys[0].service) if uid and keys else (tenant, service)
        try:
            check_service_key_use(caller, *owner, uid=uid)
        except ServiceKeyUseDenied as e:
            return fail(ServiceKeyRefused(e.reason, e.message, owner=(e.tenant, e.service)))
        return succeed(list(keys or []))
