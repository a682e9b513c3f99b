"""kcm-core as a real `twistd` process: real certificates, real SQLite / PostgreSQL,
PyKMIP and our own client over mutual TLS."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import ssl
import struct
import threading
import time
from pathlib import Path

import pytest
from kmip.core import enums
from kmip.pie import exceptions as pie_exceptions

from tests.e2e_support import CoreProcess, deploy, wait_until


def _create_get_destroy(core: CoreProcess) -> None:
    client = core.pykmip()
    try:
        uid = client.create(enums.CryptographicAlgorithm.AES, 256)
        client.activate(uid)
        client.revoke(enums.RevocationReasonCode.KEY_COMPROMISE, uid)
        client.destroy(uid)
    finally:
        client.close()


def test_pykmip_lifecycle_on_sqlite(core_process: CoreProcess) -> None:
    _create_get_destroy(core_process)
    result = core_process.kcm("audit", "verify")
    assert "audit log intact" in result.stdout
    # It holds the L1 key: no core file, whatever ulimit -c allows (kcm.no_core_dumps).
    assert core_process.process is not None
    limits = Path(f"/proc/{core_process.process.pid}/limits").read_text()
    assert [line.split()[4:6] for line in limits.splitlines()
            if line.startswith("Max core file size")] == [["0", "0"]]


def test_pykmip_lifecycle_on_postgresql(core_process_pg: CoreProcess) -> None:
    _create_get_destroy(core_process_pg)
    assert core_process_pg.kcm("audit", "verify").returncode == 0


@pytest.mark.long  # ten seconds or more: the parallel part of `make test` starts it first
def test_a_database_another_process_keeps_locked_fails_requests_in_seconds(
        core_process: CoreProcess) -> None:
    """Another process holding the SQLite file's write lock (a stuck maintenance script)
    makes writes and reads fail within seconds, each answered General Failure naming the
    key store, not hang for the lock; once it lets go, the core serves again by itself."""
    import time

    client = core_process.pykmip()
    try:
        uid = client.create(enums.CryptographicAlgorithm.AES, 256)
        blocker = sqlite3.connect(core_process.root / "kcm.db", timeout=30)
        blocker.isolation_level = None
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            for attempt in (lambda: client.create(enums.CryptographicAlgorithm.AES, 256),
                            lambda: client.get_attributes(uid)):
                started = time.monotonic()
                with pytest.raises(pie_exceptions.KmipOperationFailure) as refused:
                    attempt()
                took = time.monotonic() - started
                assert refused.value.status == enums.ResultStatus.OPERATION_FAILED
                assert refused.value.reason == enums.ResultReason.GENERAL_FAILURE
                assert "the key store is unavailable" in str(refused.value)
                # The store's lock wait is 5 s: a request waits for its own group's, and
                # for those queued before it on the writer (a state sweep's, which may be
                # two: its lease, then its steps); under the parallel part's load one
                # took 15.05 s. The blocker holds the lock for the whole loop: a request
                # that waited for it would not end before the ROLLBACK below.
                assert took < 17.5, took
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert client.get_attributes(uid)[0] == uid
        client.create(enums.CryptographicAlgorithm.AES, 256)
    finally:
        client.close()
    lines = core_process.log.read_text().splitlines()
    assert any("the key store is unavailable (database is locked); not audited" in line
               for line in lines)


def test_other_tenant_cannot_touch_an_object(core_process: CoreProcess) -> None:
    owner, stranger = core_process.pykmip("app"), core_process.pykmip("other_app")
    try:
        uid = owner.create(enums.CryptographicAlgorithm.AES, 128)
        with pytest.raises(pie_exceptions.KmipOperationFailure) as caught:
            stranger.activate(uid)
        assert caught.value.reason == enums.ResultReason.ITEM_NOT_FOUND
    finally:
        owner.close()
        stranger.close()


def test_a_client_without_certificate_is_refused(core_process: CoreProcess) -> None:
    context = ssl.create_default_context(cafile=str(core_process.pki.ca.cert))
    context.check_hostname = False
    with (socket.create_connection(("127.0.0.1", core_process.port), timeout=5) as raw,
          pytest.raises((ssl.SSLError, ConnectionError)),
          context.wrap_socket(raw) as tls):
        # TLS 1.3 reports the missing certificate at the first read, not the handshake.
        tls.sendall(bytes.fromhex("4200780100000000"))
        if not tls.recv(8):
            raise ConnectionError("closed")


def test_malformed_ttlv_is_invalid_message_and_the_server_keeps_serving(
        core_process: CoreProcess) -> None:
    with core_process.client() as client:
        # A readable header, a body that is not TTLV.
        answer = client.send(bytes.fromhex("4200780100000010") + b"\xff" * 16)
        assert struct.unpack(">I", answer[:4])[0] >> 8 == 0x42007B
        assert b"malformed TTLV" in answer
    _create_get_destroy(core_process)


def _log_lines(core: CoreProcess) -> list[dict]:
    return [json.loads(line) for line in core.log.read_text().splitlines() if line.strip()]


def test_the_log_is_json_lines_with_an_audit_event_per_request(
        core_process: CoreProcess) -> None:
    client = core_process.pykmip()
    try:
        uid = client.create(enums.CryptographicAlgorithm.AES, 256)
    finally:
        client.close()

    def audited() -> list[dict]:
        return [line for line in _log_lines(core_process)
                if line["namespace"] == "kcm.audit" and uid in line["object_ids"]]

    wait_until(lambda: bool(audited()), "the audit event of the Create")
    [event] = audited()
    assert event["level"] == "info"
    assert (event["operation"], event["result_status"]) == ("CREATE", "SUCCESS")
    assert event["principal"] == "spiffe://kcm.test/tenant/demo/service/app"
    assert event["text"].startswith(f"audit {event['seq']}: CREATE by ")
    assert event["time"].endswith("Z") and len(event["digest"]) == 64
    lines = _log_lines(core_process)  # every line is one JSON object, twistd's own too
    assert any("starting up" in line["text"] for line in lines)
    assert any(line["text"].startswith("kcm-core listening on") for line in lines)


def test_start_failures_stop_twistd_with_a_clear_error(tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", core.port))
        taken.listen()
        with pytest.raises(RuntimeError, match="kcm-core exited \\(1\\)"):
            core.start()
    log = core.log.read_text()
    assert "kcm-core did not start: kcm-kmip-listener: Couldn't listen on" in log
    assert "Address already in use" in log

    core.database = f"sqlite:///{tmp_path / 'core' / 'empty.db'}"
    core.write_config()
    with pytest.raises(RuntimeError, match="kcm-core exited \\(1\\)"):
        core.start()
    assert ("kcm-core did not start: kcm-l1: the database was not initialised: "
            "run `kcm core init` first") in core.log.read_text()


def _checkpoints(core: CoreProcess) -> list[dict]:
    return [line for line in _log_lines(core)
            if line["namespace"] == "kcm.audit.checkpoint" and "checkpoint" in line]


def test_checkpoints_in_the_log_anchor_the_chain_outside_the_database(tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    core.audit_checkpoint_interval = 0.2
    core.write_config()
    # The records of the keys `kcm core tenant/service add` created.
    provisioned = json.loads(core.kcm("audit", "tail", "-n", "1").stdout)
    assert provisioned["seq"] == 4
    core.start()
    try:
        wait_until(lambda: bool(_checkpoints(core)), "the checkpoint at start")
        first = _checkpoints(core)[0]
        assert (first["level"], first["seq"], first["digest"]) == (
            "info", 4, provisioned["digest"])
        assert first["text"] == f"audit checkpoint {first['checkpoint']}"
        assert first["checkpoint"] == f"4:{provisioned['digest']}:{first['mac']}"

        _create_get_destroy(core)
        # The database's newest record (audit lines reach the log a moment after the answer).
        newest = json.loads(core.kcm("audit", "tail", "-n", "1").stdout)["seq"]
        wait_until(lambda: _checkpoints(core)[-1]["seq"] == newest,
                   "a checkpoint of the newest audit record")
        result = core.kcm("audit", "verify", "--checkpoint-log", str(core.log))
        assert result.stdout.startswith(f"audit log intact: {newest} records verified; ")
    finally:
        core.stop()

    # Someone with the database but not L1 empties the audit log: what is left looks like a
    # log that never had a record, until it is held to the checkpoints.
    with sqlite3.connect(tmp_path / "core" / "kcm.db") as database:
        database.execute("DELETE FROM audit_log")
        database.execute("DELETE FROM meta WHERE key = 'audit.head'")
    assert core.kcm("audit", "verify").stdout == "audit log intact: 0 records verified\n"
    result = core.kcm("audit", "verify", "--checkpoint-log", str(core.log), check=False)
    assert result.returncode == 1
    assert result.stdout.startswith(f"audit log BROKEN at record 1: a checkpoint names record "
                                    f"{newest}, but the chain ends at 0")


def test_attribute_history_allow_list_and_partial_locate_through_the_process(
        core_process: CoreProcess) -> None:
    """Through a real kcm-core over TLS: Always Sensitive / Never Extractable follow a Set
    Attribute, a tag that is no attribute of the version is refused and never stored, and
    Locate matches a Link given by its Linked Object Identifier alone."""
    from kcm.kmip.attributes import Attribute, AttributeReference, Link
    from kcm.kmip.enums import LinkType, ObjectType, Operation, ResultReason
    from kcm.kmip.payloads import (
        AddAttributeRequest,
        CreateRequest,
        GetAttributesRequest,
        LocateRequest,
        SetAttributeRequest,
    )
    from kcm.kmip.tags import Tag
    from kcm.testing.requests import aes256, item
    from kcm.ttlv import Item, ItemType
    from tests.e2e_support import send_v21, succeeded_v21

    history = (Tag.ALWAYS_SENSITIVE, Tag.NEVER_EXTRACTABLE)
    with core_process.client() as client:
        (created,) = succeeded_v21(client, item(Operation.CREATE, CreateRequest(
            object_type=ObjectType.SYMMETRIC_KEY, attributes=aes256([
                Attribute.of(Tag.SENSITIVE, True), Attribute.of(Tag.EXTRACTABLE, False)]))))
        uid = created.unique_identifier
        with core_process.client("admin") as admin:  # (an application may not loosen them)
            succeeded_v21(admin, *[item(Operation.SET_ATTRIBUTE, SetAttributeRequest(
                unique_identifier=uid, attribute=attribute)) for attribute in (
                    Attribute.of(Tag.SENSITIVE, False), Attribute.of(Tag.EXTRACTABLE, True))])
        (read,) = succeeded_v21(client, item(Operation.GET_ATTRIBUTES, GetAttributesRequest(
            unique_identifier=uid, attribute_references=[AttributeReference(t)
                                                         for t in history])))
        assert [(a.tag, a.typed) for a in read.attributes] == [
            (Tag.ALWAYS_SENSITIVE, False), (Tag.NEVER_EXTRACTABLE, False)]

        batch_count = Attribute(Tag.BATCH_COUNT, Item(Tag.BATCH_COUNT, ItemType.INTEGER, 5))
        (refused,) = send_v21(client, item(Operation.ADD_ATTRIBUTE, AddAttributeRequest(
            unique_identifier=uid, attribute=batch_count)))
        assert refused.result_reason == ResultReason.INVALID_ATTRIBUTE
        (read,) = succeeded_v21(client, item(Operation.GET_ATTRIBUTES, GetAttributesRequest(
            unique_identifier=uid, attribute_references=[AttributeReference(Tag.BATCH_COUNT)])))
        assert not read.attributes

        (linked,) = succeeded_v21(client, item(Operation.CREATE, CreateRequest(
            object_type=ObjectType.SYMMETRIC_KEY, attributes=aes256([Attribute.of(
                Tag.LINK, Link(link_type=LinkType.PARENT_LINK,
                               linked_object_identifier=uid))]))))
        only_id = Attribute(Tag.LINK, Item(Tag.LINK, ItemType.STRUCTURE, [
            Item(Tag.LINKED_OBJECT_IDENTIFIER, ItemType.TEXT_STRING, uid)]))
        (found,) = succeeded_v21(client, item(Operation.LOCATE,
                                              LocateRequest(attributes=[only_id])))
        assert found.unique_identifiers == [linked.unique_identifier]


def _ignores_sighup(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGHUP - 1)))
    return False


def test_a_sighup_while_the_core_starts_neither_kills_it_nor_is_lost(tmp_path: Path) -> None:
    """``systemctl reload`` right after ``start``: SIGHUP's default action ended kcm-core
    until its policy service installed its handler (after the schema upgrade and L1). Once
    the plugin's module is being imported (SIGHUP ignored from then on, as /proc says),
    reloads sent throughout the start leave a core that serves and reloads."""
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    core.spawn()
    try:
        wait_until(lambda: _ignores_sighup(core.process.pid), "SIGHUP ignored at the import",
                   timeout=30)
        started = threading.Thread(target=core.wait_started)
        started.start()
        while started.is_alive():
            core.process.send_signal(signal.SIGHUP)
            time.sleep(0.02)
        started.join()
        assert core.process.poll() is None
        from kcm.testing.requests import query, request, response
        with core.client() as client:
            [answer] = response(client.send(request(query()))).batch_items
        assert answer.result_status == 0
        core.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "policy reload" in core.log.read_text(), "a reload after the start")
        assert core.process.poll() is None
    finally:
        core.stop()
