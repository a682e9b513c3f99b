"""The kcm-core service tree. Construction only records the configuration; everything
that touches files, the database or the network happens in :meth:`startService`."""

from __future__ import annotations

import signal
import threading
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.logger import Logger

from kcm.core import events, keys
from kcm.core.config import CoreConfig
from kcm.core.event_fanout import EventFanout
from kcm.core.keyring import Keyring
from kcm.core.link_server import LinkServerFactory
from kcm.core.request_handler import CoreRequestHandler
from kcm.core.state_sweeper import StateSweeper
from kcm.core.store import repository
from kcm.core.store.engine import Store
from kcm.core.store.migrate import upgrade
from kcm.identity import SubjectMap
from kcm.kmip_protocol import KmipServerFactory
from kcm.logging import configure_logging
from kcm.tls import peer_principal, server_tls_options, tls_server_endpoint

log = Logger()

L1_CHECK_META = "l1.kcv"


class StartupError(RuntimeError):
    """kcm-core cannot start with this configuration and data."""


class CoreService(MultiService):
    """kcm-core: the store, the KMIP listener in front of it, and the gateways' link."""

    def __init__(self, config: CoreConfig, *, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.store: Store | None = None
        self.handler: CoreRequestHandler | None = None
        self.fanout: EventFanout | None = None
        self.link_factory: LinkServerFactory | None = None
        #: The subject map in force (the policy); replaced whole by :meth:`reload_policy`.
        self.subject_map: SubjectMap | None = None
        self._policy_writes = DeferredLock()  # policy events commit in reload order
        self._previous_sighup: Any = None
        self._policy_pushed: str | None = None  # the document gateways were last sent

    def startService(self) -> None:
        config = self.config
        configure_logging(level=config.log_level)
        l1 = keys.load_l1(config.l1_key_file)
        upgrade(config.database)
        store = Store(config.database, reactor=self.reactor, threads=config.database_threads)
        expected = store.run_sync(lambda s: repository.get_meta(s, L1_CHECK_META), write=False)
        if expected is None:
            raise StartupError("the database was not initialised: run `kcm core init` first")
        if expected != keys.key_check_value(l1):
            raise StartupError(f"{config.l1_key_file} is not the L1 key of this database")
        keyring = Keyring(l1)
        self.handler = CoreRequestHandler(store, keyring, clock=self.reactor.seconds,
                                          max_message_size=config.limits.max_message_size)
        subject_map = (SubjectMap.from_toml(config.policy_file)
                       if config.policy_file else None)
        self.subject_map = subject_map
        self._policy_pushed = (subject_map or SubjectMap({})).document()
        trust_domain = config.trust_domain
        factory = KmipServerFactory(
            self.handler, config.limits,
            lambda transport: peer_principal(transport, trust_domain, self.subject_map),
            self.reactor)
        tls = server_tls_options(config.tls.cert, config.tls.key, config.tls.ca)
        listener = StreamServerEndpointService(
            tls_server_endpoint(self.reactor, config.listen, tls), factory)
        listener._raiseSynchronously = True
        self.store = store
        store.setServiceParent(self)
        listener.setServiceParent(self)
        log.info("kcm-core listening on {listen}", listen=config.listen)
        if config.link_listen:
            self._add_link_listener(store, keyring, tls, subject_map)
        StateSweeper(store, self.reactor).setServiceParent(self)
        self._install_sighup()
        super().startService()

    def stopService(self) -> Deferred[None] | None:
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        return super().stopService()

    # Policy reload (SIGHUP) -------------------------------------------------------------------
    def _install_sighup(self) -> None:
        """SIGHUP reloads the policy file. The handler only schedules :meth:`reload_policy`
        on the reactor (``callFromThread`` is safe from a signal handler); signals can only
        be handled in the main thread, so elsewhere (tests) nothing is installed."""
        if threading.current_thread() is threading.main_thread():
            self._previous_sighup = signal.signal(
                signal.SIGHUP, lambda signum, frame: self.reactor.callFromThread(
                    self.reload_policy))

    def reload_policy(self) -> Deferred[None]:
        """Re-read ``policy_file``; if it changed, use it at once (new direct connections,
        callers asserted on the link, WELCOMEs) and write a ``policy`` event so every
        gateway applies it in order. A file that does not load leaves the policy as it was.
        """
        path = self.config.policy_file
        if not path:
            log.warn("policy reload: no policy_file is configured; nothing to reload")
            return succeed(None)
        try:
            subject_map = SubjectMap.from_toml(path)
        except (OSError, ValueError) as e:
            log.error("policy reload from {path} failed, the policy is unchanged: {error}",
                      path=path, error=str(e))
            return succeed(None)
        document = subject_map.document()
        if document == self._policy_pushed:
            log.info("policy reload: {path} is unchanged", path=path)
            return succeed(None)
        self.subject_map = subject_map
        self._policy_pushed = document
        if self.link_factory is not None:
            self.link_factory.set_subject_map(subject_map)
        log.info("policy reloaded from {path}: {count} subject mappings", path=path,
                 count=len(subject_map))
        store = self.store
        assert store is not None
        d = self._policy_writes.run(
            store.run, lambda session: events.policy(session, document))
        d.addCallback(lambda seq: log.info("policy event {seq} written for the gateways",
                                           seq=seq))
        d.addErrback(self._policy_event_failed, document)
        return d

    def _policy_event_failed(self, failure: Any, document: str) -> None:
        log.failure("writing the policy event failed; gateways learn the policy when they "
                    "next link, or from the next reload", failure)
        if self._policy_pushed == document:
            self._policy_pushed = None  # the next SIGHUP writes the event again

    def _add_link_listener(self, store: Store, keyring: Keyring, tls: Any,
                           subject_map: SubjectMap | None) -> None:
        """The gateways' link (same TLS as KMIP) and the outbox fan-out behind it."""
        config = self.config
        head = store.run_sync(repository.outbox_head, write=False)
        self.fanout = EventFanout(store, self.reactor, head=head)
        trust_domain = config.trust_domain
        factory = LinkServerFactory(
            handler=self.handler, store=store, keyring=keyring, fanout=self.fanout,
            resolve_peer=lambda transport: peer_principal(transport, trust_domain),
            trust_domain=trust_domain, subject_map=subject_map, clock=self.reactor)
        self.link_factory = factory
        link = StreamServerEndpointService(
            tls_server_endpoint(self.reactor, config.link_listen, tls), factory)
        link._raiseSynchronously = True
        self.fanout.setServiceParent(self)
        link.setServiceParent(self)
        log.info("kcm-core gateway link listening on {listen}", listen=config.link_listen)
