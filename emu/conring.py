"""The console ring (`conring`): Xen's own output, read by `xl dmesg` and key `w`.

Free-running producer/consumer indices as in xen/drivers/char/console.c; when the ring is
full the oldest bytes are overwritten (the consumer is pushed forward).
"""

from __future__ import annotations

CONRING_MIN = 16384


def conring_size_for(nr_cpus: int, lower_thresh: int) -> int:
    """`num_present_cpus() << (9 + lower_thresh)`, at least 16 KiB, a power of two."""
    want = max(CONRING_MIN, nr_cpus << (9 + lower_thresh))
    size = 1
    while size < want:
        size <<= 1
    return size


class Conring:
    def __init__(self, size: int = CONRING_MIN) -> None:
        if size < CONRING_MIN or size & (size - 1):
            raise ValueError("conring size must be a power of two >= 16 KiB")
        self.size = size
        self._buf = bytearray(size)
        self.prod = 0  # free-running producer index
        self.cons = 0  # free-running consumer index (oldest readable byte)

    def write(self, data: bytes) -> None:
        if len(data) >= self.size:
            data = data[-self.size :]
        start = self.prod % self.size
        first = min(len(data), self.size - start)
        self._buf[start : start + first] = data[:first]
        self._buf[: len(data) - first] = data[first:]
        self.prod += len(data)
        if self.prod - self.cons > self.size:
            self.cons = self.prod - self.size

    def read(self, clear: bool = False) -> bytes:
        """Everything from the consumer index on; `clear` moves the consumer up (`xl dmesg -c`)."""
        n = self.prod - self.cons
        start = self.cons % self.size
        if start + n <= self.size:
            out = bytes(self._buf[start : start + n])
        else:
            out = bytes(self._buf[start:]) + bytes(self._buf[: n - (self.size - start)])
        if clear:
            self.cons = self.prod
        return out

    def __len__(self) -> int:
        return self.prod - self.cons
