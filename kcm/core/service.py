"""The services of kcm-core's tree. :func:`kcm.core.tap.makeService` assembles them; none does
I/O before it starts.

In start order (:class:`CoreService` starts its children in the order they were added, all or
none):

* on SQLite, :class:`kcm.core.sqlite_owner.SqliteOwner`: the lock that keeps a second core off
  the file;
* the store (:class:`kcm.core.store.engine.Store`): upgrades the schema, opens the database;
* :class:`MasterKey`: opens L1 (key file or PKCS#11 token), checks it against the database,
  gives it to the
  keyring (and the audit key derived from it to the store), anchors an audit chain written
  before it was keyed;
* :class:`kcm.core.audit_checkpoints.AuditCheckpoints`: logs a checkpoint of the audit
  chain's head, at start and periodically;
* :class:`PolicyFile`: reads the policy file, and again on SIGHUP;
* the KMIP listener and, unless turned off, the event fan-out and the gateways' link
  listener (:class:`kcm.tls.TLSListener`: the TLS files are read when they start);
* the state sweeper.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import tomllib
from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredLock, maybeDeferred, succeed
from twisted.logger import Logger

from kcm.core import audit, events
from kcm.core.config import CoreConfig
from kcm.core.event_fanout import EventFanout
from kcm.core.gateway_scopes import GatewayScopes
from kcm.core.keyring import Keyring
from kcm.core.l1 import L1_CHECK_META, L1Key, l1_refusal, open_l1
from kcm.core.lineage import Lineage, ensure_lineage, read_lineage
from kcm.core.link_server import LinkServerFactory
from kcm.core.metrics import CoreMetrics
from kcm.core.request_handler import CoreRequestHandler
from kcm.core.store import repository
from kcm.core.store.engine import Store
from kcm.drain import DRAIN_GRACE, DRAIN_TIMEOUT, drain
from kcm.identity import SubjectMap
from kcm.kernel.correlation import new_correlation_id
from kcm.kmip_protocol import KmipServerFactory
from kcm.process import ProcessService
from kcm.reactor_threads import RunInThread, in_reactor_threads

__all__ = ["L1_CHECK_META", "SET_ACCESS_POLICY_OPERATION", "CoreService", "MasterKey",
           "PolicyFile", "StartupError", "access_policy_records", "l1_refusal"]

log = Logger()

class StartupError(RuntimeError):
    """kcm-core cannot start with this configuration and data."""


class MasterKey(Service):
    """Opens L1 when it starts (the key file, the token key ``l1_pkcs11`` names, or the key
    in the environment variable ``l1_key_env``), checks
    it against the check value ``kcm core init`` stored in the database, and gives it to the
    keyring; gives the audit
    key derived from it to the store, and anchors audit records written before the chain was
    keyed (:func:`kcm.core.audit.key_chain`). Starts after the store (it reads the check
    value through it); before it, :class:`~kcm.core.l1_before_migration.L1BeforeMigration`
    checks the key (:meth:`open`) against a database whose schema the store would upgrade."""

    name = "kcm-l1"

    def __init__(self, keyring: Keyring, store: Store, l1_key_file: str,
                 l1_pkcs11: str | None = None, l1_key_env: str | None = None) -> None:
        self.keyring = keyring
        self.store = store
        self.l1_key_file = l1_key_file
        self.l1_pkcs11 = l1_pkcs11
        self.l1_key_env = l1_key_env
        #: The database's deployment id and restore generation (:mod:`kcm.core.lineage`),
        #: read when it starts.
        self.lineage: Lineage | None = None
        self._l1: L1Key | None = None

    def open(self) -> L1Key:
        """The configured L1, opened at the first call (by
        :class:`~kcm.core.l1_before_migration.L1BeforeMigration` before the store starts, when
        it checks the key first) and kept for the next."""
        if self._l1 is None:
            self._l1, _ = open_l1(self.l1_key_file, self.l1_pkcs11,
                                  l1_key_env=self.l1_key_env)
        return self._l1

    def startService(self) -> None:
        l1 = self.open()
        # Before the reactor runs, so blocking here holds nothing up.
        expected = self.store.run_sync(lambda s: repository.get_meta(s, L1_CHECK_META),
                                       write=False)
        refusal = l1_refusal(expected, l1)
        if refusal is not None:
            raise StartupError(refusal)
        self.keyring.load(l1)
        self.store.audit_key = self.keyring.audit_key
        self.store.row_seal = self.keyring.row_seal
        log.info("L1: the {l1}", l1=l1.description)
        try:
            anchor = self.store.run_sync(lambda s: audit.key_chain(s, by="kcm-core"))
        except audit.AuditChainError as e:
            raise StartupError(str(e)) from None
        if anchor is not None:
            log.info("audit chain keyed: records 1..{unkeyed} were written before it was, "
                     "record {seq} anchors them", unkeyed=anchor.seq - 1, seq=anchor.seq)
        # (Read first, written only when missing: a start writes nothing more here.)
        self.lineage = (self.store.run_sync(read_lineage, write=False)
                        or self.store.run_sync(ensure_lineage))
        log.info("database: {lineage}", lineage=str(self.lineage),
                 deployment=self.lineage.deployment, generation=self.lineage.generation)
        super().startService()


class PolicyFile(Service):
    """The core's policy (the subject map, ARCHITECTURE §6): read from ``path`` when it
    starts (no path: no subject mappings) and on SIGHUP while it runs.

    :attr:`subject_map` is the map in force (None without a policy file), replaced whole on a
    reload; each function in :attr:`on_change` is called with it at start and on every
    change; :attr:`gateway_scopes` the gateways' scopes (the file's ``[gateways]``,
    :mod:`kcm.core.gateway_scopes`), each function in :attr:`on_scopes` called with them at
    start and whenever they change (they stay in the core: gateways are not sent them);
    each function in :attr:`on_sighup` is called on the reactor at each SIGHUP, after the
    reload is begun (the TLS files' look, :meth:`kcm.tls_refresh.TlsRefresher.look_now`).
    A reload that changed the map writes a ``policy`` event through ``store`` so
    every gateway applies it in order, and, in the same transaction, audit records of what
    changed (:func:`access_policy_records`): a mapping gives a certificate subject a
    tenant's identity, which each tenant's audit records must show.
    """

    name = "kcm-policy"

    def __init__(self, path: str | None, store: Store, reactor: Any, *,
                 run_in_thread: RunInThread | None = None) -> None:
        """``run_in_thread`` (default: the reactor's thread pool) reads and checks the file
        at a reload, and works out its audit records: 5,000 mappings take a third of a
        second, too long for the reactor."""
        self.path = path
        self.store = store
        self.reactor = reactor
        self.subject_map: SubjectMap | None = None
        self.on_change: list[Callable[[SubjectMap | None], None]] = []
        self.gateway_scopes = GatewayScopes({})
        self.on_scopes: list[Callable[[GatewayScopes], None]] = []
        self.on_sighup: list[Callable[[], object]] = []
        self._run = run_in_thread or in_reactor_threads(reactor)
        self._reads = DeferredLock()  # reloads read the file one after another
        self._writes = DeferredLock()  # policy events commit in reload order
        self._pushed: str | None = None  # the document gateways were last sent
        #: The document the audit log last describes (the change to the next is audited).
        self._audited = SubjectMap({}).document()
        self._previous_sighup: Any = None

    def startService(self) -> None:
        if self.path:
            subject_map, _, scopes = _read_policy(self.path)
            self._use(subject_map)
            self._use_scopes(scopes)
        else:
            self._use(None)
        if not len(self.gateway_scopes):
            log.warn("no gateway is scoped: every gateway may assert any tenant's callers; "
                     "scope each in the policy file's [gateways] (docs/operations.md, "
                     '"Gateway scopes")')
        self._pushed = self._audited = (self.subject_map or SubjectMap({})).document()
        self._install_sighup()
        super().startService()

    def stopService(self) -> None:
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        super().stopService()

    def _use(self, subject_map: SubjectMap | None) -> None:
        self.subject_map = subject_map
        for change in self.on_change:
            change(subject_map)

    def _use_scopes(self, scopes: GatewayScopes) -> None:
        self.gateway_scopes = scopes
        for change in self.on_scopes:
            change(scopes)

    def _install_sighup(self) -> None:
        """SIGHUP reloads the policy file, then calls :attr:`on_sighup`. The handler only
        schedules :meth:`sighup` on the reactor (``callFromThread`` is safe from a signal
        handler); signals can only be handled in the main thread, so elsewhere (tests)
        nothing is installed."""
        if threading.current_thread() is threading.main_thread():
            self._previous_sighup = signal.signal(
                signal.SIGHUP, lambda signum, frame: self.reactor.callFromThread(self.sighup))

    def sighup(self) -> Deferred[None]:
        """What SIGHUP does: :meth:`reload`, then each of :attr:`on_sighup`; what
        :meth:`reload` gives."""
        reloading = self.reload()
        for also in self.on_sighup:
            also()
        return reloading

    def reload(self) -> Deferred[None]:
        """Re-read the policy file; if it changed, use it at once (new direct connections,
        callers asserted on the link, WELCOMEs) and write a ``policy`` event so every
        gateway applies it in order. A file that does not load leaves the policy as it was.

        The file is read and checked in a thread, one reload after another (a SIGHUP during
        a reload reads the file again after it); only using the map is on the reactor.
        """
        path = self.path
        if not path:
            log.warn("policy reload: no policy_file is configured; nothing to reload")
            return succeed(None)
        return self._reads.run(self._reload, path)

    def _reload(self, path: str) -> Deferred[None]:
        """Read the file in a thread, then use it on the reactor; fires once its policy
        event is written (or it needed none)."""
        reading = self._run(_read_policy, path)
        reading.addCallbacks(self._loaded, self._unreadable, callbackArgs=(path,),
                             errbackArgs=(path,))
        return reading

    def _unreadable(self, failure: Any, path: str) -> None:
        if not failure.check(OSError, ValueError):
            log.failure("policy reload from {path} failed, the policy is unchanged", failure,
                        path=path)
            return
        log.error("policy reload from {path} failed, the policy is unchanged: {error}",
                  path=path, error=str(failure.value))

    def _loaded(self, loaded: tuple[SubjectMap, str, GatewayScopes],
                path: str) -> Deferred[None] | None:
        subject_map, document, scopes = loaded
        scoped = scopes != self.gateway_scopes
        if scoped:
            self._use_scopes(scopes)
            log.info("policy reloaded from {path}: {count} gateway scopes", path=path,
                     count=len(scopes))
        if document == self._pushed:
            if not scoped:
                log.info("policy reload: {path} is unchanged", path=path)
            return None
        self._use(subject_map)
        self._pushed = document
        log.info("policy reloaded from {path}: {count} subject mappings", path=path,
                 count=len(subject_map))
        d = self._writes.run(self._write_change, document)
        d.addCallback(lambda seq: log.info("policy event {seq} written for the gateways",
                                           seq=seq))
        d.addErrback(self._event_failed, document)
        return d

    def _write_change(self, document: str) -> Deferred[int]:
        """In one transaction, the audit records of the change from the map the audit log
        last describes to ``document``, and the ``policy`` event; run under the writes' lock,
        so that the next change is audited from this one once it has committed."""
        before = self._audited
        working = self._run(access_policy_records, before, document,
                            correlation_id=new_correlation_id())

        def write(records: list[audit.AuditEvent], session: Any) -> int:
            for record in records:
                audit.append_audit(session, record)
            return events.policy(session, document)

        def written(seq: int) -> int:
            self._audited = document
            return seq

        return working.addCallback(
            lambda records: self.store.run(partial(write, records))).addCallback(written)

    def _event_failed(self, failure: Any, document: str) -> None:
        log.failure("writing the policy event and its audit records failed; gateways learn "
                    "the policy when they next link, or from the next reload", failure)
        if self._pushed == document:
            self._pushed = None  # the next SIGHUP writes the event again


def _read_policy(path: str) -> tuple[SubjectMap, str, GatewayScopes]:
    """The subject map of the policy file at ``path``, its document, and the gateways'
    scopes (in a thread; the file read once, both checked before either is used)."""
    with open(path, "rb") as f:
        document = tomllib.load(f)
    subject_map = SubjectMap.from_policy(document, path)
    scopes = GatewayScopes.from_document(document, path)
    return subject_map, subject_map.document(), scopes


#: The operation of the audit records of a change of the access policy (the subject map).
SET_ACCESS_POLICY_OPERATION = "SetAccessPolicy"
#: The most mappings one such record names, of those added and of those removed.
MAX_AUDITED_MAPPINGS = 50
#: The most characters of one mapping (``SUBJECT -> PATH``) a record repeats.
MAX_AUDITED_MAPPING = 300


def access_policy_records(before: str, after: str, *, correlation_id: str
                          ) -> list[audit.AuditEvent]:
    """The audit records of the access policy changing from document ``before`` to
    ``after`` (:meth:`kcm.identity.SubjectMap.document`): one per tenant whose identities a
    mapping added or removed gives or took (so that the tenant's own records show it), and
    one with no tenant for operator identities. Each names its mappings ``SUBJECT -> PATH``
    (``added``, ``removed``; a changed path is both), at most :data:`MAX_AUDITED_MAPPINGS`
    of each, with the counts when there are more."""
    old, new = json.loads(before), json.loads(after)
    changes: dict[str | None, tuple[list[str], list[str]]] = {}
    for subject, path in sorted(new.items()):
        if old.get(subject) != path:
            changes.setdefault(_path_tenant(path), ([], []))[0].append(
                _mapping(subject, path))
    for subject, path in sorted(old.items()):
        if new.get(subject) != path:
            changes.setdefault(_path_tenant(path), ([], []))[1].append(
                _mapping(subject, path))
    records = []
    for tenant in sorted(changes, key=lambda t: (t is not None, t or "")):
        added, removed = changes[tenant]
        detail: dict[str, object] = {"added": added[:MAX_AUDITED_MAPPINGS],
                                     "removed": removed[:MAX_AUDITED_MAPPINGS],
                                     "mappings": len(new)}
        for name, mappings in (("added", added), ("removed", removed)):
            if len(mappings) > MAX_AUDITED_MAPPINGS:
                detail[f"{name}_count"] = len(mappings)
        records.append(audit.AuditEvent(
            principal="kcm-core", operation=SET_ACCESS_POLICY_OPERATION,
            result_status="SUCCESS", correlation_id=correlation_id, source="sighup",
            tenant=tenant, detail=detail))  # type: ignore[arg-type]
    return records


def _path_tenant(path: str) -> str | None:
    """The tenant a role path (``tenant/T/...``) names; None for an operator's."""
    parts = path.split("/")
    return parts[1] if len(parts) > 1 and parts[0] == "tenant" else None


def _mapping(subject: str, path: str) -> str:
    text = f"{subject} -> {path}"
    return text if len(text) <= MAX_AUDITED_MAPPING else text[:MAX_AUDITED_MAPPING] + "..."


#: Seconds a thread runs before it must let a thread that waits for the GIL have it.
GIL_SWITCH_INTERVAL = 0.0005


class CoreService(ProcessService):
    """kcm-core: the store, the KMIP listener in front of it, and the gateways' link.

    The root of the tree :func:`kcm.core.tap.makeService` assembles; it keeps the parts
    others look at (the tests, the policy reload).
    """

    def __init__(self, config: CoreConfig, *, reactor: Any, store: Store, keyring: Keyring,
                 handler: CoreRequestHandler, policy: PolicyFile) -> None:
        super().__init__("kcm-core", log_format=config.log_format, log_level=config.log_level,
                         log_path=config.log_file, reactor=reactor)
        self.config = config
        self.reactor = reactor
        self.store = store
        self.keyring = keyring
        self.handler = handler
        self.policy = policy
        #: The outbox fan-out and the link listener's factory (None with the link off).
        self.fanout: EventFanout | None = None
        self.link_factory: LinkServerFactory | None = None
        #: The metrics (kcm.core.metrics), set by makeService.
        self.metrics: CoreMetrics | None = None
        #: The KMIP listener's factory, set by makeService (what a stop drains).
        self.kmip_factory: KmipServerFactory | None = None

    @property
    def subject_map(self) -> SubjectMap | None:
        """The subject map in force (the policy)."""
        return self.policy.subject_map

    def reload_policy(self) -> Deferred[None]:
        """Re-read the policy file (what SIGHUP does); see :meth:`PolicyFile.reload`."""
        return self.policy.reload()

    def stopService(self) -> Deferred[None]:
        """Drain first (:func:`kcm.drain.drain`): the listeners stop, each KMIP client
        connection is closed once idle 0.5 s, its requests answered, and each gateway is
        sent DRAIN (:meth:`LinkServerFactory.drain`): it sends its new requests to its next
        link and closes this one once its requests are answered (a gateway that does not
        take DRAIN is waited for until none of its requests is in flight); then the rest
        stops (the store last), ``drain_timeout`` seconds later at most (5 by default)."""
        if not self.running:
            return maybeDeferred(super().stopService)
        self.stopping = True
        kmip, links = self.kmip_factory, self.link_factory
        waits: list[Callable[[], Deferred[None]]] = []
        if kmip is not None:
            waits.append(lambda: kmip.drain(DRAIN_GRACE))
        if links is not None:
            waits.append(links.drain)
        draining = drain(self.reactor, "kcm-core",
                         [self.namedServices.get("kcm-kmip-listener"),
                          self.namedServices.get("kcm-link-listener")], waits,
                         timeout=self.config.drain_timeout)
        draining.addCallback(lambda _: self._flush_refusals())
        return draining.addCallback(lambda _: super(CoreService, self).stopService())

    def _flush_refusals(self) -> Deferred[None]:
        """Once nothing more can be refused (the listeners stopped, the connections
        drained), the coalesced refusals' last records, before the store stops; at most
        :data:`~kcm.drain.DRAIN_TIMEOUT` seconds, never failing."""
        flushing = self.handler.flush_refusals()
        flushing.addTimeout(DRAIN_TIMEOUT, self.reactor)
        return flushing.addErrback(lambda failure: log.failure(
            "kcm-core stopping: the last refusal records were not written", failure))

    def startService(self) -> None:
        # Requests run on worker threads under one GIL. A thread that waits for it (every
        # SQLite or PostgreSQL call gives it up and takes it back) waits up to the switch
        # interval while a busy thread runs: Python's 5 ms made a light request of one
        # tenant wait tens of ms behind another tenant's long Locates (docs/benchmarks.md,
        # "Fairness between tenants").
        sys.setswitchinterval(GIL_SWITCH_INTERVAL)
        super().startService()
        log.info("kcm-core listening on {listen}", listen=self.config.listen)
        if self.link_factory is not None:
            log.info("kcm-core gateway link listening on {listen}",
                     listen=self.config.link_listen)
