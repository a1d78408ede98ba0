"""
How much freed memory the process keeps for reuse: L{keep_free_memory}.

glibc's C{malloc} gives blocks over 128 KiB straight from the kernel
(C{mmap}) and returns them when freed, and trims the top of its heap once
more than twice that is free.  A call with a large value makes several
copies of it (bytes read, the decoded value, the encoded reply), each then
a fresh mapping that the kernel fills with zeroed pages, one page fault per
4 KiB.  On a virtual machine that costs more than the copies themselves:
a node echoing 1 MiB values spent nearly 90% of its time in page faults.

Keeping up to some megabytes of freed memory lets the next large call reuse
the pages of the last one.  The cost is that the process's resident size
does not fall back after a burst of large calls, by at most that much.

An entry point (the C{twistd callnet} plugin) calls this once at start-up:
it changes a setting of the whole process, which a library must not.
"""

from __future__ import annotations

import ctypes
import platform

#: C{mallopt} parameters, from glibc's C{malloc.h}.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: The largest mmap threshold glibc takes on a 64-bit system.
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024


def keep_free_memory(nbytes: int) -> bool:
    """
    Have glibc keep up to C{nbytes} of freed memory for reuse, and serve
    blocks up to that size (at most 32 MiB) from its heap.

    @param nbytes: 0 leaves the C library's own policy.
    @return: whether the setting took: C{False} on a C library other than
        glibc (musl, macOS), where nothing is changed.
    """
    if nbytes <= 0 or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    threshold = min(nbytes, _MMAP_THRESHOLD_MAX)
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, min(nbytes, 2**31 - 1))
    )
