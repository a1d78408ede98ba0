"""
L{callnet.malloc.keep_free_memory}, observed in child processes: freed large
blocks stay resident for reuse with it, and go back to the system without.
"""

from __future__ import annotations

import platform
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from callnet.malloc import keep_free_memory

#: Allocates and frees 32 one-MiB blocks; prints the resident size (KiB)
#: given back to the system by the frees.
CHILD = """
import sys
from callnet.malloc import keep_free_memory

def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))

if sys.argv[1] == "keep":
    assert keep_free_memory(64 * 1024 * 1024)
blocks = [b"x" * (1 << 20) for _ in range(32)]
before = rss()
del blocks
print(before - rss())
"""


def returned_kib(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=60, check=True
    )
    return int(done.stdout)


class KeepFreeMemoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
            raise self.skipTest("glibc on Linux only")

    def test_freed_memory_is_kept(self) -> None:
        """With it, freeing 32 MiB of large blocks leaves them resident; without, they go back."""
        self.assertGreater(returned_kib("default"), 24 * 1024)
        self.assertLess(returned_kib("keep"), 4 * 1024)

    def test_zero_changes_nothing(self) -> None:
        """0 leaves the C library's own policy."""
        self.assertFalse(keep_free_memory(0))
