"""The idle scrubber: Xen's bootscrub=idle (xen/common/page_alloc.c scrub_free_pages(),
called from the idle loop of each pCPU while it has nothing to run).

One background thread per machine stands for the idle pCPUs: while at least one pCPU is idle
and the heap has unscrubbed pages, it scrubs them in bounded chunks (`CHUNK` frames per heap
lock hold, then it lets other threads in), so `H`'s "Node 0 has N unscrubbed pages" falls to
zero. It sleeps when there is nothing to scrub; freeing dirty pages wakes it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

CHUNK = 8192  # frames per heap-lock hold (32 MiB of madvise)


class IdleScrubber:
    def __init__(self, heap, some_pcpu_idle: Callable[[], bool]) -> None:
        self.heap = heap
        self.some_pcpu_idle = some_pcpu_idle
        self.wake = threading.Event()
        self.stopped = False
        self.looks = 0  # times it looked for work: only when kicked, never on a timer
        self.thread = threading.Thread(target=self._run, name="xen-idle-scrub", daemon=True)

    def start(self) -> None:
        self.heap.scrubber = self
        self.wake.set()
        self.thread.start()

    def kick(self) -> None:
        """Pages were freed dirty, or a pCPU went idle (called under the heap's or the
        scheduler's lock: only sets an event)."""
        self.wake.set()

    def stop(self) -> None:
        """The machine stops: the heap scrubs at once again, the thread ends."""
        self.stopped = True
        self.wake.set()
        with self.heap.lock:
            if self.heap.scrubber is self:
                self.heap.scrubber = None
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout=5)

    def _run(self) -> None:
        heap = self.heap
        # No polling while every pCPU is busy: a thread that wakes every few milliseconds
        # takes the GIL from the vCPUs' fault hooks each time and slowed two busy guests'
        # first-touch faults from ~40,000/s to ~400/s. A pCPU that goes idle kicks instead
        # (the scheduler's on_idle), as Xen's idle loop itself calls scrub_free_pages().
        while not self.stopped:
            self.wake.clear()  # before looking: a kick from now on ends the wait below
            self.looks += 1
            if heap.node_need_scrub[0] and self.some_pcpu_idle():
                heap.scrub_some(CHUNK)
                continue
            self.wake.wait()
