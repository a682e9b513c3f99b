"""Which of KCM's compiled modules this installation runs without.

Three small C modules are built by the install (``setup.py``): :mod:`kcm.kernel._plain_scan`
(the plain-request reader of the L4 hot path), :mod:`kcm._tls_calls` (eager TLS's OpenSSL
calls) and :mod:`kcm.ttlv._item_count` (a long request's items counted before it is
decoded); an install without a C compiler fails. A source tree run without being
installed (on ``PYTHONPATH``) has neither: KCM answers the same there, through the Python
code they replace, at a higher CPU cost per request, and would say nothing of it;
:class:`kcm.process.ProcessService` warns about it when a process starts.
"""

from __future__ import annotations

from kcm import eager_tls
from kcm.kernel import plain_messages
from kcm.ttlv import item_count

__all__ = ["missing"]


def missing() -> list[str]:
    """The compiled modules this process runs without (none, as installed by ``make``)."""
    absent = []
    if not plain_messages.compiled():
        absent.append("kcm.kernel._plain_scan")
    if not eager_tls.compiled():
        absent.append("kcm._tls_calls")
    if not item_count.compiled():
        absent.append("kcm.ttlv._item_count")
    return absent
