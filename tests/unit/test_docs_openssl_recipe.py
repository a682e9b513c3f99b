"""docs/operations.md's openssl recipe for production certificates ("With openssl"), run
as written in a temporary directory, makes files that kcm's own checks take: ``kcm config
check``'s TLS checks of a core's, a gateway's and a client's files (load as each loads them,
key mode, dates, chain to the CA, extended key usages, a core's certificate without URI SAN,
a gateway's name), and the principals the certificates name."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kcm.cli.config_cmd import OK, check_config
from kcm.identity import Role, principal_from_certificate
from kcm.tls import load_certificates

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")


def recipe() -> str:
    text = DOCS.read_text()
    start = text.index("**With openssl**")
    block = re.search(r"```sh\n(.*?)```", text[start:], re.DOTALL)
    assert block is not None, "the recipe's sh block"
    return block.group(1)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("openssl-recipe")
    subprocess.run(["bash", "-c", recipe()], cwd=directory, check=True,
                   capture_output=True, timeout=60)
    return directory


def tls_findings(config: Path, prefix: str) -> list[tuple[str, str]]:
    return [(f.level, f.text) for f in check_config(str(config))
            if f.text.startswith(prefix)]


def test_the_core_files_pass_the_core_checks(made: Path) -> None:
    config = made / "core.toml"
    config.write_text(
        f'[core]\ndatabase = "sqlite:///{made / "kcm.db"}"\n'
        f'l1_key_file = "{made / "l1.key"}"\n'
        f'[core.tls]\ncert = "{made / "core.pem"}"\nkey = "{made / "core.key"}"\n'
        f'ca = "{made / "ca.pem"}"\n')
    found = tls_findings(config, "core.tls")
    assert {level for level, _ in found} == {OK}, found
    assert any("a core's certificate (no URI SAN, not a CA)" in text for _, text in found)
    assert any("fit for serverAuth" in text for _, text in found), found
    assert any("chains to core.tls.ca" in text for _, text in found), found


def test_the_gateway_files_pass_the_gateway_checks(made: Path) -> None:
    config = made / "gateway.toml"
    config.write_text(
        '[gateway]\ncore = ["tcp:127.0.0.1:5697"]\ncore_server_name = "core.example"\n'
        f'[gateway.tls]\ncert = "{made / "gateway.pem"}"\nkey = "{made / "gateway.key"}"\n'
        f'ca = "{made / "ca.pem"}"\n')
    found = tls_findings(config, "gateway.tls")
    assert {level for level, _ in found} == {OK}, found
    assert any("names gateway gw1 (spiffe://kcm.test/gateway/gw1)" in text
               for _, text in found), found
    assert any("fit for serverAuth and clientAuth" in text for _, text in found), found


def test_the_application_files_pass_the_client_checks(made: Path) -> None:
    config = made / "client.toml"
    config.write_text('[client]\nserver = ["127.0.0.1:5698"]\n'
                      'cert = "app.pem"\nkey = "app.key"\nca = "ca.pem"\n')
    found = tls_findings(config, "client")
    assert found and {level for level, _ in found} == {OK}, found
    assert any("fit for clientAuth" in text for _, text in found), found
    [cert] = load_certificates(made / "app.pem")
    principal = principal_from_certificate(cert, trust_domain="kcm.test")
    assert principal is not None and principal.role is Role.SERVICE, principal
    assert (principal.tenant, principal.service) == ("acme", "billing"), principal
