"""The compiled modules (kcm.kernel._plain_scan, kcm._tls_calls, kcm.ttlv._item_count);
everything else is in setup.cfg."""

from setuptools import Extension, setup

_FLAGS = ["-O2", "-Wall", "-Wextra"]

setup(ext_modules=[
    Extension("kcm.kernel._plain_scan", ["kcm/kernel/_plain_scan.c"], extra_compile_args=_FLAGS),
    Extension("kcm._tls_calls", ["kcm/_tls_calls.c"], extra_compile_args=_FLAGS),
    Extension("kcm.ttlv._item_count", ["kcm/ttlv/_item_count.c"], extra_compile_args=_FLAGS),
])
