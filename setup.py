"""The one compiled module (kcm.kernel._plain_scan); everything else is in setup.cfg."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("kcm.kernel._plain_scan", ["kcm/kernel/_plain_scan.c"],
                             extra_compile_args=["-O2", "-Wall", "-Wextra"])])
