"""The kcm-gateway service tree. Construction only records the configuration; everything
that reads files or touches the network happens in :meth:`GatewayService.startService`.

Client principals come from certificates, and for subject-only certificates from the
subject map the core pushes on the link (ARCHITECTURE §6); the gateway has no policy file.

Children: the link to the core (a reconnecting client), the KMIP listener for applications
(whose connections stop reading while the link has too many calls in flight), and a timer
that refreshes service keys past their TTL in the background. Once the link is up the
configured services are pre-warmed.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService
from twisted.logger import Logger

from kcm.gateway.config import GatewayConfig
from kcm.gateway.handler import GatewayRequestHandler, new_correlation_id
from kcm.gateway.l3_cache import L3Cache, Need
from kcm.gateway.link_client import LinkClient
from kcm.gateway.local_batch import LocalRunner
from kcm.identity import Principal, Role, SubjectMap, principal_from_certificate
from kcm.kmip_protocol import KmipServerFactory
from kcm.logging import configure_logging
from kcm.tls import load_certificates, peer_principal, server_tls_options, tls_server_endpoint

__all__ = ["GatewayService"]

log = Logger()


class GatewayService(MultiService):
    """kcm-gateway: the link to the core, the L3 cache, and the KMIP listener."""

    def __init__(self, config: GatewayConfig, *, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.link: LinkClient | None = None
        self.cache: L3Cache | None = None
        self.handler: GatewayRequestHandler | None = None
        #: The core's subject map, as the core last pushed it (WELCOME, ``policy`` events);
        #: empty until the first WELCOME, so subject-only clients are refused until then.
        self.subject_map = SubjectMap({})

    def startService(self) -> None:
        config = self.config
        configure_logging(level=config.log_level)
        reactor = self.reactor
        link = LinkClient.over_tls(reactor, config.core, cert=config.tls.cert,
                                   key=config.tls.key, ca=config.tls.ca,
                                   server_name=config.core_server_name,
                                   name=_gateway_name(config.tls.cert, config.trust_domain),
                                   max_in_flight=config.max_in_flight)
        cache = L3Cache(link.fetch_service_keys, connected=lambda: link.connected,
                        clock=reactor.seconds, ttl=config.l3_ttl, max_stale=config.max_stale)
        link.on_event = cache.apply_event
        link.on_resync = cache.resync
        link.on_policy = self.apply_policy
        runner = LocalRunner(new_correlation_id=new_correlation_id)
        handler = GatewayRequestHandler(runner=runner, cache=cache, link=link,
                                        clock=reactor.seconds,
                                        max_message_size=config.limits.max_message_size)
        trust_domain = config.trust_domain
        factory = KmipServerFactory(
            handler, config.limits,
            lambda transport: peer_principal(transport, trust_domain, self.subject_map),
            reactor, upstream=link)
        tls = server_tls_options(config.tls.cert, config.tls.key, config.tls.ca)
        listener = StreamServerEndpointService(
            tls_server_endpoint(reactor, config.listen, tls), factory)
        listener._raiseSynchronously = True
        refresher = TimerService(max(config.l3_ttl / 4, 0.5), cache.refresh_due)
        refresher.clock = reactor
        self.link, self.cache, self.handler = link, cache, handler
        link.setServiceParent(self)
        listener.setServiceParent(self)
        refresher.setServiceParent(self)
        log.info("kcm-gateway listening on {listen}, core link to {core}",
                 listen=config.listen, core=config.core)
        super().startService()
        if config.prewarm:
            link.when_connected().addCallback(lambda _: self._prewarm())

    def apply_policy(self, document: str) -> None:
        """Resolve client principals with the core's policy ``document`` from now on: each
        new client connection is resolved with the map in force at its handshake."""
        try:
            subject_map = SubjectMap.from_document(document)
        except ValueError as e:
            log.error("the core sent a malformed policy; keeping the current one: {error}",
                      error=str(e))
            return
        if subject_map.document() != self.subject_map.document():
            log.info("policy from the core: {count} subject mappings, for new connections",
                     count=len(subject_map))
        self.subject_map = subject_map

    def _prewarm(self) -> None:
        """Fetch the current L3 of every configured service, asking as that service (the
        identity the core checks a fetch against; the gateway asserts it for its
        applications anyway)."""
        assert self.cache is not None
        trust_domain = self.config.trust_domain
        for tenant, service in self.config.prewarm_services():
            caller = Principal(Role.SERVICE, trust_domain, tenant=tenant, service=service,
                               uri=f"spiffe://{trust_domain}/tenant/{tenant}/service/{service}")
            self.cache.prewarm(tenant, service, caller).addCallback(
                lambda _, t=tenant, s=service: self._prewarmed(t, s))

    def _prewarmed(self, tenant: str, service: str) -> None:
        assert self.cache is not None
        need_error = self.cache.fetch_error(Need(tenant, service))
        if need_error is not None:
            log.error("pre-warming {tenant}/{service} failed: {reason}", tenant=tenant,
                      service=service, reason=need_error.message)


def _gateway_name(cert_path: str, trust_domain: str) -> str:
    """The name the gateway gives itself on the link: its certificate's gateway name."""
    principal = principal_from_certificate(load_certificates(cert_path)[0],
                                           trust_domain=trust_domain)
    if principal is None or principal.role is not Role.GATEWAY or principal.name is None:
        raise ValueError(f"{cert_path} does not name a gateway "
                         f"(spiffe://{trust_domain}/gateway/NAME)")
    return principal.name
