"""Correlation ids: 16 lowercase hex digits, not repeated, and not repeated by a forked
child either (the gateway's workers and the test helpers fork)."""

from __future__ import annotations

import os
import re

from kcm.kernel.correlation import new_correlation_id


def test_an_id_is_sixteen_hex_digits_and_ids_do_not_repeat() -> None:
    ids = [new_correlation_id() for _ in range(50_000)]
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_child_draws_other_ids_than_its_parent() -> None:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first ids, to the parent
        os.write(write_end, "".join(new_correlation_id() for _ in range(8)).encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    child = os.read(read_end, 1024).decode()
    os.close(read_end)
    parent = "".join(new_correlation_id() for _ in range(8))
    assert len(child) == 128 and child != parent
