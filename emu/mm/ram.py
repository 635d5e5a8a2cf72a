"""Machine RAM: one sparse anonymous mapping shared with every vCPU's Unicorn instance.

A frame nobody wrote costs nothing (MAP_NORESERVE, demand-zero pages); scrubbing gives frames
back to the OS with madvise(MADV_DONTNEED), which also makes them read as zeros again, so the
hypervisor never writes zeros itself.
"""

from __future__ import annotations

import ctypes
import mmap

import numpy as np

from emu.mm.page import PAGE_SHIFT, PAGE_SIZE

MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)


class MachineRAM:
    """All of the host's RAM, machine address 0 .. size-1."""

    def __init__(self, size_bytes: int) -> None:
        if size_bytes <= 0 or size_bytes % PAGE_SIZE:
            raise ValueError(f"RAM size must be a positive multiple of {PAGE_SIZE}")
        self.size = size_bytes
        self.nr_frames = size_bytes >> PAGE_SHIFT
        self.mm = mmap.mmap(
            -1,
            size_bytes,
            flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE,
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
        )
        # Zero-copy views; they keep the mapping exported (and so alive) with the machine.
        self.u8 = np.frombuffer(self.mm, dtype=np.uint8)
        self.u64 = self.u8.view(np.uint64)
        self.ptr: int = int(self.u8.ctypes.data)
        self.scrubbed_pages = 0  # pages given back to the OS by scrub()

    def _check(self, maddr: int, n: int) -> None:
        if maddr < 0 or n < 0 or maddr + n > self.size:
            raise ValueError(f"machine address range {maddr:#x}+{n:#x} outside RAM")

    def page(self, mfn: int) -> np.ndarray:
        """The 4096 bytes of frame `mfn` (a writable view)."""
        self._check(mfn << PAGE_SHIFT, PAGE_SIZE)
        return self.u8[mfn << PAGE_SHIFT : (mfn + 1) << PAGE_SHIFT]

    def page64(self, mfn: int) -> np.ndarray:
        """Frame `mfn` as 512 little-endian 64-bit words (page-table entries)."""
        self._check(mfn << PAGE_SHIFT, PAGE_SIZE)
        return self.u64[mfn << (PAGE_SHIFT - 3) : (mfn + 1) << (PAGE_SHIFT - 3)]

    def read(self, maddr: int, n: int) -> bytes:
        self._check(maddr, n)
        return bytes(self.mm[maddr : maddr + n])

    def write(self, maddr: int, data: bytes) -> None:
        self._check(maddr, len(data))
        self.mm[maddr : maddr + len(data)] = data

    def scrub(self, mfn: int, count: int = 1) -> None:
        """Zero `count` frames from `mfn` by handing them back to the OS (no zero writes)."""
        if count <= 0:
            return
        self._check(mfn << PAGE_SHIFT, count << PAGE_SHIFT)
        self.mm.madvise(mmap.MADV_DONTNEED, mfn << PAGE_SHIFT, count << PAGE_SHIFT)
        self.scrubbed_pages += count

    def resident_bytes(self) -> int:
        """Bytes of this mapping the OS backs now, exactly: mincore(2) over the mapping (smaps'
        Rss would also count a neighbouring mapping the kernel merged with this one)."""
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
        vec = np.zeros(self.size >> PAGE_SHIFT, dtype=np.uint8)
        if libc.mincore(ctypes.c_void_p(self.ptr), self.size, vec.ctypes.data) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        return int(np.count_nonzero(vec & 1)) << PAGE_SHIFT
