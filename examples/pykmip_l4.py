"""Envelope encryption through kcm-gateway with PyKMIP (what `make run` points to).

Run from the repository root while `make run` is up:  .venv/bin/python examples/pykmip_l4.py
(`--gateway HOST:PORT` for a gateway elsewhere than 127.0.0.1:5698, `--pki DIR` for other
certificates than var/pki's app.pem, app.key and ca.pem).
"""

from __future__ import annotations

import argparse
import os

from kmip.core import enums
from kmip.core import objects as core_objects
from kmip.core.factories.attributes import AttributeFactory
from kmip.pie.client import ProxyKmipClient

CBC = {"cryptographic_algorithm": enums.CryptographicAlgorithm.AES,
       "block_cipher_mode": enums.BlockCipherMode.CBC,
       "padding_method": enums.PaddingMethod.PKCS5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", default="127.0.0.1:5698", help="kcm-gateway's KMIP "
                        "address (default: make run's)")
    parser.add_argument("--pki", default="var/pki", help="where app.pem, app.key, ca.pem are")
    args = parser.parse_args()
    host, _, port = args.gateway.rpartition(":")
    client = ProxyKmipClient(hostname=host, port=int(port), cert=f"{args.pki}/app.pem",
                             key=f"{args.pki}/app.key", ca=f"{args.pki}/ca.pem",
                             config_file=os.devnull)
    client.open()
    try:
        # An L4 (DEK) is a Create of an AES key marked with the custom attribute x-kcm-level.
        factory = AttributeFactory()
        template = core_objects.TemplateAttribute(attributes=[
            factory.create_attribute(enums.AttributeType.CRYPTOGRAPHIC_ALGORITHM,
                                     enums.CryptographicAlgorithm.AES),
            factory.create_attribute(enums.AttributeType.CRYPTOGRAPHIC_LENGTH, 256),
            factory.create_attribute("x-kcm-level", "L4"),
        ])
        created = client.proxy.create(enums.ObjectType.SYMMETRIC_KEY, template)
        if created.result_status.value != enums.ResultStatus.SUCCESS:
            raise SystemExit(f"Create of an L4 failed: {created.result_message}")
        token = created.uuid
        print("L4 token:", token)
        print("DEK:", client.get(token).value.hex())
        sealed, iv = client.encrypt(b"a customer record", uid=token,
                                    cryptographic_parameters=CBC)
        print("record encrypted:", sealed.hex())
        print("decrypted:", client.decrypt(sealed, uid=token, cryptographic_parameters=CBC,
                                           iv_counter_nonce=iv))
        # Anything else (a managed key, its lifecycle) is forwarded to kcm-core.
        managed = client.create(enums.CryptographicAlgorithm.AES, 256)
        client.activate(managed)
        print("managed key (served by the core):", managed)
    finally:
        client.close()


if __name__ == "__main__":
    main()
