"""kcm.core.keyring: what the keyring keeps in the clear is dropped at its ttl, even when a
store thread unwraps the same tenant key again while the reactor expires it."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from kcm.core.keyring import DEFAULT_FLAGS, Keyring


class _Hooked(dict):
    """A dict that, at its first removal, lets another thread run (``hook``) before going
    on: the interleaving of a store thread between expire's steps."""

    hook = None

    def _run_hook(self) -> None:
        hook, type(self).hook = type(self).hook, None
        if hook is not None:
            thread = threading.Thread(target=hook)
            thread.start()
            thread.join(0.2)  # (it may wait for a lock this removal is made under)
            type(self).started = thread

    def pop(self, *args):  # noqa: ANN002, ANN201
        out = super().pop(*args)
        self._run_hook()
        return out

    def __delitem__(self, key) -> None:  # noqa: ANN001
        super().__delitem__(key)
        self._run_hook()


def test_an_l2_unwrapped_again_while_it_expires_is_still_expired_later() -> None:
    now = [1000.0]
    ring = Keyring(bytes(32), clock=lambda: now[0], kept_ttl=300.0)
    ring._l2_by_uid = _Hooked()
    l2 = SimpleNamespace(attributes=None, tenant="t", uid="l2", level=2, object_type=2,
                         service=None,
                         key_version=None,
                         material=ring.wrap_tenant_key("t", "l2", b"K" * 32, DEFAULT_FLAGS))
    assert ring._l2_key(l2) == b"K" * 32
    now[0] += 301  # expired, for the reactor's expire and a store thread's next use alike
    _Hooked.hook = lambda: ring._l2_key(l2)
    ring.expire()
    _Hooked.started.join(5)
    # Whatever the order, a key kept is one the next expiry can see.
    assert set(ring._l2_by_uid) == set(ring._l2_read_at)
    now[0] += 10_000
    ring.expire()
    assert "l2" not in ring._l2_by_uid
