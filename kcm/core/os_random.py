"""The operating system's CSPRNG as RNG Seed feeds it (KMIP 1.4 §4.37)."""

from __future__ import annotations

__all__ = ["OS_RANDOM_DEVICE", "mix_into_os_pool"]

#: Written-to, the kernel mixes the bytes into its input pool without crediting entropy
#: (random(4)): a seed can add unpredictability, never remove it.
OS_RANDOM_DEVICE = "/dev/urandom"


def mix_into_os_pool(seed: bytes, device: str = OS_RANDOM_DEVICE) -> int:
    """Mix ``seed`` into the operating system's random pool; the number of bytes used
    (0 when the system offers no such device)."""
    try:
        with open(device, "wb", buffering=0) as pool:
            return pool.write(seed) or 0
    except OSError:
        return 0
