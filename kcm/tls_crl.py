"""Certificate revocation lists for the listeners that take client certificates (``tls.crl``).

A client certificate that leaked (an application's key copied, a laptop lost) must stop
working before it expires, without a new CA. With ``tls.crl`` set to a file of CRLs (PEM,
one or more ``X509 CRL`` blocks, or one DER CRL), a kcm-core's KMIP and link listeners and a
kcm-gateway's KMIP listener check each client certificate against the CRL of its issuer
during the TLS handshake (OpenSSL's ``X509_V_FLAG_CRL_CHECK``): a revoked certificate fails
the handshake (``certificate revoked``), as an expired one does.

* Every CRL must be signed by a CA of ``tls.ca``; a file that holds another is refused at
  start (the service does not start) and kept out at a refresh, and so is a renewed
  ``tls.ca`` that no longer holds the CA of a CRL in force (:func:`unsigned_crl`, the same
  message: what a restart would refuse is not taken while the service runs).
* A certificate whose issuer has no CRL in the file is refused too (OpenSSL cannot tell
  whether it is revoked): give a CRL for every CA that issues client certificates. Each CA
  of ``tls.ca`` that no CRL in force is of (:func:`cas_without_crl`) is warned about once,
  at the start and as the bundle or the CRLs change (:mod:`kcm.tls_refresh`): a new CA
  added to the bundle without its CRL is the usual cause.
* A CRL past its Next Update refuses every certificate of its issuer (OpenSSL's ``CRL has
  expired``): publish new CRLs before then. A CRL that expires within a day is warned about
  when it is read.
* Every certificate of the client's chain but the trust anchor is checked, each against its
  issuer's CRL (OpenSSL's ``CRL_CHECK_ALL``): a revoked intermediate CA refuses what it
  issued. So every CA of the chain needs a CRL (a root's lists the intermediates it
  revoked), and an intermediate CA whose CRL is given must be in ``tls.ca`` (its CRL is
  checked against it).
* :class:`kcm.tls_refresh.TlsRefresher` re-reads the file when it changed (its size,
  modification time or inode), every :data:`REFRESH_INTERVAL` seconds while the service
  runs, and the listeners' TLS contexts are built again with the new CRLs alone
  (:class:`kcm.tls.RenewableServerTLS`), both in a thread: the reactor only swaps them in.
  They apply to the next handshakes, no restart, and no CRL read before is kept. A file
  that cannot be read or holds a CRL that fails the checks above is logged once and the
  CRLs held before stay in force; it is read again at every refresh until it can be taken.
* Connections already open are checked too: each listener's :class:`RevocationWatch`
  keeps, from each connection's handshake, the issuer and serial number of every
  certificate of its peer's verified chain but the trust anchor; once new CRLs are taken,
  the connections that one of them lists are cut at once (a gateway's link after a GOAWAY,
  a KMIP connection aborted: nothing more is answered on it), one warning each naming the
  peer's identity and the revoked certificate's serial number. A connection whose
  handshake ends after the swap with the CRLs of before is checked as it ends. Each cut
  is counted as a connection refused, ``revoked`` (:mod:`kcm.connection_refusals`).
* A gateway also holds the CRLs its core pushed over the link (link version 10:
  :func:`pushed_crls` checks them as a file's are, :attr:`RevocationLists.pushed` holds them,
  in memory only): of each CA the newest CRL of its own and the core's is in force
  (:func:`merged_crls`), and the connections newly listed are cut as above. Without
  ``tls.crl`` it checks only the CAs the core sent a CRL of (:attr:`RevocationLists.lenient`).
* For the metrics: the CRLs in force say when the first of them expires
  (:attr:`RevocationLists.next_update`) and when they were read
  (:attr:`RevocationLists.loaded_at`); :attr:`kcm.tls_refresh.TlsRefresher.load_failures`
  counts the looks at the file that found one it could not take (every refresh while it
  stays so).

Pure apart from the file it reads and the stores it is given; time comes from ``now``.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import crypto
from twisted.logger import Logger

from kcm.connection_refusals import ConnectionRefusals
from kcm.file_stamp import FileStamp, file_stamp
from kcm.peer_address import peer_host

__all__ = ["REFRESH_INTERVAL", "CertificateKey", "CrlReading", "PushedCrls",
           "RevocationLists", "RevocationWatch", "cas_without_crl", "chain_keys",
           "load_crls", "merged_crls", "pushed_crls", "read_crls", "revoked_keys",
           "unsigned_crl"]

log = Logger()

#: Seconds between two looks at the CRL file while a service runs.
REFRESH_INTERVAL = 30.0
#: A CRL whose Next Update is nearer than this is warned about when it is read.
EXPIRY_WARNING = dt.timedelta(days=1)

#: A certificate as a CRL names it: its issuer's name (DER, as its CA writes it in the
#: certificates and CRLs it signs) and its serial number.
CertificateKey = tuple[bytes, int]
#: The most characters of a peer's identity a log line shows (as the throttled lines).
_SHOWN_ID = 100

_DER = Encoding.DER
_PEM_BEGIN = b"-----BEGIN X509 CRL-----"
_PEM_END = b"-----END X509 CRL-----"


def load_crls(path: str | Path, ca_path: str | Path) -> list[x509.CertificateRevocationList]:
    """The CRLs in the file at ``path``, each checked to be signed by a CA of the PEM bundle
    at ``ca_path``; ValueError (a message naming the file) otherwise."""
    from kcm.tls import load_certificates

    crls = read_crls(path)
    problem = unsigned_crl(crls, load_certificates(ca_path), path, ca_path)
    if problem is not None:
        raise ValueError(problem)
    return crls


def read_crls(path: str | Path) -> list[x509.CertificateRevocationList]:
    """The CRLs in the file at ``path``, not checked against any CA; ValueError (a message
    naming the file) if it cannot be read or parsed."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read the CRL file {path}: {e.strerror}") from None
    return _parse(data, path)


def unsigned_crl(crls: Iterable[x509.CertificateRevocationList],
                 authorities: Sequence[x509.Certificate], path: str | Path,
                 ca_path: str | Path) -> str | None:
    """Why ``crls`` (of the file at ``path``) may not be used with ``authorities`` (the CA
    bundle at ``ca_path``): one of them no CA of it signed; None when each was. The one
    rule of a start (:func:`load_crls`) and of a renewed CA bundle
    (:mod:`kcm.tls_refresh`)."""
    for crl in crls:
        issuers = [ca for ca in authorities if ca.subject == crl.issuer]
        if not any(_signed_by(crl, ca) for ca in issuers):
            return (f"the CRL file {path} holds a CRL of {crl.issuer.rfc4514_string()}, "
                    f"which no CA of {ca_path} signed")
    return None


def cas_without_crl(crls: Iterable[x509.CertificateRevocationList],
                    authorities: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """The CA certificates of ``authorities`` (a CA bundle) that no CRL of ``crls`` is of:
    OpenSSL refuses every client certificate they issued ("unable to get certificate
    CRL"), as it cannot tell whether it is revoked. A CRL is a CA's when it names the CA
    as its issuer and, when both say, its Authority Key Identifier is the CA's Subject Key
    Identifier (two CAs of one name); no signature is checked (:func:`unsigned_crl` does),
    so it is cheap enough for the reactor."""
    from kcm.tls import is_ca_certificate

    crls = list(crls)
    return [ca for ca in authorities if is_ca_certificate(ca)
            and not any(_names_ca(crl, ca) for crl in crls)]


def _names_ca(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    if crl.issuer != ca.subject:
        return False
    try:
        authority = crl.extensions.get_extension_for_class(
            x509.AuthorityKeyIdentifier).value.key_identifier
        subject = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except (x509.ExtensionNotFound, ValueError):
        return True
    return authority is None or authority == subject


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


def revoked_keys(crls: Iterable[x509.CertificateRevocationList]) -> frozenset[CertificateKey]:
    """Every certificate ``crls`` list, as :data:`CertificateKey` (one pass over each CRL:
    for a thread, a CRL of 100,000 entries takes a tenth of a second)."""
    keys: set[CertificateKey] = set()
    for crl in crls:
        issuer = crl.issuer.public_bytes()
        keys.update((issuer, entry.serial_number) for entry in crl)
    return frozenset(keys)


def chain_keys(connection: Any) -> tuple[CertificateKey, ...]:
    """The :data:`CertificateKey` of each certificate of the verified chain of the peer of
    ``connection`` (a pyOpenSSL ``Connection`` whose handshake completed), leaf first, but
    its trust anchor, which no CRL is checked for (a chain of one: that certificate); ()
    without one. About 15 microseconds a certificate, once per handshake."""
    chain = connection.get_verified_chain(as_cryptography=True)
    if not chain:
        return ()
    return tuple((certificate.issuer.public_bytes(), certificate.serial_number)
                 for certificate in (chain[:-1] if len(chain) > 1 else chain))


@dataclass(frozen=True)
class CrlReading:
    """What one look at a changed CRL file found (:meth:`RevocationLists.read_changed`):
    its ``stamp`` and its checked ``crls`` (and the certificates they list: ``revoked``,
    None: not computed yet), or None and the ``refusal`` (why not)."""

    stamp: FileStamp | None
    crls: list[x509.CertificateRevocationList] | None
    refusal: str | None = None
    revoked: frozenset[CertificateKey] | None = None


def _issuer_key(crl: x509.CertificateRevocationList) -> tuple[bytes, bytes | None]:
    """Whose CRL ``crl`` is: its issuer's name (DER) and Authority Key Identifier (two CAs
    of one name told apart), as :func:`_names_ca` matches a CA."""
    try:
        authority = crl.extensions.get_extension_for_class(
            x509.AuthorityKeyIdentifier).value.key_identifier
    except (x509.ExtensionNotFound, ValueError):
        authority = None
    return crl.issuer.public_bytes(), authority


def _age(crl: x509.CertificateRevocationList) -> tuple[int, dt.datetime]:
    """How new ``crl`` is: its CRL Number (-1 without one), then its This Update."""
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except (x509.ExtensionNotFound, ValueError):
        number = -1
    return number, crl.last_update_utc


def merged_crls(own: Sequence[x509.CertificateRevocationList],
                pushed: Sequence[x509.CertificateRevocationList]
                ) -> list[x509.CertificateRevocationList]:
    """The CRLs in force of a gateway: its own (``tls.crl``) and those its core pushed, of
    each CA the newest (CRL Number, then This Update; its own when as new), as OpenSSL
    would take the newest of one issuer anyway."""
    newest: dict[tuple[bytes, bytes | None], x509.CertificateRevocationList] = {}
    for crl in [*own, *pushed]:
        key = _issuer_key(crl)
        held = newest.get(key)
        if held is None or _age(crl) > _age(held):
            newest[key] = crl
    return list(newest.values())


@dataclass(frozen=True)
class PushedCrls:
    """What a gateway makes of the CRLs its core pushed (:func:`pushed_crls`): the ``crls``
    to hold, the DER they came as (``ders``), and why each one left out was (``refused``)."""

    crls: list[x509.CertificateRevocationList]
    ders: frozenset[bytes]
    refused: tuple[str, ...] = ()


def pushed_crls(ders: Sequence[bytes], authorities: Sequence[x509.Certificate],
                held: Sequence[x509.CertificateRevocationList], ca_path: str, *,
                now: dt.datetime) -> PushedCrls:
    """The CRLs a core pushed (``ders``), each checked as a CRL of ``tls.crl`` is: one that
    cannot be read, that no CA of ``authorities`` (this gateway's ``tls.ca``) signed or
    that is past its Next Update is left out (and why is said). Of a CA whose CRL ``held``
    (those pushed before) has a newer one, that one stays: a core with an older file never
    takes a revocation back."""
    crls: list[x509.CertificateRevocationList] = []
    taken: set[bytes] = set()
    refused: list[str] = []
    older = {_issuer_key(crl): crl for crl in held}
    for der in ders:
        try:
            crl = x509.load_der_x509_crl(der)
        except ValueError:
            refused.append("a CRL that cannot be read")
            continue
        problem = unsigned_crl([crl], authorities, "pushed by the core", ca_path)
        if problem is None and crl.next_update_utc is not None and crl.next_update_utc <= now:
            problem = f"the CRL of {crl.issuer.rfc4514_string()} is past its Next Update"
        if problem is not None:
            refused.append(problem)
            continue
        before = older.get(_issuer_key(crl))
        if before is not None and _age(before) > _age(crl):
            crl = before
        crls.append(crl)
        taken.add(crl.public_bytes(_DER))
    return PushedCrls(merged_crls([], crls), frozenset(taken), tuple(refused))


class RevocationLists:
    """The CRLs of the file at ``path`` (checked against the CAs at ``ca_path``), for each
    TLS context built from now on (:meth:`attach`), as the file is when last read well
    (:meth:`refresh`). Reading the file at construction raises ValueError when it is wrong,
    so a service configured with a bad file does not start.

    A gateway's also holds the CRLs its core pushed (:attr:`pushed`, link version 10):
    the contexts check the newest of each CA's (:func:`merged_crls`). ``path`` None: a
    gateway without ``tls.crl``, which checks the pushed CRLs alone, and only for the CAs
    they are of (:attr:`lenient`: a certificate of a CA without one is taken, as without
    CRLs)."""

    def __init__(self, path: str | Path | None, ca_path: str | Path, *,
                 now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.path = str(path) if path is not None else None
        self.ca_path = str(ca_path)
        self._now = now
        self._stamp = self._file_stamp()
        #: Why the file as it is now could not be taken (logged once), or None.
        self._refused: tuple[FileStamp | None, str | None] | None = None
        self.crls: list[x509.CertificateRevocationList] = (
            load_crls(self.path, self.ca_path) if self.path is not None else [])
        #: The CRLs the core pushed, in force beside :attr:`crls` (memory only).
        self.pushed: list[x509.CertificateRevocationList] = []
        #: When the CRLs in force were read (unix seconds, from ``now``).
        self.loaded_at = self._now().timestamp()
        for crl in self.crls:
            self._warn_if_expiring(crl)

    @property
    def lenient(self) -> bool:
        """Whether a certificate of a CA without a CRL in force is taken (no ``tls.crl``)."""
        return self.path is None

    @property
    def in_force(self) -> list[x509.CertificateRevocationList]:
        """The CRLs the contexts check: :attr:`crls`, or with pushed ones the newest of
        each CA (:func:`merged_crls`)."""
        return merged_crls(self.crls, self.pushed) if self.pushed else self.crls

    @property
    def next_update(self) -> float | None:
        """The earliest Next Update of the CRLs in force (unix seconds): from then on the
        certificates of that CRL's CA are refused until a newer one is read; None when
        none says."""
        dates = [crl.next_update_utc for crl in self.in_force
                 if crl.next_update_utc is not None]
        return min(dates).timestamp() if dates else None

    def attach(self, store: Any) -> None:
        """Check client certificates against these CRLs in ``store`` (an
        ``OpenSSL.crypto.X509Store``, a new TLS context's): every certificate of the
        chain but the trust anchor, each against its issuer's CRL (OpenSSL's
        ``CRL_CHECK_ALL``: a revoked intermediate CA refuses what it issued). Lenient
        lists with none in force check nothing (a gateway without ``tls.crl`` that was
        pushed none)."""
        crls = self.in_force
        if self.lenient and not crls:
            return
        for crl in crls:
            store.add_crl(crl)
        store.set_flags(crypto.X509StoreFlags.CRL_CHECK | crypto.X509StoreFlags.CRL_CHECK_ALL)

    def read_changed(self, *, checked: bool = True) -> CrlReading | None:
        """The file read again if it changed since it was last taken (:meth:`take`), or
        None. Safe in a thread while the reactor uses these CRLs: it changes nothing; a
        file that cannot be read or checked is a reading with the reason, not an error.
        ``checked=False``: parsed only, not checked against the CA bundle on disk (the
        caller checks it against the bundle that will be in force: :mod:`kcm.tls_refresh`)."""
        if self.path is None:
            return None
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return None
        try:
            crls = load_crls(self.path, self.ca_path) if checked else read_crls(self.path)
            return CrlReading(stamp, crls, revoked=revoked_keys(crls))
        except Exception as e:  # noqa: BLE001 - whatever it is, the CRLs in force stay
            return CrlReading(stamp, None,
                              str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}")

    def with_crls(self, crls: list[x509.CertificateRevocationList]) -> RevocationLists:
        """These lists holding ``crls`` instead, for contexts built before :meth:`take`
        (this object is left as it is)."""
        candidate = copy.copy(self)
        candidate.crls = crls
        return candidate

    def with_pushed(self, pushed: list[x509.CertificateRevocationList]) -> RevocationLists:
        """These lists holding ``pushed`` as the core's CRLs instead (as :meth:`with_crls`)."""
        candidate = copy.copy(self)
        candidate.pushed = pushed
        return candidate

    def take(self, reading: CrlReading) -> bool:
        """Use what :meth:`read_changed` read from now on; whether the CRLs changed (the
        contexts are then to be built again: :class:`kcm.tls_refresh.TlsRefresher`). A
        file that could not be taken is logged once, the CRLs read before kept, and read
        again at the next refresh (a mode fixed with chmod changes no stamp)."""
        if reading.crls is None:
            if self._refused != (reading.stamp, reading.refusal):
                self._refused = (reading.stamp, reading.refusal)
                log.error("tls.crl: {error}; the CRLs read before stay in force, and the "
                          "file is read again every refresh until it can be taken",
                          error=reading.refusal)
            return False
        self._stamp, self._refused = reading.stamp, None
        self.crls = reading.crls
        self.loaded_at = self._now().timestamp()
        for crl in self.crls:
            self._warn_if_expiring(crl)
        # len() counts the entries without making an object of each (a CRL of 100,000).
        log.info("tls.crl: {path} read again: {count} CRL(s), {revoked} revoked "
                 "certificate(s) listed", path=self.path, count=len(self.crls),
                 revoked=sum(len(crl) for crl in self.crls))
        return True

    def _warn_if_expiring(self, crl: x509.CertificateRevocationList) -> None:
        next_update = crl.next_update_utc
        if next_update is None or next_update - self._now() >= EXPIRY_WARNING:
            return
        if next_update <= self._now():  # (it said "expires at" a date past, "after that")
            log.error("tls.crl: the CRL of {issuer} expired at {when} (Next Update): every "
                      "certificate it covers is refused until a newer CRL is in {path}",
                      issuer=crl.issuer.rfc4514_string(), when=next_update.isoformat(),
                      path=self.path)
            return
        log.warn("tls.crl: the CRL of {issuer} expires at {when} (Next Update): after "
                 "that every certificate it covers is refused until a newer CRL is in "
                 "{path}", issuer=crl.issuer.rfc4514_string(),
                 when=next_update.isoformat(), path=self.path)

    def _file_stamp(self) -> FileStamp | None:
        return file_stamp(self.path) if self.path is not None else None


class RevocationWatch:
    """The open connections of one listener whose TLS options a
    :class:`kcm.tls_refresh.TlsRefresher` renews, each with the :data:`CertificateKey` of
    its peer's chain (:func:`chain_keys`), read once as its handshake completes:
    :class:`kcm.tls.RenewableServerTLS` makes it each connection's ``peer_watch``
    (:class:`kcm.eager_tls.EagerTLSProtocol`), which tells it of the handshake and of the
    end. :meth:`cut_revoked` cuts those the CRLs just taken list, on the reactor: a set
    lookup per certificate of each connection (a thousand connections: about a
    millisecond)."""

    def __init__(self, name: str, refusals: ConnectionRefusals | None = None) -> None:
        self.name = name
        self.refusals = refusals if refusals is not None else ConnectionRefusals()
        self._peers: dict[Any, tuple[CertificateKey, ...]] = {}
        #: What the CRLs last taken list (empty until a refresh: the TLS contexts built at
        #: start check the CRLs read then).
        self._revoked: frozenset[CertificateKey] = frozenset()

    def __len__(self) -> int:
        return len(self._peers)

    def handshake_done(self, protocol: Any) -> None:
        """``protocol`` (a server-side TLS protocol) completed its handshake: its peer's
        chain is kept, and checked against the CRLs last taken (its TLS context may be one
        built with those before)."""
        if not protocol.connected or getattr(protocol, "_aborted", False):
            return
        try:
            keys = chain_keys(protocol._tlsConnection)
        except ValueError:
            # A certificate OpenSSL verified and cryptography will not read (a DER quirk):
            # the identity check refuses the connection (kcm.identity), nothing to keep.
            return
        except Exception:  # noqa: BLE001 - (not expected) the TLS check was done anyway
            log.failure("tls.crl: the certificate chain of a connection could not be read; "
                        "it is not checked against later CRLs")
            return
        if not keys:
            return
        self._peers[protocol] = keys
        if self._revoked and not self._revoked.isdisjoint(keys):
            self._cut(protocol, keys)

    def lost(self, protocol: Any) -> None:
        """``protocol``'s connection ended."""
        self._peers.pop(protocol, None)

    def cut_revoked(self, revoked: frozenset[CertificateKey]) -> int:
        """Cut each connection one of whose peer's certificates ``revoked`` (the CRLs just
        taken) lists, and check those whose handshake ends later against it; how many
        were cut."""
        self._revoked = revoked
        if not revoked:
            return 0
        listed = [(protocol, keys) for protocol, keys in self._peers.items()
                  if not revoked.isdisjoint(keys)]
        for protocol, keys in listed:
            self._cut(protocol, keys)
        return len(listed)

    def _cut(self, protocol: Any, keys: tuple[CertificateKey, ...]) -> None:
        """One line, then the connection closed: by its application protocol's
        ``certificate_revoked`` if it has one (a gateway's link: GOAWAY, then aborted),
        else aborted (a KMIP connection: nothing more is read or answered)."""
        self._peers.pop(protocol, None)
        self.refusals.refused("revoked")
        index = next(i for i, key in enumerate(keys) if key in self._revoked)
        log.warn("tls.crl: closed the {listener} connection of {identity} from {host}: "
                 "{whose} (serial {serial}) is revoked", listener=self.name,
                 identity=_peer_identity(protocol), host=_peer_host(protocol),
                 whose="its certificate" if index == 0 else "a CA certificate of its chain",
                 serial=f"{keys[index][1]:x}")
        revoked = getattr(protocol.wrappedProtocol, "certificate_revoked", None)
        if callable(revoked):
            revoked()
        else:
            protocol.abortConnection()


def _peer_identity(protocol: Any) -> str:
    """The SPIFFE ID (or else the subject) of the certificate of ``protocol``'s peer, in
    short ASCII: at most :data:`_SHOWN_ID` characters."""
    from kcm.tls import peer_certificate

    try:
        certificate = peer_certificate(protocol)
    except ValueError:
        certificate = None
    if certificate is None:
        return "(a certificate that cannot be read)"
    try:
        names = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)
    except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
        names = []
    spiffe = [name for name in names if name[:9].lower() == "spiffe://"]
    identity = spiffe[0] if spiffe else certificate.subject.rfc4514_string()
    return identity.encode("ascii", "backslashreplace").decode("ascii")[:_SHOWN_ID]


def _peer_host(protocol: Any) -> str:
    try:
        peer = protocol.transport.getPeer()
    except Exception:  # noqa: BLE001 - only for the log line
        return "?"
    return peer_host(peer)
