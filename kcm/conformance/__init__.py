"""OASIS KMIP conformance testing: replay the profile test cases against a live server.

:mod:`kcm.conformance.client` is a small blocking KMIP-over-TLS client,
:mod:`kcm.conformance.matcher` judges one response against the expected one under the
permitted variations of KMIP Profiles §4.1, and :mod:`kcm.conformance.runner` plays whole
test-case files. ``kcm conformance run`` is the command line.
"""
