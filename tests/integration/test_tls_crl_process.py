"""tls.crl end to end: a kcm-core and a kcm-gateway configured with a CRL refuse a client
certificate it lists at the TLS handshake, serve the others (the gateway's link to the core
included, the core checking the gateway's certificate too), and take a new CRL written to
the file without a restart, cutting the connections already open of a certificate it
lists."""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from kcm.conformance.client import KmipClient, KmipClientError
from kcm.pki import PkiPaths, issue_crl, load_ca
from kcm.testing.processes import CoreProcess, GatewayProcess, deploy
from kcm.testing.requests import query, request
from tests.e2e_support import wait_until


def _served(port: int, pki: PkiPaths, who: str) -> bool:
    """Whether a Query of ``who`` (one of the PKI's identities) is answered at ``port``."""
    pair = getattr(pki, who)
    try:
        with KmipClient("127.0.0.1", port, cert=pair.cert, key=pair.key, ca=pki.ca.cert,
                        timeout=5) as client:
            return bool(client.send(request(query())))
    except (KmipClientError, ssl.SSLError, ConnectionError):
        return False


def _revoke(pki: PkiPaths, path: Path, *whom: str) -> None:
    """Write a CRL of the PKI's CA listing the certificates of ``whom`` to ``path``."""
    certificates = [x509.load_pem_x509_certificate(getattr(pki, who).cert.read_bytes())
                    for who in whom]
    data = issue_crl(load_ca(pki.ca), certificates).public_bytes(Encoding.PEM)
    staged = path.with_suffix(".new")
    staged.write_bytes(data)
    staged.replace(path)  # (as an operator's tooling would: never half a file)


def _planes_with_a_crl(tmp_path: Path) -> tuple[CoreProcess, GatewayProcess, Path]:
    """A kcm-core and a kcm-gateway (not started) whose ``tls.crl`` is one CRL of the PKI's
    CA listing nothing, looked at every 0.2 s; and that CRL's path."""
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    crl = tmp_path / "core" / "crl.pem"
    _revoke(core.pki, crl)
    settings = {"crl": str(crl), "crl_refresh": 0.2}
    core.tls_settings = dict(settings)
    core.write_config()
    gateway = GatewayProcess(tmp_path / "gateway", core, prewarm=(),
                             tls_settings=dict(settings))
    return core, gateway, crl


def test_a_revoked_client_certificate_is_refused_and_a_new_crl_taken_live(
        tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    crl = tmp_path / "core" / "crl.pem"
    _revoke(core.pki, crl, "app")
    settings = {"crl": str(crl), "crl_refresh": 0.2}
    core.tls_settings = dict(settings)
    core.write_config()
    checked = core.kcm("config", "check", check=False)
    assert "core.tls.crl: 1 CRL(s) of the CAs of" in checked.stdout, checked.stdout
    gateway = GatewayProcess(tmp_path / "gateway", core, prewarm=(),
                             tls_settings=dict(settings))
    core.start()
    try:
        gateway.start()
        gateway.wait_linked()  # the core took the gateway's certificate: not revoked
        for port in (core.port, gateway.port):
            assert not _served(port, core.pki, "app")
            assert _served(port, core.pki, "other_app")
        _revoke(core.pki, crl, "app", "other_app")
        for port in (core.port, gateway.port):
            wait_until(lambda port=port: not _served(port, core.pki, "other_app"),
                       "the new CRL taken", timeout=10)
            assert _served(port, core.pki, "admin")
        assert "tls.crl:" in core.log.read_text() and "read again" in core.log.read_text()
    finally:
        gateway.stop()
        core.stop()


def test_a_crl_no_ca_of_the_bundle_signed_stops_the_start(tmp_path: Path) -> None:
    import datetime as dt

    from kcm.pki import new_ca

    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    crl = tmp_path / "core" / "crl.pem"
    stranger = new_ca("Another CA", now=dt.datetime.now(dt.UTC))
    crl.write_bytes(issue_crl(stranger, []).public_bytes(Encoding.PEM))
    core.tls_settings = {"crl": str(crl)}
    core.write_config()
    try:
        core.start()
    except RuntimeError:
        pass
    else:
        core.stop()
        raise AssertionError("kcm-core started with a CRL of another CA")
    assert "which no CA of" in core.log.read_text()


def _answers(client: KmipClient) -> bool:
    """Whether ``client``'s open connection still answers a Query."""
    try:
        return bool(client.send(request(query())))
    except (KmipClientError, ssl.SSLError, OSError):
        return False


def test_open_connections_of_a_certificate_a_new_crl_lists_are_cut(tmp_path: Path) -> None:
    """The CRL read again cuts the connections already open of a certificate it lists, not
    only new handshakes: an application's KMIP connection at the core and at the gateway,
    then the gateway's link at the core (GOAWAY; its next link refused at the handshake),
    each within the refresh interval and a margin, with one line naming the identity and
    the serial; the other connections keep being answered."""
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    crl = tmp_path / "core" / "crl.pem"
    _revoke(core.pki, crl)
    refresh = 0.2
    settings = {"crl": str(crl), "crl_refresh": refresh}
    core.tls_settings = dict(settings)
    core.write_config()
    gateway = GatewayProcess(tmp_path / "gateway", core, prewarm=(),
                             tls_settings=dict(settings))
    pki = core.pki
    app, other = pki.app, pki.other_app
    core.start()
    clients: list[KmipClient] = []
    try:
        gateway.start()
        gateway.wait_linked()

        def opened(port: int, pair) -> KmipClient:
            client = KmipClient("127.0.0.1", port, cert=pair.cert, key=pair.key,
                                ca=pki.ca.cert, timeout=5)
            client.__enter__()
            clients.append(client)
            assert _answers(client)
            return client

        at_core, at_gateway = opened(core.port, app), opened(gateway.port, app)
        others = [opened(core.port, other), opened(gateway.port, other)]
        _revoke(pki, crl, "app")
        for client in (at_core, at_gateway):
            took = wait_until(lambda client=client: not _answers(client),
                              "the open connection cut", timeout=refresh + 5)
            assert took < refresh + 5
        assert all(_answers(client) for client in others)
        serial = f"{x509.load_pem_x509_certificate(app.cert.read_bytes()).serial_number:x}"
        for log in (core.log, gateway.log):
            lines = [line for line in log.read_text().splitlines()
                     if "tls.crl: closed the KMIP connection of" in line]
            assert len(lines) == 1, lines
            assert "spiffe://" in lines[0] and f"(serial {serial}) is revoked" in lines[0]
        assert "closed the gateway link" not in core.log.read_text()

        links = gateway.links()
        _revoke(pki, crl, "app", "gateway")
        wait_until(lambda: "tls.crl: closed the gateway link connection of spiffe://"
                   in core.log.read_text(), "the gateway's link cut", timeout=refresh + 5)
        wait_until(lambda: "certificate revoked" in gateway.log.read_text(),
                   "the gateway told why", timeout=5)
        # Its next link is refused at the handshake (the core logs the failed handshake).
        wait_until(lambda: "TLS handshake(s) failed" in core.log.read_text(),
                   "the gateway's next link refused", timeout=10)
        assert gateway.links() == links
        assert _answers(others[0])  # the other application's connection at the core
    finally:
        for client in clients:
            client.close()
        gateway.stop()
        core.stop()


def test_a_new_ca_without_its_crl_is_warned_about_and_served_once_its_crl_is_added(
        tmp_path: Path) -> None:
    """The first step of "A new CA" with tls.crl: the new CA put in tls.ca beside the old
    one, its CRL not yet in tls.crl. kcm-core and kcm-gateway each warn once, naming it,
    and refuse its clients ("unable to get certificate CRL"); once its CRL is added, they
    serve them, the old CA's clients all along."""
    import datetime as dt

    from kcm.pki import CertKeyPaths, certificate_pem, issue_certificate, new_ca, write_certificate

    core, gateway, crl = _planes_with_a_crl(tmp_path)
    pki = core.pki
    old = load_ca(pki.ca)
    new = new_ca("KCM New CA", now=dt.datetime.now(dt.UTC))
    issued = issue_certificate(new, "app", now=dt.datetime.now(dt.UTC),
                               uris=["spiffe://kcm.test/tenant/demo/service/app"])
    newcomer = CertKeyPaths(tmp_path / "new-app.pem", tmp_path / "new-app.key")
    write_certificate(newcomer, issued.cert, issued.key)

    def served(port: int) -> bool:
        try:
            with KmipClient("127.0.0.1", port, cert=newcomer.cert, key=newcomer.key,
                            ca=pki.ca.cert, timeout=5) as client:
                return bool(client.send(request(query())))
        except (KmipClientError, ssl.SSLError, ConnectionError):
            return False

    def warned(log: Path) -> int:
        return log.read_text().count("holds no CRL of CN=KCM New CA")

    core.start()
    try:
        gateway.start()
        gateway.wait_linked()
        staged = pki.ca.cert.with_suffix(".new")
        staged.write_bytes(pki.ca.cert.read_bytes() + certificate_pem(new.cert))
        staged.replace(pki.ca.cert)
        for process in (core, gateway):
            wait_until(lambda process=process: warned(process.log) == 1,
                       "the warning about the new CA without a CRL")
        for port in (core.port, gateway.port):
            assert not served(port)
            assert _served(port, pki, "app")
        wait_until(lambda: any("TLS handshake(s) failed" in line
                               and "unable to get certificate CRL" in line
                               for line in core.log.read_text().splitlines()),
                   "the refused handshake logged with its reason")
        staged = crl.with_suffix(".new")
        staged.write_bytes(issue_crl(old, []).public_bytes(Encoding.PEM)
                           + issue_crl(new, []).public_bytes(Encoding.PEM))
        staged.replace(crl)
        wait_until(lambda: served(core.port) and served(gateway.port),
                   "the new CA's clients served")
        assert _served(core.port, pki, "app") and _served(gateway.port, pki, "app")
        assert warned(core.log) == 1 and warned(gateway.log) == 1
    finally:
        gateway.stop()
        core.stop()


def test_removing_the_old_ca_refuses_its_next_handshakes_not_its_open_connections(
        tmp_path: Path) -> None:
    """The last step of "A new CA" (docs/operations.md), as documented: once the old CA
    and its CRL are out of kcm-core's tls.ca and tls.crl, a new connection with a
    certificate of the old CA is refused, one made before keeps being answered (no CRL can
    cut it any more), and a restart of the core cuts it."""
    import datetime as dt

    from kcm.pki import certificate_pem, issue_certificate, new_ca, write_certificate

    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    pki = core.pki
    crl = tmp_path / "core" / "crl.pem"
    _revoke(pki, crl)
    core.tls_settings = {"crl": str(crl), "crl_refresh": 0.2}
    core.write_config()
    old, new = load_ca(pki.ca), new_ca("KCM New CA", now=dt.datetime.now(dt.UTC))
    both = tmp_path / "both.pem"  # the clients' trust store, both CAs from the start
    both.write_bytes(pki.ca.cert.read_bytes() + certificate_pem(new.cert))

    def replace(path: Path, data: bytes) -> None:
        staged = path.with_suffix(".new")
        staged.write_bytes(data)
        staged.replace(path)

    def answers(client: KmipClient) -> bool:
        try:
            return bool(client.send(request(query())))
        except (KmipClientError, ssl.SSLError, ConnectionError):
            return False

    def new_connection_served() -> bool:
        with KmipClient("127.0.0.1", core.port, cert=pki.app.cert, key=pki.app.key,
                        ca=both, timeout=5) as client:
            return answers(client)

    core.start()
    try:
        held = KmipClient("127.0.0.1", core.port, cert=pki.app.cert, key=pki.app.key,
                          ca=both, timeout=5)
        assert answers(held)
        replace(pki.ca.cert, both.read_bytes())
        replace(crl, issue_crl(old, []).public_bytes(Encoding.PEM)
                + issue_crl(new, []).public_bytes(Encoding.PEM))
        renewed = issue_certificate(new, "kcm-core", now=dt.datetime.now(dt.UTC),
                                    dns_names=["localhost"], ip_addresses=["127.0.0.1"],
                                    server=True, client=False)
        write_certificate(pki.core, renewed.cert, renewed.key)
        wait_until(lambda: "certificate serial "
                   f"{renewed.cert.serial_number:x}" in core.log.read_text(),
                   "the core's certificate of the new CA taken")
        replace(crl, issue_crl(new, []).public_bytes(Encoding.PEM))
        replace(pki.ca.cert, certificate_pem(new.cert))
        wait_until(lambda: not new_connection_served(), "the old CA's handshakes refused")
        assert answers(held) and answers(held)  # made before: answered still
        core.stop()
        core.start()
        assert not answers(held)
        held.close()
    finally:
        core.stop()


def test_a_gateway_s_renewed_certificate_moves_its_link_and_revoking_the_old_one_cuts_none(
        tmp_path: Path) -> None:
    """A gateway's link identity rotated under load: its renewed certificate is taken and
    the link made again at once with it, make-before-break (a second link first, which takes
    the new calls once welcomed; calls in flight answered on the old link), so the old
    certificate, then revoked in tls.crl, cuts no
    link at the core; a client forwarding requests through the gateway all the while
    sees none fail. (Before, the link kept the old certificate until its next reconnection:
    the revocation cut it, with the forwarded requests in flight.)"""
    import datetime as dt
    import threading
    import time

    from kcm.pki import issue_certificate, write_certificate
    from kcm.testing.requests import create_managed, get, response

    core, gateway, crl = _planes_with_a_crl(tmp_path)
    pki = core.pki
    done = threading.Event()
    served: list[str] = []
    failed: list[str] = []

    def forwarding() -> None:  # managed objects: every request goes over the link
        with gateway.client("app") as client:
            while not done.is_set():
                try:
                    [made] = response(client.send(request(create_managed()))).batch_items
                    uid = made.response_payload.unique_identifier
                    [got] = response(client.send(request(get(uid)))).batch_items
                    assert got.response_payload.unique_identifier == uid
                    served.append(uid)
                except Exception as e:  # noqa: BLE001 - what a client would see
                    failed.append(repr(e))
                    return

    core.start()
    try:
        gateway.start()
        gateway.wait_linked()
        load = threading.Thread(target=forwarding)
        load.start()
        try:
            wait_until(lambda: len(served) >= 5, "the client served before")
            old = x509.load_pem_x509_certificate(pki.gateway.cert.read_bytes())
            renewed = issue_certificate(
                load_ca(pki.ca), "kcm-gateway gw1", now=dt.datetime.now(dt.UTC),
                uris=["spiffe://kcm.test/gateway/gw1"], dns_names=["localhost"],
                ip_addresses=["127.0.0.1"], server=True, client=True)
            write_certificate(pki.gateway, renewed.cert, renewed.key)
            wait_until(lambda: gateway.links() == 2, "the link made again")
            wait_until(lambda: "the link with the renewed certificate is up"
                       in gateway.log.read_text(), "the new link taking over")
            data = issue_crl(load_ca(pki.ca), [old]).public_bytes(Encoding.PEM)
            staged = crl.with_suffix(".new")
            staged.write_bytes(data)
            staged.replace(crl)
            wait_until(lambda: "1 revoked certificate(s) listed" in core.log.read_text(),
                       "the CRL taken by the core")
            count = len(served)
            wait_until(lambda: len(served) >= count + 5, "the client served after")
            time.sleep(0.5)
        finally:
            done.set()
            load.join(timeout=30)
        assert failed == [], failed
        assert "closed the gateway link connection" not in core.log.read_text()
        assert gateway.links() == 2
    finally:
        gateway.stop()
        core.stop()


def test_a_client_revoked_in_the_core_s_crl_only_is_cut_and_refused_at_the_gateway(
        tmp_path: Path) -> None:
    """The core pushes its CRLs to its gateways (link version 10, docs/operations.md,
    "Revocation"): a client certificate revoked in the core's tls.crl alone is refused at
    the handshake of a gateway that has no tls.crl of its own, in each of its two workers,
    and its connections open there are cut within tls.crl_refresh and a margin: the L4
    Encrypts the gateway answers and the requests it forwards both stop. The other
    clients are served on."""
    from kcm.testing.requests import create_l4, create_managed, encrypt, response

    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    pki = core.pki
    core_crl = tmp_path / "core" / "crl.pem"
    _revoke(pki, core_crl)
    refresh = 0.2
    core.tls_settings = {"crl": str(core_crl), "crl_refresh": refresh}
    core.write_config()
    gateway = GatewayProcess(tmp_path / "gateway", core, workers=2)

    def answered(client: KmipClient, item) -> str | None:
        try:
            [made] = response(client.send(request(item))).batch_items
        except (KmipClientError, ssl.SSLError, OSError):
            return None
        payload = made.response_payload
        return getattr(payload, "unique_identifier", None) or (
            "done" if payload is not None else None)

    def l4_encrypts(client: KmipClient) -> bool:
        uid = answered(client, create_l4())
        return uid is not None and answered(client, encrypt(uid)) is not None

    def forwards(client: KmipClient) -> bool:
        return answered(client, create_managed()) is not None

    core.start()
    held: list[KmipClient] = []
    try:
        gateway.start()
        gateway.wait_linked()
        wait_until(lambda: gateway.log.read_text().count("the core's CRLs taken") >= 2,
                   "each worker took the core's CRLs", timeout=10)
        for _ in range(4):  # (on both workers: each new connection to the least busy)
            client = gateway.client("app")
            client.__enter__()
            held.append(client)
            assert l4_encrypts(client) and forwards(client)
        other = gateway.client("other_app")
        other.__enter__()
        held.append(other)
        assert l4_encrypts(other)
        _revoke(pki, core_crl, "app")
        for client in held[:4]:
            took = wait_until(lambda client=client: not l4_encrypts(client),
                              "the open connection cut", timeout=refresh + 5)
            assert took < refresh + 5
            assert not forwards(client)
        for _ in range(4):
            assert not _served(gateway.port, pki, "app")
        assert _served(gateway.port, pki, "other_app") and l4_encrypts(other)
        log = gateway.log.read_text()
        # At least the 4 held: a client cut by one worker reconnects at its next request
        # (KmipClient does), and may reach the other worker before that one took the CRL
        # (each takes it from its own link, some ms apart), which cuts it too.
        cut = [line for line in log.splitlines()
               if "tls.crl: closed the KMIP connection of" in line]
        assert len(cut) >= 4 and all("service/app from" in line for line in cut), log
        assert "revoked certificate(s) listed" in log
    finally:
        for client in held:
            client.close()
        gateway.stop()
        core.stop()


def test_a_ca_added_to_a_gateway_s_tls_ca_puts_the_core_s_crl_of_it_in_force(
        tmp_path: Path) -> None:
    """The core pushed a CRL of a CA the gateway did not trust yet (left out). Once the
    operator adds that CA to the gateway's tls.ca, the gateway checks the core's CRLs
    again against it: the CA's client the core revoked is refused from the first
    handshake the new bundle allows (the core sends its CRLs again only when they
    change: before, that client was served, the gateway holding no CRL of its CA), and
    the CA's other clients are served."""
    import datetime as dt

    from kcm.pki import CertKeyPaths, certificate_pem, issue_certificate, new_ca, write_certificate

    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    pki = core.pki
    now = dt.datetime.now(dt.UTC)
    second = new_ca("KCM Second CA", now=now)
    clients = {}
    for name in ("revoked", "kept"):
        issued = issue_certificate(second, name, now=now,
                                   uris=["spiffe://kcm.test/tenant/demo/service/app"])
        clients[name] = CertKeyPaths(tmp_path / f"{name}.pem", tmp_path / f"{name}.key")
        write_certificate(clients[name], issued.cert, issued.key)
        if name == "revoked":
            revoked = issued.cert
    core_ca = tmp_path / "core" / "ca-bundle.pem"
    core_ca.write_bytes(pki.ca.cert.read_bytes() + certificate_pem(second.cert))
    core_crl = tmp_path / "core" / "crl.pem"
    core_crl.write_bytes(issue_crl(load_ca(pki.ca), []).public_bytes(Encoding.PEM)
                         + issue_crl(second, [revoked]).public_bytes(Encoding.PEM))
    core.tls_settings = {"crl": str(core_crl)}
    core.write_config()
    core.config.write_text(core.config.read_text().replace(
        f'ca = "{pki.ca.cert}"', f'ca = "{core_ca}"'))
    gateway_ca = tmp_path / "gateway-ca.pem"
    gateway_ca.write_bytes(pki.ca.cert.read_bytes())
    gateway = GatewayProcess(tmp_path / "gateway", core, prewarm=(),
                             tls_settings={"crl_refresh": 0.2})
    gateway.write_config()
    gateway.config.write_text(gateway.config.read_text().replace(
        f'ca = "{pki.ca.cert}"', f'ca = "{gateway_ca}"'))

    def served(who: str) -> bool:
        pair = clients[who]
        try:
            with KmipClient("127.0.0.1", gateway.port, cert=pair.cert, key=pair.key,
                            ca=pki.ca.cert, timeout=5) as client:
                return bool(client.send(request(query())))
        except (KmipClientError, ssl.SSLError, ConnectionError):
            return False

    core.start()
    try:
        gateway.start()
        gateway.wait_linked()
        wait_until(lambda: "a CRL the core pushed is left out" in gateway.log.read_text(),
                   "the second CA's CRL left out", timeout=10)
        assert not served("kept") and not served("revoked")  # (a CA it does not trust)
        staged = gateway_ca.with_suffix(".new")
        staged.write_bytes(pki.ca.cert.read_bytes() + certificate_pem(second.cert))
        staged.replace(gateway_ca)
        wait_until(lambda: served("kept"), "the second CA's client served", timeout=10)
        assert not served("revoked")
        assert _served(gateway.port, pki, "app")
    finally:
        gateway.stop()
        core.stop()
