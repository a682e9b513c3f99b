"""The OASIS mandatory test cases (BL-M-*-21, SKLC/SKFF/CS-BC/CS-AC/CS-RNG-M-*-14/-21) replayed
against a real `twistd kcm-core` over mutual TLS by the conformance runner, directly and
through a real `twistd kcm-gateway` in front of it, with the permitted variations of KMIP
Profiles §4.1.
Cases left out are listed, with reasons, in docs/conformance.md and in EXCLUDED below;
nothing else may fail, either way."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kcm.conformance.client import KmipClient
from kcm.conformance.runner import case_name, run_case, select_cases
from tests.e2e_support import CoreProcess, GatewayProcess

#: Case -> why it cannot pass here (kept in step with docs/conformance.md).
_RNG = ("expects the server to report an ANSI X9.31 AES-256 random number generator; KCM "
        "draws key material from the operating system's CSPRNG and reports that truthfully "
        "(RNG Algorithm Unspecified)")
EXCLUDED: dict[str, str] = {
    f"SKFF-M-{n}-{v}": _RNG for n in (10, 11, 12) for v in (14, 21)
}


def run_mandatory_cases(vectors: Path, connect: Callable[[], KmipClient]) -> None:
    """Run every selected case but EXCLUDED, each on a fresh connection from ``connect``,
    print one line per case and the total, and fail with the failures' lines."""
    cases = select_cases(vectors)
    assert len(cases) >= 111
    lines, failed = [], []
    for path in cases:
        name = case_name(path)
        if name in EXCLUDED:
            lines.append(f"SKIP {name}: {EXCLUDED[name]}")
            continue
        with connect() as client:
            result = run_case(path, client)
        lines.append(result.line())
        if not result.passed:
            failed.append(name)
    ran = len(cases) - len(EXCLUDED)
    print("\n" + "\n".join(lines))
    print(f"{ran - len(failed)} passed, {len(failed)} failed")
    assert failed == [], "\n".join(line for line in lines if line.startswith("FAIL"))


def test_mandatory_cases_pass_against_kcm_core(core_process: CoreProcess, vectors: Path) -> None:
    run_mandatory_cases(vectors, lambda: core_process.client("admin"))


def test_mandatory_cases_pass_through_kcm_gateway(gateway_process: GatewayProcess,
                                                  vectors: Path) -> None:
    """The same cases, as the same tenant administrator, sent to a kcm-gateway linked to the
    core: every operation in them is a control operation (managed objects), which the
    gateway forwards, so the answers must be the core's, judged by the same rules."""
    run_mandatory_cases(vectors, lambda: gateway_process.client("admin"))
