"""A running process's TLS files looked at again and taken without a restart: its
certificate, key and CA bundle (:mod:`kcm.tls_renewal` decides what may be taken) and, with
``tls.crl``, its CRLs (:mod:`kcm.tls_crl`). :class:`TlsRefresher` is the one service that
looks (every ``tls.crl_refresh`` seconds), builds every listener's and link's TLS options
again and swaps them in.

* A look reads what changed and, when something can be taken, builds each set of options
  from the files in force (those just taken, or those taken before) and the CRLs in force,
  all in a thread (``run_in_thread``: a CRL of 100,000 entries takes the better part of a
  second); only taking them and swapping the options in is done on the reactor, all at
  once. A look still running at the next tick makes that tick skip.
* Options are built from the very files that were checked (read once), never from the
  files as they are when built: a CRL taken while a renewal is half written, or refused,
  is built with the certificate and key in force.
* Server options (:meth:`TlsRefresher.options`: a :class:`kcm.tls.RenewableServerTLS`)
  give each new handshake the newest; connections already open keep theirs. With CRLs,
  each listener's open connections are watched (:class:`kcm.tls_crl.RevocationWatch`) and
  those the new CRLs list are cut. Client options (:meth:`TlsRefresher.client`: a
  :class:`kcm.tls.RenewableClientTLS`, the gateway's link) are used by the next connection;
  once another certificate is taken, :attr:`TlsRefresher.on_certificate_renewed` is
  called (a gateway makes its link again with it, make-before-break:
  :meth:`kcm.gateway.link_client.LinkClient.relink`).
* With CRLs, each CA of the bundle in force that no CRL in force is of is warned about
  once, at the start and as either changes: its client certificates are all refused.
* All or none: when the options of one listener or link cannot be built from what a look
  read (OpenSSL refuses them), none takes new options and nothing read is taken (the
  files and CRLs in force stay for all, and the CRLs cut no connection); one error, and
  the files are read again at every look. A renewed ``tls.ca`` that no longer holds the
  CA of a CRL in force is refused with the message a start gives
  (:func:`kcm.tls_crl.unsigned_crl`); a new CRL file is checked against the bundle in
  force after the look (the renewed one if taken, else the one in force: not the file on
  disk, which a refused renewal changed), and refused if one of its CRLs is of no CA of it.
* The CRLs a core pushed (a gateway: :meth:`TlsRefresher.take_pushed`) are checked
  against the bundle in force as they come, and the last set pushed is kept: a look that
  takes a renewed bundle checks it again against that one, in the same swap (a CA added
  puts its CRL, left out before, in force from the first handshake the CA is trusted at;
  a CA removed takes its CRL out), and a set whose options could not be built is tried
  again at every look until it is in force (said once), not only when the core sends
  another set.
* A SIGHUP makes a look at once (:meth:`TlsRefresher.look_now`), besides the ticks.
* Counted for the metrics (:mod:`kcm.tls_metrics`): :attr:`TlsRefresher.reloads` (renewed
  files taken), :attr:`TlsRefresher.reloads_refused` (looks that found changed files that
  could not be taken, or whose options could not be built, every look while they stay so)
  and :attr:`TlsRefresher.load_failures` (looks at ``tls.crl`` that found a file that could
  not be taken, or whose options could not be built, or looks that failed).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from kcm.connection_refusals import ConnectionRefusals
from kcm.reactor_threads import RunInThread, in_reactor_threads
from kcm.tls import RenewableClientTLS, RenewableServerTLS, TlsMaterial
from kcm.tls_crl import (
    REFRESH_INTERVAL,
    CertificateKey,
    CrlReading,
    PushedCrls,
    RevocationLists,
    RevocationWatch,
    cas_without_crl,
    pushed_crls,
    revoked_keys,
    unsigned_crl,
)
from kcm.tls_renewal import CertificateCheck, TlsIdentityFiles, TlsReading

__all__ = ["Build", "TlsRefresher"]

log = Logger()

#: How one listener's or link's TLS options are built: from the files in force and the CRLs
#: in force (None without ``tls.crl``). Run in a thread: it must only use what it is given.
Build = Callable[[TlsMaterial, RevocationLists | None], Any]

#: Each renewed options' holder (``use``) and how they are built.
_Renewed = list[tuple[Any, Build]]
#: What a look found and built: the files' reading, the CRL's, the core's CRLs checked (a
#: gateway's, None: none pushed since the last look, or unchanged), each holder's options
#: (or the Failure of their build), and what the CRLs then in force list (None: unchanged).
_Look = tuple[TlsReading | None, CrlReading | None, PushedCrls | None, list[tuple[Any, Any]],
              frozenset[CertificateKey] | None]


class TlsRefresher(Service):
    """Reads ``cert``, ``key``, ``ca`` and ``crl`` (if given) when it starts (a file that
    cannot be read stops the start) and again as the module says, every ``interval``
    seconds while it runs, and at once when asked (:meth:`look_now`: SIGHUP). Start it
    before the listeners and links it renews.

    ``refusals``: where open connections cut for a new CRL are counted (the process's;
    None: a count of its own). ``now``: the wall clock certificates are checked against.
    ``check``: a further check of a renewed certificate (:data:`CertificateCheck`)."""

    name = "kcm-tls-refresh"

    def __init__(self, cert: str, key: str, ca: str, clock: IReactorTime, *,
                 crl: str | None = None, interval: float = REFRESH_INTERVAL,
                 run_in_thread: RunInThread | None = None,
                 refusals: ConnectionRefusals | None = None,
                 now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
                 check: CertificateCheck | None = None, pushed: bool = False) -> None:
        self.files = TlsIdentityFiles(cert, key, ca, now=now, check=check)
        self.crl_path = crl
        #: Whether CRLs a core pushes are taken (a gateway: :meth:`take_pushed`).
        self.takes_pushed = pushed
        #: The core's CRLs last pushed, not looked at yet (None: none).
        self._pushed_ders: list[bytes] | None = None
        #: The core's CRLs last pushed (each DER; None: none yet), kept to be checked again
        #: against a renewed ``tls.ca``, and whether they could not be put in force (they
        #: are then tried again at the next look).
        self._pushed_last: list[bytes] | None = None
        self._pushed_unapplied = False
        #: The DER of the core's CRLs in force, and when they were taken (unix seconds).
        self.pushed_in_force: frozenset[bytes] = frozenset()
        self.pushed_at: float | None = None
        self.clock = clock
        self.interval = interval
        self._now = now
        #: The CRLs in force (with ``crl``, once started).
        self.lists: RevocationLists | None = None
        self.refusals = refusals if refusals is not None else ConnectionRefusals()
        #: Renewed files taken; looks that found changed files that could not be taken.
        self.reloads = 0
        self.reloads_refused = 0
        #: Looks at the CRL file that found one that could not be taken, or looks that failed.
        self.load_failures = 0
        self._run = run_in_thread or in_reactor_threads(clock)
        self._renewed: _Renewed = []
        self._loop: LoopingCall | None = None
        self._refreshing: Deferred[None] | None = None
        #: A look asked for (SIGHUP) while one ran: another once it ends.
        self._again = False
        #: A look was asked for (SIGHUP): its outcome is logged even when nothing changed.
        self._asked = False
        #: The stamps of the files whose options could not be built (logged once).
        self._unbuilt: tuple[object, object] | None = None
        #: The CAs in force (their DER) warned about for having no CRL in force.
        self._without_crl: frozenset[bytes] = frozenset()
        #: Called on the reactor, once every listener and link uses them, when renewed
        #: files with another certificate are taken (a gateway makes its link again).
        self.on_certificate_renewed: list[Callable[[], object]] = []
        #: Called on the reactor with the CRLs of ``crl`` in force: as it starts, then each
        #: time a changed file is taken (a core sends them to its gateways).
        self.on_crls_taken: list[Callable[[list[Any]], object]] = []

    def options(self, build: Build, *, name: str = "TLS") -> Callable[[], RenewableServerTLS]:
        """For a listener (:class:`kcm.tls.TLSListener`'s ``tls_options``): its server TLS
        options ``build`` makes, built again whenever the files or the CRLs change; with
        CRLs its open connections are checked against each new one
        (:class:`kcm.tls_crl.RevocationWatch`; ``name``: the listener's, for the log:
        ``KMIP``, ``gateway link``)."""

        def made() -> RenewableServerTLS:
            material = self._in_force()
            watch = (RevocationWatch(name, self.refusals)
                     if self.crl_path is not None or self.takes_pushed else None)
            renewable = RenewableServerTLS(build(material, self.lists), watch=watch)
            self._renewed.append((renewable, build))
            return renewable

        return made

    def client(self, build: Build) -> Callable[[], RenewableClientTLS]:
        """For a client endpoint (:class:`kcm.tls.TLSClientEndpoint`'s ``tls_options``):
        the client TLS options ``build`` makes, built once however many endpoints load them
        (the gateway's link to each of its cores), and again whenever the files change."""
        made_once: list[RenewableClientTLS] = []

        def made() -> RenewableClientTLS:
            if not made_once:
                renewable = RenewableClientTLS(build(self._in_force(), self.lists))
                self._renewed.append((renewable, build))
                made_once.append(renewable)
            return made_once[0]

        return made

    def certificate(self) -> Any:
        """The certificate in force (an ``x509.Certificate``; once started)."""
        return self._in_force().chain[0]

    def _in_force(self) -> TlsMaterial:
        material = self.files.material
        assert material is not None, "the TLS refresher starts first"
        return material

    def startService(self) -> None:
        self.files.read()
        if self.crl_path is not None or self.takes_pushed:
            self.lists = RevocationLists(self.crl_path, self.files.paths[2], now=self._now)
            self._warn_cas_without_crl()
            self._tell_crls()
        self._loop = LoopingCall(self.refresh)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)
        super().startService()

    def take_pushed(self, ders: list[bytes]) -> None:
        """The CRLs a core pushed (a CRLS frame, each DER): checked against ``tls.ca`` and
        put in force beside this process's own, as a look does (in a thread, then swapped
        in with the open connections they list cut); the newest push is looked at once the
        look running ends."""
        if not self.takes_pushed:
            return
        self._pushed_ders = list(ders)
        self._pushed_last = list(ders)
        self.refresh()

    def look_now(self) -> None:
        """A look now, not at the next tick (SIGHUP: files just written are taken at once),
        with the same checks and log lines, and one line when nothing changed; one running
        already is followed by another (it may have read the files before they were
        written). Nothing before the start."""
        if self.files.material is None:
            return
        if self._refreshing is not None:
            # (That look's outcome is not this SIGHUP's: it may have read the files before
            # they were written, and would have said they were unchanged.)
            self._again = True
            return
        self._asked = True
        self.refresh()

    def refresh(self) -> Deferred[None] | None:
        """One look at the files, unless the last one is still running (None then); never
        fails (the loop goes on whatever happens)."""
        if self.files.material is None or self._refreshing is not None:
            return None
        pushed, self._pushed_ders = self._pushed_ders, None
        if pushed is None and self._pushed_unapplied:
            pushed = self._pushed_last  # (a push that could not be put in force: again)
        try:
            running = self._run(_look, self.files, self.lists, list(self._renewed), pushed,
                                self.pushed_in_force, self._now(), self._pushed_last)
        except Exception:  # noqa: BLE001 - no thread to run it in: tried again next tick
            self.load_failures += 1
            self._pushed_unapplied = self._pushed_unapplied or pushed is not None
            log.failure("tls: the look at the TLS files failed; it is tried again")
            return None
        self._refreshing = running.addCallback(self._swap)

        def failed(failure: Failure) -> None:
            self.load_failures += 1
            self._pushed_unapplied = self._pushed_unapplied or pushed is not None
            log.failure("tls: the look at the TLS files failed; it is tried again", failure)

        self._refreshing.addErrback(failed)

        def done(_: object) -> None:
            self._refreshing = None
            if self._again:
                self._again = False
                self._asked = True
                self.refresh()
            elif self._pushed_ders is not None:
                self.refresh()

        return self._refreshing.addBoth(done)

    def _swap(self, look: _Look) -> None:
        """On the reactor: take what the look read and put each listener's and link's new
        options in, all or none: if one could not be built, nothing read is taken
        (:meth:`_not_built`); then with new CRLs cut every open connection whose peer's
        chain they list (:meth:`RevocationWatch.cut_revoked`)."""
        identity, crl, pushed, built, revoked = look
        if self._asked:
            self._asked = False
            if identity is None and crl is None:
                log.info("tls: SIGHUP: {cert}, {key} and {ca} are unchanged",
                         cert=self.files.paths[0], key=self.files.paths[1],
                         ca=self.files.paths[2])
        failure = next((options for _, options in built if isinstance(options, Failure)),
                       None)
        if failure is not None:
            self._not_built(identity, crl, failure)
            if pushed is not None:
                if not self._pushed_unapplied:
                    log.error("tls.crl: the CRLs the core pushed could not be put in force; "
                              "those in force stay, and they are tried again at every look")
                self._pushed_unapplied = True
            return
        self._pushed_unapplied = False  # (what was handed over is in force, or the same)
        before = self.files.material
        renewed = identity is not None and self.files.take(identity)
        if identity is not None:
            if renewed:
                self.reloads += 1
            else:
                self.reloads_refused += 1
        if crl is not None and crl.crls is None:
            self.load_failures += 1
        crls_taken = crl is not None and self.lists is not None and self.lists.take(crl)
        file_taken = crls_taken
        if pushed is not None and self.lists is not None:
            self._take_pushed(pushed)
            crls_taken = True
        if not (renewed or crls_taken):
            return
        self._unbuilt = None
        for renewable, options in built:
            renewable.use(options)
        self._warn_cas_without_crl()
        after = self.files.material
        if (renewed and before is not None and after is not None
                and before.chain[0] != after.chain[0]):
            for renewed_certificate in list(self.on_certificate_renewed):
                renewed_certificate()
        if not crls_taken:
            return
        if file_taken:
            self._tell_crls()
        if revoked is None:  # (not expected: computed with the options)
            assert self.lists is not None
            revoked = revoked_keys(self.lists.in_force)
        for renewable, _ in self._renewed:
            watch = getattr(renewable, "watch", None)
            if watch is not None:
                watch.cut_revoked(revoked)

    def _tell_crls(self) -> None:
        if self.lists is None or self.crl_path is None:
            return
        for told in list(self.on_crls_taken):
            try:
                told(list(self.lists.crls))
            except Exception:  # noqa: BLE001 - the CRLs are in force here all the same
                log.failure("tls.crl: passing the CRLs on failed")

    def _take_pushed(self, pushed: PushedCrls) -> None:
        """On the reactor: the core's CRLs ``pushed`` in force from now on; one line."""
        assert self.lists is not None
        self.lists.pushed = pushed.crls
        self.pushed_in_force = pushed.ders
        self.pushed_at = self._now().timestamp()
        for refusal in pushed.refused:
            log.warn("tls.crl: a CRL the core pushed is left out: {why}", why=refusal)
        log.info("tls.crl: the core's CRLs taken: {count} CRL(s), {revoked} revoked "
                 "certificate(s) listed; {total} CRL(s) in force", count=len(pushed.crls),
                 revoked=sum(len(crl) for crl in pushed.crls),
                 total=len(self.lists.in_force))

    def _warn_cas_without_crl(self) -> None:
        """One warning for each CA of the bundle in force that no CRL in force is of, as
        it becomes so (at the start, a new CA added to ``tls.ca`` without its CRL, a CRL
        left out of ``tls.crl``): every client certificate it issued is refused."""
        material = self.files.material
        if self.lists is None or material is None or self.lists.lenient:
            return
        missing = cas_without_crl(self.lists.in_force, material.authorities)
        seen = frozenset(ca.public_bytes(Encoding.DER) for ca in missing)
        for ca in missing:
            if ca.public_bytes(Encoding.DER) not in self._without_crl:
                log.warn("tls.crl: {path} holds no CRL of {ca}, a CA of {bundle}: every "
                         "client certificate it issued is refused (certificate verify "
                         "failed: unable to get certificate CRL); add its CRL (an empty one "
                         "if it revoked none)", path=self.lists.path,
                         ca=ca.subject.rfc4514_string(), bundle=self.files.paths[2])
        self._without_crl = seen

    def _not_built(self, identity: TlsReading | None, crl: CrlReading | None,
                   failure: Failure) -> None:
        """The options of a listener or link could not be built from what a look read:
        none takes them (all keep those in force, so that no listener checks peers
        against other CAs or CRLs than the rest), nothing read is taken, and it is counted
        as refused (renewed files) and as a failed load (a new CRL file), logged once while
        the files stay so and read again at every look."""
        if identity is not None:
            self.reloads_refused += 1
            if identity.material is None:
                self.files.take(identity)  # (refused anyway: logged as such)
        if crl is not None:
            self.load_failures += 1
            if crl.crls is None and self.lists is not None:
                self.lists.take(crl)
        seen = (identity.stamps if identity is not None else None,
                crl.stamp if crl is not None else None)
        if self._unbuilt != seen:
            self._unbuilt = seen
            log.failure("tls: the TLS options of a listener or link could not be built from "
                        "the files read again ({error}); no listener or link takes them, "
                        "those in force stay, and the files are read again at every look",
                        failure, error=failure.getErrorMessage())

    def stopService(self) -> Any:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return super().stopService()


def _look(files: TlsIdentityFiles, lists: RevocationLists | None,
          renewed: _Renewed, pushed_ders: list[bytes] | None = None,
          pushed_in_force: frozenset[bytes] = frozenset(),
          now: dt.datetime | None = None, pushed_last: list[bytes] | None = None) -> _Look:
    """In a thread: the files read again if they changed, the CRL file too, the CRLs a core
    pushed checked (those just pushed, or, with a renewed ``tls.ca`` to take, the last
    pushed, ``pushed_last``, against it), and, when any can be taken, each holder's options
    built from what is then in force."""
    identity = files.read_changed()
    if pushed_ders is None and identity is not None and identity.material is not None:
        # The core's CRLs were checked against the bundle in force when they came: a
        # renewed one may add the CA of one left out, or remove the CA of one taken.
        pushed_ders = pushed_last
    crl = lists.read_changed(checked=False) if lists is not None else None
    if identity is not None and identity.material is not None and lists is not None:
        # The CRLs in force after this look must each be signed by a CA of the renewed
        # bundle, as at a start: one that is not would stop the next start.
        crls = crl.crls if crl is not None and crl.crls is not None else lists.crls
        problem = unsigned_crl(crls, identity.material.authorities, lists.path,
                               files.paths[2])
        if problem is not None:
            identity = TlsReading(identity.stamps, None, problem)
    if crl is not None and crl.crls is not None and lists is not None:
        # New CRLs are checked against the bundle in force after this look: the renewed
        # one if it is taken, else the one in force (not the file on disk, which a
        # refused renewal changed: a CRL of its new CA alone, beside the old bundle,
        # left every client of the old CA without a CRL of its CA, refused).
        renewal = identity.material if identity is not None else None
        bundle = renewal if renewal is not None else files.material
        assert bundle is not None  # (started)
        where = files.paths[2] if renewal is not None or identity is None else \
            f"{files.paths[2]} in force (its renewal not taken)"
        problem = unsigned_crl(crl.crls, bundle.authorities, lists.path, where)
        if problem is not None:
            crl = CrlReading(crl.stamp, None, problem)
    material = identity.material if identity is not None else None
    new_crls = crl.crls if crl is not None else None
    pushed: PushedCrls | None = None
    if pushed_ders is not None and lists is not None:
        bundle = material if material is not None else files.material
        assert bundle is not None  # (started)
        pushed = pushed_crls(pushed_ders, bundle.authorities, lists.pushed, files.paths[2],
                             now=now if now is not None else dt.datetime.now(dt.UTC))
        if pushed.ders == pushed_in_force and not pushed.refused:
            pushed = None  # (the same CRLs again: a new link)
    if material is None and new_crls is None and pushed is None:
        return identity, crl, None, [], None
    in_force = material if material is not None else files.material
    assert in_force is not None  # (started)
    candidate = lists.with_crls(new_crls) if lists is not None and new_crls is not None \
        else lists
    if candidate is not None and pushed is not None:
        candidate = candidate.with_pushed(pushed.crls)
    revoked = None
    if candidate is not None and (new_crls is not None or pushed is not None):
        revoked = (crl.revoked if crl is not None and crl.revoked is not None
                   and not candidate.pushed else revoked_keys(candidate.in_force))
    built: list[tuple[Any, Any]] = []
    for renewable, build in renewed:
        try:
            built.append((renewable, build(in_force, candidate)))
        except Exception:  # noqa: BLE001 - logged on the reactor; the options in force stay
            built.append((renewable, Failure()))
    return identity, crl, pushed, built, revoked
