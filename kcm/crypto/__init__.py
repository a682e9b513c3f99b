"""Cryptography as KMIP uses it, free of stored objects and of I/O (shared by core and
gateway). Each module has one job:

* :mod:`.symmetric`: Encrypt and Decrypt with symmetric keys (parameters, modes, IVs, tags);
* :mod:`.key_wrap`: AES key wrapping for Get's Key Wrapping Specification;
* :mod:`.rsa_keys`: RSA key pairs, and their Key Format Types (PKCS#1, PKCS#8, X.509,
  transparent);
* :mod:`.signatures`: RSA Sign and Signature Verify (padding, hash, MGF1);
* :mod:`.rsa_cipher`: RSA Encrypt and Decrypt (OAEP, PKCS#1 v1.5);
* :mod:`.mac`: MAC and MAC Verify (HMAC, CMAC-AES);
* :mod:`.derivation`: Derive Key's methods (PBKDF2, HASH, HMAC, ENCRYPT, NIST 800-108);
* :mod:`.sealed_state`: a stream's state sealed into its Correlation Value;
* :mod:`.parameters`, :mod:`.hashing`, :mod:`.errors`: what those share (the request's
  Cryptographic Parameters over the key's, the hashes and the Hash operation's digest, the
  common refusals).

It imports the model (:mod:`kcm.kmip`), the codec (:mod:`kcm.ttlv`) and the kernel
(:mod:`kcm.kernel`), never :mod:`kcm.core` or :mod:`kcm.gateway`. Refusals are
:class:`~kcm.kmip.errors.KmipError` with KMIP 2.x Result Reasons.
"""
