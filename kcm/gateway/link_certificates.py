"""Which certificate each of a gateway's links to the core presents while a renewed one is
not yet taken by the core (make-before-break, :meth:`kcm.gateway.link_client.LinkClient.relink`).

:class:`LinkCertificates` knows two: the newest the gateway took (its TLS files, swapped in
by :mod:`kcm.tls_refresh`) and the one a core last welcomed a link with (*accepted*). The
link's own connections present the accepted one (:meth:`LinkCertificates.accepted`: the
TLS options of the link's endpoints), so that a link lost while the core refuses the newest
(its CA not in the core's ``tls.ca``, a CRL of the core listing it) is made again with the
certificate the core takes; a renewal's second link presents the newest
(:meth:`LinkCertificates.newest`), and once a core welcomes it the newest is the accepted
one (:meth:`LinkCertificates.accept`). Options built again with the same certificate (a new
``tls.ca``, new CRLs) are taken by both at once: only another certificate waits.

The accepted certificate lives in memory: a gateway (or worker) that starts presents the
newest."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cryptography import x509
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

from kcm.tls import RenewableClientTLS

__all__ = ["LinkCertificates"]


class LinkCertificates:
    """The newest options of the link (``newest``: the refresher's, each new connection
    takes them) and the certificate they were built with (``certificate``), and the
    accepted ones, as the module says."""

    def __init__(self, newest: Callable[[], RenewableClientTLS],
                 certificate: Callable[[], x509.Certificate]) -> None:
        self._newest = newest
        self._certificate = certificate
        #: The certificate a core last welcomed a link with, and options built with it
        #: (None until the link's endpoints load them).
        self._accepted_certificate: x509.Certificate | None = None
        self._accepted_options: Any = None
        self._accepted: _AcceptedTLS | None = None

    def newest(self) -> RenewableClientTLS:
        """The TLS options of a renewal's link: the newest certificate."""
        return self._newest()

    def accepted(self) -> _AcceptedTLS:
        """The TLS options of the link's own connections: the accepted certificate (the
        newest when the endpoints load them, at the start)."""
        if self._accepted is None:
            self._accepted_certificate = self._certificate()
            self._accepted_options = self._newest().current
            self._accepted = _AcceptedTLS(self)
        return self._accepted

    @property
    def pending(self) -> bool:
        """Whether the newest certificate is not the accepted one: a renewal's link is to
        present it until a core welcomes it."""
        return (self._accepted_certificate is not None
                and self._certificate() != self._accepted_certificate)

    def accept(self) -> None:
        """A core welcomed a link presenting the newest certificate: the link's own
        connections present it from now on."""
        if self._accepted is not None:
            self._accepted_certificate = self._certificate()
            self._accepted_options = self._newest().current

    def _options(self) -> Any:
        """The options of the link's next connection: the newest while their certificate
        is the accepted one (rebuilt with a new ``tls.ca``), else those kept with it."""
        if not self.pending:
            self._accepted_options = self._newest().current
        return self._accepted_options


@implementer(IOpenSSLClientConnectionCreator)
class _AcceptedTLS:
    """Client TLS options presenting :class:`LinkCertificates`' accepted certificate."""

    def __init__(self, certificates: LinkCertificates) -> None:
        self._certificates = certificates

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:  # noqa: N802 - Twisted's
        return self._certificates._options().clientConnectionForTLS(tlsProtocol)
