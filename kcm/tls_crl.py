"""Certificate revocation lists for the listeners that take client certificates (``tls.crl``).

A client certificate that leaked (an application's key copied, a laptop lost) must stop
working before it expires, without a new CA. With ``tls.crl`` set to a file of CRLs (PEM,
one or more ``X509 CRL`` blocks, or one DER CRL), a kcm-core's KMIP and link listeners and a
kcm-gateway's KMIP listener check each client certificate against the CRL of its issuer
during the TLS handshake (OpenSSL's ``X509_V_FLAG_CRL_CHECK``): a revoked certificate fails
the handshake (``certificate revoked``), as an expired one does.

* Every CRL must be signed by a CA of ``tls.ca``; a file that holds another is refused at
  start (the service does not start) and kept out at a refresh.
* A certificate whose issuer has no CRL in the file is refused too (OpenSSL cannot tell
  whether it is revoked): give a CRL for every CA that issues client certificates.
* A CRL past its Next Update refuses every certificate of its issuer (OpenSSL's ``CRL has
  expired``): publish new CRLs before then. A CRL that expires within a day is warned about
  when it is read.
* :meth:`RevocationLists.refresh` re-reads the file when it changed (its size, modification
  time or inode), every :data:`REFRESH_INTERVAL` seconds while the service runs: the new
  CRLs apply to the next handshakes, no restart. A file that cannot be read or holds a CRL
  that fails the checks above is logged and the CRLs held before stay in force. OpenSSL
  keeps every CRL it was given and uses the newest of each issuer (by This Update); at most
  :data:`MAX_CRLS` are taken over the life of a process (a restart drops the old ones).

Pure apart from the file it reads and the stores it is given; time comes from ``now``.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import crypto
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["MAX_CRLS", "REFRESH_INTERVAL", "CrlRefresher", "RevocationLists", "load_crls"]

log = Logger()

#: Seconds between two looks at the CRL file while a service runs.
REFRESH_INTERVAL = 30.0
#: The most CRLs handed to OpenSSL over a process's life (each refresh adds the new ones).
MAX_CRLS = 1024
#: A CRL whose Next Update is nearer than this is warned about when it is read.
EXPIRY_WARNING = dt.timedelta(days=1)

_DER = Encoding.DER
_PEM_BEGIN = b"-----BEGIN X509 CRL-----"
_PEM_END = b"-----END X509 CRL-----"


def load_crls(path: str | Path, ca_path: str | Path) -> list[x509.CertificateRevocationList]:
    """The CRLs in the file at ``path``, each checked to be signed by a CA of the PEM bundle
    at ``ca_path``; ValueError (a message naming the file) otherwise."""
    from kcm.tls import load_certificates

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read the CRL file {path}: {e.strerror}") from None
    crls = _parse(data, path)
    authorities = load_certificates(ca_path)
    for crl in crls:
        issuers = [ca for ca in authorities if ca.subject == crl.issuer]
        if not any(_signed_by(crl, ca) for ca in issuers):
            raise ValueError(f"the CRL file {path} holds a CRL of {crl.issuer.rfc4514_string()}, "
                             f"which no CA of {ca_path} signed")
    return crls


def _parse(data: bytes, path: str | Path) -> list[x509.CertificateRevocationList]:
    try:
        if _PEM_BEGIN in data:
            crls = []
            for block in data.split(_PEM_BEGIN)[1:]:
                end = block.find(_PEM_END)
                if end < 0:
                    raise ValueError("an unfinished PEM block")
                crls.append(x509.load_pem_x509_crl(
                    _PEM_BEGIN + block[:end + len(_PEM_END)] + b"\n"))
            return crls
        return [x509.load_der_x509_crl(data)]
    except ValueError:
        raise ValueError(f"the CRL file {path} holds no CRL KCM can read (PEM X509 CRL "
                         "blocks, or one DER CRL)") from None


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


class RevocationLists:
    """The CRLs of the file at ``path`` (checked against the CAs at ``ca_path``), handed to
    every TLS store :meth:`attach` was given, and again as the file changes
    (:meth:`refresh`). Reading the file at construction raises ValueError when it is
    wrong, so a service configured with a bad file does not start."""

    def __init__(self, path: str | Path, ca_path: str | Path, *,
                 now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.path = str(path)
        self.ca_path = str(ca_path)
        self._now = now
        self._stores: list[Any] = []
        #: The CRLs given to the stores, by their DER bytes (each once).
        self._given: dict[bytes, x509.CertificateRevocationList] = {}
        self._stamp = self._file_stamp()
        self._take(load_crls(self.path, self.ca_path))

    @property
    def crls(self) -> list[x509.CertificateRevocationList]:
        """Every CRL in force (those read so far)."""
        return list(self._given.values())

    def attach(self, store: Any) -> None:
        """Check client certificates against these CRLs in ``store`` (an
        ``OpenSSL.crypto.X509Store``, a TLS context's) from now on."""
        for crl in self._given.values():
            store.add_crl(crl)
        store.set_flags(crypto.X509StoreFlags.CRL_CHECK)
        self._stores.append(store)

    def refresh(self) -> bool:
        """Read the file again if it changed, and hand its new CRLs to the stores; whether
        it did. A file that cannot be read or checked is logged, the CRLs held kept."""
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            crls = load_crls(self.path, self.ca_path)
        except ValueError as e:
            log.error("tls.crl: {error}; the CRLs read before stay in force", error=str(e))
            return False
        added = self._take(crls)
        log.info("tls.crl: {path} read again: {new} new CRL(s), {revoked} revoked "
                 "certificate(s) listed", path=self.path, new=added,
                 revoked=sum(len(list(crl)) for crl in crls))
        return True

    def _take(self, crls: list[x509.CertificateRevocationList]) -> int:
        added = 0
        for crl in crls:
            der = crl.public_bytes(_DER)
            if der in self._given:
                continue
            if len(self._given) >= MAX_CRLS:
                log.error("tls.crl: {count} CRLs taken since start, the most a process "
                          "takes; restart it to take new ones", count=len(self._given))
                break
            self._given[der] = crl
            for store in self._stores:
                store.add_crl(crl)
            added += 1
            self._warn_if_expiring(crl)
        return added

    def _warn_if_expiring(self, crl: x509.CertificateRevocationList) -> None:
        next_update = crl.next_update_utc
        if next_update is not None and next_update - self._now() < EXPIRY_WARNING:
            log.warn("tls.crl: the CRL of {issuer} expires at {when} (Next Update): after "
                     "that every certificate it covers is refused until a newer CRL is in "
                     "{path}", issuer=crl.issuer.rfc4514_string(),
                     when=next_update.isoformat(), path=self.path)

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)


class CrlRefresher(Service):
    """Reads ``tls.crl`` when it starts (:attr:`lists`; a wrong file stops the start) and
    again every ``interval`` seconds while it runs (:meth:`RevocationLists.refresh`). Start
    it before the listeners that use :attr:`lists`."""

    def __init__(self, path: str, ca_path: str, clock: IReactorTime, *,
                 interval: float = REFRESH_INTERVAL) -> None:
        self.path = path
        self.ca_path = ca_path
        self.clock = clock
        self.interval = interval
        self.lists: RevocationLists | None = None
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        self.lists = RevocationLists(self.path, self.ca_path)
        self._loop = LoopingCall(self.lists.refresh)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)
        super().startService()

    def stopService(self) -> Any:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return super().stopService()
