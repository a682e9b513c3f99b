"""A child process with a terminal of its own, for tests that a program never prompts
there (OpenSSL asks an encrypted key's pass phrase on the controlling terminal), and an
encrypted copy of a key to make it ask."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import signal
import time
from pathlib import Path


def encrypted_copy(key: Path, dest: Path, pass_phrase: bytes = b"secret") -> Path:
    """``key`` (an unencrypted PEM private key) written to ``dest`` encrypted, mode 0600."""
    from cryptography.hazmat.primitives import serialization

    loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
    dest.write_bytes(loaded.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(pass_phrase)))
    dest.chmod(0o600)
    return dest


def run_on_terminal(argv: list[str], timeout: float = 20) -> tuple[int | None, str]:
    """Run ``argv`` with a pseudo-terminal as its controlling terminal, stdin and output;
    (its exit status, or None if it was still running at ``timeout`` and was killed,
    and what it wrote there)."""
    pid, terminal = pty.fork()
    if pid == 0:  # pragma: no cover (the child)
        os.execv(argv[0], argv)
    output, status, deadline = b"", None, time.monotonic() + timeout
    try:
        while status is None and time.monotonic() < deadline:
            if select.select([terminal], [], [], 0.2)[0]:
                with contextlib.suppress(OSError):  # (the child is gone)
                    output += os.read(terminal, 4096)
            done, code = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(code)
    finally:
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(terminal)
    return status, output.decode(errors="replace")
