"""The services of kcm-gateway's tree. :func:`kcm.gateway.tap.makeService` assembles them;
none reads a file or touches the network before it starts.

Client principals come from certificates, and for subject-only certificates from the
subject map the core pushes on the link (ARCHITECTURE §6); the gateway has no policy file.

In start order (:class:`GatewayService` starts its children in the order they were added,
all or none): :class:`GatewayIdentity` (reads the gateway's certificate: its name on the
link, the link's TLS), the link to the core (a reconnecting client), the KMIP listener for
applications (whose connections stop reading while the link has too many calls in flight;
:class:`kcm.tls.TLSListener`), and a timer that refreshes service keys past their TTL in the
background. Once the link is up the configured services are pre-warmed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger

from kcm.drain import DRAIN_GRACE, drain
from kcm.gateway.config import GatewayConfig
from kcm.gateway.core_endpoints import CoreFailoverEndpoint
from kcm.gateway.handler import GatewayRequestHandler
from kcm.gateway.l3_cache import L3Cache
from kcm.gateway.link_client import LinkClient
from kcm.gateway.metrics import GatewayMetrics
from kcm.gateway.placement import pin
from kcm.identity import Principal, Role, SubjectMap, principal_from_certificate
from kcm.kmip.errors import KmipError
from kcm.kmip_protocol import KmipServerFactory
from kcm.process import ProcessService
from kcm.reactor_threads import RunInThread, in_reactor_threads
from kcm.tls import TLSClientEndpoint, load_certificates

__all__ = ["GatewayIdentity", "GatewayService", "gateway_name_of", "renamed_gateway"]

log = Logger()


class GatewayIdentity(Service):
    """Reads the gateway's certificate when it starts: the gateway name ``link`` announces in
    HELLO (the certificate must name a gateway of ``trust_domain``), and the TLS options
    ``endpoint`` (the link's) connects with. Starts before the link."""

    name = "kcm-gateway-identity"

    def __init__(self, cert_path: str, trust_domain: str, link: LinkClient,
                 endpoint: TLSClientEndpoint | CoreFailoverEndpoint,
                 renewal_endpoint: TLSClientEndpoint | CoreFailoverEndpoint | None = None
                 ) -> None:
        """``renewal_endpoint``: the link's endpoint presenting a renewed certificate
        (:mod:`kcm.gateway.link_certificates`), loaded as ``endpoint`` is."""
        self.cert_path = cert_path
        self.trust_domain = trust_domain
        self.link = link
        self.endpoint = endpoint
        self.renewal_endpoint = renewal_endpoint

    def startService(self) -> None:
        self.link.gateway_name = gateway_name_of(self.cert_path, self.trust_domain)
        self.endpoint.load()
        if self.renewal_endpoint is not None:
            self.renewal_endpoint.load()
        super().startService()


#: Services pre-warmed at once (:meth:`GatewayService._prewarm`): a few of any tenant's
#: :data:`~kcm.gateway.l3_cache.MAX_FETCHES_PER_TENANT` (8), the rest left to requests.
PREWARM_AT_ONCE = 4


class GatewayService(ProcessService):
    """kcm-gateway: the link to the core, the L3 cache, and the KMIP listener.

    The root of the tree :func:`kcm.gateway.tap.makeService` assembles (which also sets
    :attr:`link`, :attr:`cache`, :attr:`handler` and :attr:`kmip_factory`); it holds the
    policy the core pushed and pre-warms the configured services once the link is up.

    Stopping (SIGTERM) drains first (:func:`kcm.drain.drain`): the KMIP listener stops,
    each connection is closed once it has been idle 0.5 s or once an answer leaves
    nothing it sent unanswered (what it sent is answered first, over the link that is still
    up), and the rest stops when none is left, or after ``drain_timeout`` seconds (5 by
    default; what is still open then is cut).
    """

    def __init__(self, config: GatewayConfig, *, reactor: Any,
                 log_fields: Mapping[str, Any] | None = None, cpu: int | None = None,
                 run_in_thread: RunInThread | None = None) -> None:
        """``cpu``: the CPU a supervisor's worker runs on only (pinned as it starts,
        :mod:`kcm.gateway.placement`); None: wherever the kernel places it.
        ``run_in_thread`` (default: the reactor's thread pool) parses a new policy."""
        super().__init__("kcm-gateway", log_format=config.log_format,
                         log_level=config.log_level, log_path=config.log_file,
                         log_fields=log_fields, reactor=reactor,
                         busy_poll=config.busy_poll_us / 1e6)
        self.config = config
        self.reactor = reactor
        self.cpu = cpu
        self.link: LinkClient | None = None
        self.cache: L3Cache | None = None
        self.handler: GatewayRequestHandler | None = None
        self.metrics: GatewayMetrics | None = None
        self.kmip_factory: KmipServerFactory | None = None
        #: The core's subject map, as the core last pushed it (WELCOME, ``policy`` events);
        #: empty until the first WELCOME, so subject-only clients are refused until then.
        self.subject_map = SubjectMap({})
        self._run = run_in_thread or in_reactor_threads(reactor)
        #: The newest policy document the core sent, and whether one is being parsed.
        self._policy_newest = self.subject_map.document()
        self._policy_parsing = False

    def startService(self) -> None:
        if self.cpu is not None:
            try:
                pin(self.cpu)
            except OSError as e:
                log.warn("kcm-gateway could not run on CPU {cpu} only ({error}); the kernel "
                         "places it (pin_workers)", cpu=self.cpu, error=e.strerror or str(e))
            else:
                log.info("kcm-gateway runs on CPU {cpu} only (pin_workers)", cpu=self.cpu)
        super().startService()
        config = self.config
        log.info("kcm-gateway listening on {listen}, core link to {core}",
                 listen=config.listen, core=", ".join(config.core))
        if config.prewarm and self.link is not None:
            self.link.when_connected().addCallback(lambda _: self._prewarm())

    def stopService(self) -> Deferred[None]:
        factory = self.kmip_factory
        if factory is None or not self.running:
            return maybeDeferred(super().stopService)
        self.stopping = True
        draining = drain(self.reactor, "kcm-gateway",
                         [self.namedServices.get("kcm-kmip-listener")],
                         [lambda: factory.drain(DRAIN_GRACE)],
                         timeout=self.config.drain_timeout)
        return draining.addCallback(self._stopped_serving)

    def _stopped_serving(self, _: object) -> Deferred[None]:
        if self.handler is not None:
            self.handler.flush_denied()  # (the counts of refused uses not logged yet)
        return maybeDeferred(super().stopService)

    def apply_policy(self, document: str) -> None:
        """Resolve client principals with the core's policy ``document`` from now on: each
        new client connection is resolved with the map in force at its handshake.

        The same document as the one in force (each relink's WELCOME) is not parsed again;
        another is parsed in a thread (thousands of subjects take a third of a second) and
        put in force on the reactor once parsed, unless a newer one came meanwhile: only the
        newest is put in force, never one sent before it."""
        self._policy_newest = document
        if not self._policy_parsing:
            self._parse_newest_policy()

    def _parse_newest_policy(self) -> None:
        document = self._policy_newest
        if document == self.subject_map.document():
            return
        self._policy_parsing = True
        parsing = self._run(_parse_policy, document)
        parsing.addCallbacks(self._policy_parsed, self._policy_refused,
                             callbackArgs=(document,), errbackArgs=(document,))

        def done(_: object) -> None:
            self._policy_parsing = False
            if self._policy_newest != document:
                self._parse_newest_policy()

        parsing.addBoth(done)

    def _policy_parsed(self, subject_map: SubjectMap, document: str) -> None:
        if document != self._policy_newest:
            return  # a newer one came while this was parsed: it is parsed next
        log.info("policy from the core: {count} subject mappings, for new connections",
                 count=len(subject_map))
        self.subject_map = subject_map

    def _policy_refused(self, failure: Any, document: str) -> None:
        if failure.check(ValueError):
            log.error("the core sent a malformed policy; keeping the current one: {error}",
                      error=str(failure.value))
        else:
            log.failure("applying the core's policy failed; keeping the current one",
                        failure)

    def _prewarm(self) -> None:
        """Fetch the current L3 of every configured service, asking as that service (the
        identity the core checks a fetch against; the gateway asserts it for its
        applications anyway): :data:`PREWARM_AT_ONCE` at a time, the next as one is done,
        so that a long list neither fills its tenants' fetch queues nor the link (3,000
        services sent at once failed most of them, and the requests of the tenants
        concerned, "too many service key fetches wait")."""
        assert self.cache is not None
        listed = deque(self.config.prewarm_services())
        for _ in range(PREWARM_AT_ONCE):
            self._prewarm_next(listed)

    def _prewarm_next(self, listed: deque[tuple[str, str]]) -> None:
        """The next listed service, in a later reactor turn than the one before it ended
        (a fetch failed at once, the link lost, would otherwise start the next inside its
        callbacks: one level of recursion per service). Once the link is down the rest
        is left to the requests that need them."""
        if not listed or not self.running or self.cache is None:
            return
        link = self.link
        if link is not None and not link.connected:
            log.warn("pre-warming stopped with {count} services left: no link to the core "
                     "(their keys are fetched when first used)", count=len(listed))
            listed.clear()
            return
        tenant, service = listed.popleft()
        trust_domain = self.config.trust_domain
        caller = Principal(Role.SERVICE, trust_domain, tenant=tenant, service=service,
                           uri=f"spiffe://{trust_domain}/tenant/{tenant}/service/{service}")
        self.cache.prewarm(tenant, service, caller).addCallback(
            self._prewarmed, tenant, service).addBoth(
            lambda _: self.reactor.callLater(0, self._prewarm_next, listed))

    def _prewarmed(self, error: KmipError | None, tenant: str, service: str) -> None:
        if error is not None:
            log.error("pre-warming {tenant}/{service} failed: {reason}", tenant=tenant,
                      service=service, reason=error.message)


def _parse_policy(document: str) -> SubjectMap:
    """The map of a policy document, its own document made too (in a thread)."""
    subject_map = SubjectMap.from_document(document)
    subject_map.document()
    return subject_map


def gateway_name_of(cert_path: str, trust_domain: str) -> str:
    """The name the gateway gives itself on the link: its certificate's gateway name."""
    name = _gateway_name(load_certificates(cert_path)[0], trust_domain)
    if name is None:
        raise ValueError(f"{cert_path} does not name a gateway "
                         f"(spiffe://{trust_domain}/gateway/NAME)")
    return name


def renamed_gateway(certificate: x509.Certificate, trust_domain: str,
                    name: str | None) -> str | None:
    """Why a renewed ``certificate`` may not be taken by the gateway named ``name`` while
    it runs (:mod:`kcm.tls_renewal`), or None: it must name the same gateway (the name the
    link announced, and the identity the core knows it by)."""
    renewed = _gateway_name(certificate, trust_domain)
    if renewed == name:
        return None
    named = f"gateway {renewed}" if renewed is not None else "no gateway"
    return f"it names {named}, not gateway {name} (a new name takes a restart)"


def _gateway_name(certificate: x509.Certificate, trust_domain: str) -> str | None:
    principal = principal_from_certificate(certificate, trust_domain=trust_domain)
    if principal is None or principal.role is not Role.GATEWAY:
        return None
    return principal.name
