"""Why the Twisted client's failed host name lookups are never temporary (docs/sdk.md,
``.temporary``): Twisted's resolver drops getaddrinfo's error, so a resolver that did not
answer (EAI_AGAIN) looks like a name with no address; if a Twisted release starts to carry
it, this fails, and the client can then tell them apart as the blocking client does."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet._resolver import GAIResolver
from twisted.internet.error import DNSLookupError
from twisted.python.failure import Failure

from kcm.client.pool import _may_pass


class _InlinePool:
    def callInThreadWithCallback(self, done: Any, call: Any, *args: Any, **kwargs: Any) -> None:
        try:
            done(True, call(*args, **kwargs))
        except Exception:  # (as a thread pool does)
            done(False, Failure())


class _InlineReactor:
    def callFromThread(self, call: Any, *args: Any, **kwargs: Any) -> None:
        call(*args, **kwargs)


class _Receiver:
    def __init__(self) -> None:
        self.events: list[str] = []

    def resolutionBegan(self, resolution: Any) -> None:
        self.events.append("began")

    def addressResolved(self, address: Any) -> None:
        self.events.append("address")

    def resolutionComplete(self) -> None:
        self.events.append("complete")


def test_twisteds_resolver_drops_eai_again_so_the_client_says_not_temporary() -> None:
    def getaddrinfo(*args: Any) -> Any:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    receiver = _Receiver()
    GAIResolver(_InlineReactor(), lambda: _InlinePool(),  # type: ignore[arg-type]
                getaddrinfo).resolveHostName(receiver, "kcm.example")
    # No error reaches the receiver: only "no address", as for a name that has none.
    assert receiver.events == ["began", "complete"]
    assert not _may_pass(Failure(DNSLookupError("kcm.example")))
