"""A running process's own TLS files (``tls.cert``, ``tls.key``, ``tls.ca``), read again
when they change and taken only if they pass the checks (:class:`TlsIdentityFiles`): the
decisions of a certificate renewal without a restart (:mod:`kcm.tls_refresh` looks and
swaps).

* The files are read at start (:meth:`TlsIdentityFiles.read`: a file that cannot be read
  stops the start, as before) and then, whenever one of them changed (its inode, size or
  modification time: :mod:`kcm.file_stamp`), all three again (:meth:`read_changed`, safe in
  a thread: it changes nothing).
* Files read again are taken (:meth:`take`) when the key is the certificate's, the
  certificate is valid now (the injected ``now``) and OpenSSL verifies it, with the
  intermediates after it, up to a CA of the bundle read with them; and when ``check``
  (if given) finds nothing wrong with the certificate (a gateway's must still name it).
  The chain is checked only for a process whose certificate at start chained to its own
  ``tls.ca``: a server certificate from a CA that is not among those it takes client
  certificates from starts (nothing checks that at start), and so is renewed the same way.
* A key that is not the certificate's is what a renewal written as two files looks like
  between the two: it is not taken, not an error, and looked at again next time; one
  warning while it stays so. Anything else wrong (a file that cannot be read or parsed, a
  certificate out of its dates or that does not chain) is one error per set of files and
  reason. Either way what is in force stays, and the files are read again at every look
  until they can be taken (a mode fixed with chmod changes no stamp).

Pure apart from the files it reads; time comes from ``now``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from twisted.logger import Logger

from kcm.file_stamp import FileStamp, file_stamp
from kcm.tls import TlsMaterial, read_tls_material
from kcm.tls_checks import chain_problem, key_matches, validity_problem

__all__ = ["MISMATCHED", "CertificateCheck", "TlsIdentityFiles", "TlsReading"]

log = Logger()

#: The refusal of a key that is not the certificate's (a renewal half written).
MISMATCHED = "the key is not the certificate's"

#: A further check of a renewed certificate: why it may not be taken, or None.
CertificateCheck = Callable[[x509.Certificate], "str | None"]

Stamps = tuple["FileStamp | None", ...]


@dataclass(frozen=True)
class TlsReading:
    """What one look at changed files found (:meth:`TlsIdentityFiles.read_changed`): their
    ``stamps`` and the ``material`` read and checked, or None and the ``refusal`` (why
    not: :data:`MISMATCHED` for a key that is not the certificate's)."""

    stamps: Stamps
    material: TlsMaterial | None
    refusal: str | None = None


class TlsIdentityFiles:
    """The certificate, key and CA files at ``cert``, ``key`` and ``ca``, as last taken
    (:attr:`material`), as the module says. ``check``: see :data:`CertificateCheck`."""

    def __init__(self, cert: str, key: str, ca: str, *,
                 now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
                 check: CertificateCheck | None = None) -> None:
        self.paths = (str(cert), str(key), str(ca))
        self._now = now
        self._check = check
        self._stamps: Stamps | None = None
        #: The files in force (None until :meth:`read`).
        self.material: TlsMaterial | None = None
        #: What was last refused and logged (so it is logged once), or None.
        self._refused: tuple[Stamps | None, str] | None = None
        #: Whether a renewed certificate must chain to the CA file (see the module).
        self._chain_checked = True

    def read(self) -> TlsMaterial:
        """Read the files now (a service's start): ValueError or OSError if one cannot be
        read or used; the key's match is checked as the options are built (OpenSSL)."""
        stamps = self._file_stamps()
        self.material = read_tls_material(*self.paths)
        self._stamps = stamps
        self._chain_checked = chain_problem(self.material.chain, self.material.authorities,
                                            self._now()) is None
        return self.material

    def read_changed(self) -> TlsReading | None:
        """The files read again and checked if one changed since they were last taken, or
        None. Safe in a thread while the reactor uses the material in force: it changes
        nothing; files that cannot be read or taken are a reading with the reason."""
        stamps = self._file_stamps()
        if stamps == self._stamps:
            return None
        try:
            material = read_tls_material(*self.paths)
        except Exception as e:  # noqa: BLE001 - whatever it is, the files in force stay
            return TlsReading(stamps, None, str(e) if isinstance(e, ValueError | OSError)
                              else f"{type(e).__name__}: {e}")
        refusal = self._refusal(material)
        return TlsReading(stamps, None if refusal else material, refusal)

    def _refusal(self, material: TlsMaterial) -> str | None:
        certificate = material.chain[0]
        if not key_matches(certificate, material.key):
            return MISMATCHED
        now = self._now()
        problem = validity_problem(certificate, now)
        if problem is not None:
            return f"the certificate is {problem}"
        problem = (chain_problem(material.chain, material.authorities, now)
                   if self._chain_checked else None)
        if problem is not None:
            return f"the certificate does not chain to a CA of {self.paths[2]}: {problem}"
        return self._check(certificate) if self._check is not None else None

    def take(self, reading: TlsReading) -> bool:
        """Use what :meth:`read_changed` read from now on, if it could be taken (logged);
        whether it was. Files refused are logged (once while they stay so) and read again
        at the next look."""
        cert, key, _ = self.paths
        if reading.material is None:
            refusal = reading.refusal or "?"
            mismatched = refusal == MISMATCHED
            seen = (None if mismatched else reading.stamps, refusal)
            if self._refused != seen:
                self._refused = seen
                if mismatched:
                    log.warn("tls: {key} is not the key of the certificate in {cert} (a "
                             "renewal half written?); the certificate in force stays, and "
                             "they are read again at every look", cert=cert, key=key)
                else:
                    log.error("tls: the renewed TLS files cannot be taken: {error}; those "
                              "in force stay, and they are read again at every look",
                              error=refusal, cert=cert)
            return False
        self._stamps, self._refused = reading.stamps, None
        self.material = reading.material
        certificate = reading.material.chain[0]
        log.info("tls: {cert}, {key} and {ca} read again: certificate serial {serial}, valid "
                 "until {until}; new TLS handshakes use them", cert=cert, key=key,
                 ca=self.paths[2], serial=f"{certificate.serial_number:x}",
                 until=f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
        return True

    def _file_stamps(self) -> Stamps:
        return tuple(file_stamp(path) for path in self.paths)
