"""Support for KCM's tests and benchmarks, in one place both import: real server processes on
loopback (:mod:`kcm.testing.processes`) and KMIP request builders
(:mod:`kcm.testing.requests`). The servers never import this package."""
