"""The TLS side of a KCM process's metrics, the same on both planes (docs/operations.md,
"Metrics and health"): when its certificates expire, how fresh its CRLs are, its TLS
files taken again while it runs, and the connections it refused.

What it promises:

* :class:`CertificateExpiry` holds, per listener or link (``kmip``, ``link``), the dates of
  the certificates its TLS options were last built with (:class:`kcm.tls.CertificateDates`,
  given by the code that read them: :mod:`kcm.tls`): at start, and whenever they are built
  again (:mod:`kcm.tls_refresh`: renewed files taken, or new CRLs). A start whose files do
  not load records nothing; renewed files refused, or a rebuild that fails, keep the dates
  of the options still in force.
* :func:`tls_collectors` are the families, named with the plane's prefix (``kcm_core``,
  ``kcm_gateway``), read when scraped: the expiry gauges, the refused connections by
  reason (every reason, from 0), the renewed TLS files taken and refused, and with a CRL
  configured its earliest Next Update, when it was last read and the looks at it that
  failed.
* :meth:`CertificateExpiry.expired`: the reason a readiness check gives while the
  certificate a listener's TLS options were built with is past its notAfter (no client
  verifies it: every new connection fails its handshake), else None.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kcm.metrics import CallbackCounter, CallbackGauge

if TYPE_CHECKING:
    from kcm.connection_refusals import ConnectionRefusals
    from kcm.tls import CertificateDates
    from kcm.tls_refresh import TlsRefresher

__all__ = ["CertificateExpiry", "tls_collectors"]


class CertificateExpiry:
    """The certificate dates of each listener or link, as last built (module docstring)."""

    def __init__(self) -> None:
        self.dates: dict[str, CertificateDates] = {}

    def seen(self, listener: str) -> Callable[[CertificateDates], None]:
        """What ``listener``'s TLS options are built with as their ``dates``. It may be
        called on a thread (a CRL refresh builds there): one dict item set, which a scrape
        on the reactor reads whole or not at all."""
        def record(dates: CertificateDates) -> None:
            self.dates[listener] = dates

        return record

    def certificates(self) -> list[tuple[tuple[str], float]]:
        return [((listener,), dates.certificate)
                for listener, dates in sorted(self.dates.items())]

    def authorities(self) -> list[tuple[tuple[str], float]]:
        return [((listener,), dates.ca) for listener, dates in sorted(self.dates.items())]

    def expired(self, now: float | None = None) -> str | None:
        """Why this process cannot serve for its own certificate: the certificate (or an
        intermediate sent with it) of a listener or link past its notAfter at ``now``
        (unix seconds; default the wall clock), as a short ASCII reason; None while every
        one is in its dates (or none was built yet)."""
        now = time.time() if now is None else now
        late = sorted((dates.certificate, listener) for listener, dates in self.dates.items()
                      if dates.certificate <= now)
        if not late:
            return None
        when, _ = late[0]
        listeners = ", ".join(sorted({listener for _, listener in late}))
        at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))
        return (f"the TLS certificate in force ({listeners}) expired at {at}: no client can "
                "connect; renew tls.cert")


def tls_collectors(prefix: str, *, expiry: CertificateExpiry, refusals: ConnectionRefusals,
                   refresher: TlsRefresher) -> list[Any]:
    """The TLS families of a plane named ``prefix`` (module docstring); CRL ones only when
    ``refresher`` has a CRL file."""
    collectors: list[Any] = [
        CallbackGauge(
            f"{prefix}_tls_certificate_expiry_timestamp_seconds",
            "When this process's TLS certificate expires (unix seconds; the earliest "
            "notAfter of its certificate file), by listener or link.", ("listener",),
            expiry.certificates),
        CallbackGauge(
            f"{prefix}_tls_ca_expiry_timestamp_seconds",
            "The earliest notAfter of the CA certificates in tls.ca (unix seconds), by listener "
            "or link.", ("listener",), expiry.authorities),
        CallbackCounter(
            f"{prefix}_connections_refused",
            "Connections refused or cut before being served, by reason: limit, timeout, "
            "handshake, revoked, identity, unreadable, too_large.", ("reason",),
            lambda: [((reason,), count) for reason, count in refusals]),
        CallbackCounter(
            f"{prefix}_tls_reloads",
            "Renewed TLS files (tls.cert, tls.key, tls.ca) taken while running.", (),
            lambda: [((), refresher.reloads)]),
        CallbackCounter(
            f"{prefix}_tls_reloads_refused",
            "Looks at changed TLS files that could not be taken (a key not the "
            "certificate's, a certificate out of its dates or not chaining to tls.ca, a "
            "tls.ca without the CA of a CRL in force, a file that cannot be read, TLS "
            "options that could not be built): those in force stay.", (),
            lambda: [((), refresher.reloads_refused)]),
    ]
    def next_update() -> list[tuple[tuple[()], float]]:
        lists = refresher.lists
        when = None if lists is None else lists.next_update
        return [] if when is None else [((), when)]

    if refresher.takes_pushed:
        collectors += [
            CallbackGauge(
                "kcm_gateway_crl_pushed",  # (only a gateway takes pushed CRLs)
                "The CRLs the core pushed (link version 10) held, checked beside tls.crl "
                "(of each CA the newest of both).", (),
                lambda: [((), len(refresher.lists.pushed) if refresher.lists else 0)]),
            CallbackGauge(
                "kcm_gateway_crl_pushed_timestamp_seconds",
                "When the CRLs the core pushed were last taken (unix seconds).", (),
                lambda: ([] if refresher.pushed_at is None
                         else [((), refresher.pushed_at)])),
        ]
    if refresher.crl_path is None:
        if refresher.takes_pushed:
            collectors.append(CallbackGauge(
                f"{prefix}_crl_next_update_timestamp_seconds",
                "The earliest Next Update of the CRLs in force (unix seconds): past it, that "
                "CA's certificates are refused.", (), next_update))
        return collectors

    def loaded() -> list[tuple[tuple[()], float]]:
        lists = refresher.lists
        return [] if lists is None else [((), lists.loaded_at)]

    collectors += [
        CallbackGauge(
            f"{prefix}_crl_next_update_timestamp_seconds",
            "The earliest Next Update of the CRLs in force (unix seconds): past it, that "
            "CA's certificates are refused.", (), next_update),
        CallbackGauge(
            f"{prefix}_crl_last_load_timestamp_seconds",
            "When the CRLs in force were read (unix seconds).", (), loaded),
        CallbackCounter(
            f"{prefix}_crl_load_failures",
            "Looks at tls.crl that found a file that could not be taken (the CRLs read "
            "before stay in force), or whose TLS options could not be built, or failed.",
            (), lambda: [((), refresher.load_failures)]),
    ]
    return collectors
