"""A policy reload holds no reactor up: kcm-core reads and checks its policy file, and works
out the audit records of the change, in a thread (:class:`kcm.core.service.PolicyFile`); a
gateway parses a new policy document in a thread, not the one in force again, and puts in
force only the newest it was sent (:meth:`kcm.gateway.service.GatewayService.apply_policy`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from kcm.core import audit, events
from kcm.core.service import SET_ACCESS_POLICY_OPERATION, PolicyFile
from kcm.gateway.config import GatewayConfig
from kcm.gateway.service import GatewayService
from kcm.identity import SubjectMap
from tests.thread_fakes import HeldThreads

TD = "kcm.test"
LEGACY = x509.Name.from_rfc4514_string("CN=legacy-client,O=KCM Dev")


def _document(service: str) -> str:
    return SubjectMap.from_mapping({"CN=legacy-client,O=KCM Dev":
                                    f"tenant/demo/service/{service}"}).document()


def _service(gateway: GatewayService) -> str | None:
    principal = gateway.subject_map.lookup(LEGACY, trust_domain=TD)
    return principal.service if principal is not None else None


def test_the_gateway_parses_a_new_policy_in_a_thread_and_the_one_in_force_not_again() -> None:
    threads = HeldThreads()
    gateway = GatewayService(GatewayConfig(), reactor=Clock(), run_in_thread=threads)
    gateway.apply_policy(_document("app"))
    assert len(threads.calls) == 1 and _service(gateway) is None  # parsed in the thread
    threads.finish()
    assert _service(gateway) == "app"
    gateway.apply_policy(_document("app"))  # a relink's WELCOME: the same document
    assert threads.calls == [] and _service(gateway) == "app"
    gateway.apply_policy("not json")
    threads.finish()
    assert _service(gateway) == "app"  # a malformed one keeps the map in force


def test_the_gateway_puts_only_the_newest_policy_in_force() -> None:
    """A document sent while another is parsed waits for it, and the one parsed before it
    is not put in force (it would undo the newer one once that is in force)."""
    threads = HeldThreads()
    gateway = GatewayService(GatewayConfig(), reactor=Clock(), run_in_thread=threads)
    gateway.apply_policy(_document("one"))
    gateway.apply_policy(_document("two"))
    gateway.apply_policy(_document("three"))
    assert len(threads.calls) == 1  # one parse at a time
    threads.finish()
    assert _service(gateway) is None  # "one" was overtaken: not put in force
    assert len(threads.calls) == 1 and threads.calls[0][1] == (_document("three"),)
    threads.finish()
    assert _service(gateway) == "three"
    # Back to the map in force while another is parsed: that one is dropped.
    gateway.apply_policy(_document("four"))
    gateway.apply_policy(_document("three"))
    threads.finish()
    assert _service(gateway) == "three" and threads.calls == []


class FakeStore:
    """Runs each transaction at once with no session (the writes are faked)."""

    def __init__(self) -> None:
        self.transactions = 0

    def run(self, fn: Any) -> Deferred[Any]:
        self.transactions += 1
        return succeed(fn(None))


def test_the_core_reads_its_policy_file_and_its_audit_records_in_a_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[Any] = []
    monkeypatch.setattr(audit, "append_audit", lambda session, record: written.append(record))
    monkeypatch.setattr(events, "policy", lambda session, document: written.append(document)
                        or 7)
    path = tmp_path / "policy.toml"
    path.write_text('[subjects]\n"CN=legacy-client,O=KCM Dev" = "tenant/demo/service/app"\n')
    threads, store = HeldThreads(), FakeStore()
    policy = PolicyFile(str(path), store, Clock(), run_in_thread=threads)  # type: ignore[arg-type]
    seen: list[SubjectMap | None] = []
    policy.on_change.append(seen.append)
    policy.startService()  # before the reactor runs: read at once
    try:
        assert len(seen) == 1 and threads.calls == []
        path.write_text('[subjects]\n"CN=legacy-client,O=KCM Dev" = "tenant/demo/service/db"\n')
        reloaded: list[object] = []
        policy.reload().addCallback(reloaded.append)
        policy.reload()  # a second SIGHUP: read after the first
        assert len(threads.calls) == 1 and len(seen) == 1  # the file is read in the thread
        threads.finish()
        assert len(seen) == 2 and policy.subject_map is seen[1]  # used on the reactor
        principal = seen[1].lookup(LEGACY, trust_domain=TD) if seen[1] else None
        assert principal is not None and principal.service == "db"
        # Its audit records are worked out in the thread too, then written with the event.
        assert store.transactions == 0
        assert threads.calls[0][0].__name__ == "access_policy_records"
        assert reloaded == []  # fires once the event is written
        threads.finish()
        assert store.transactions == 1 and reloaded == [None]
        [record, document] = written
        assert record.operation == SET_ACCESS_POLICY_OPERATION and record.tenant == "demo"
        assert document == seen[1].document()
        threads.finish()  # the second reload: unchanged, nothing written
        assert len(seen) == 2 and store.transactions == 1 and threads.calls == []
        path.write_text("[subjects")
        policy.reload()
        threads.finish()  # a file that does not load leaves the policy as it was
        assert policy.subject_map is seen[1]
    finally:
        policy.stopService()


def test_a_sighup_reloads_the_policy_file_then_makes_the_tls_look(tmp_path: Path) -> None:
    """kcm-core's SIGHUP: the policy reload as before, then each of ``on_sighup`` (the TLS
    files' look, wired by kcm.core.tap), whether or not a policy file is configured."""
    path = tmp_path / "policy.toml"
    path.write_text("[subjects]\n")
    threads = HeldThreads()
    for configured in (str(path), None):
        policy = PolicyFile(configured, FakeStore(), Clock(),  # type: ignore[arg-type]
                            run_in_thread=threads)
        looks: list[int] = []
        policy.on_sighup.append(lambda looks=looks: looks.append(len(threads.calls)))
        policy.startService()
        try:
            policy.sighup()
            # (the file's read begun first, in the thread; without one, nothing to read)
            assert looks == [1 if configured else 0]
            if configured:
                threads.finish()
        finally:
            policy.stopService()
