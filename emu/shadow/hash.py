"""The shadow hash table (common.c): (guest frame, type) -> shadow MFN.

251 buckets, each a chain of head shadow pages linked through `next_shadow` (the frame
table's `tlbflush` slot on shadow pages, 0 = end of chain). A dict gives O(1) lookups; the
bucket lists and `next_shadow` fields are kept equal to it so the frame table tells the truth.
"""

from __future__ import annotations

SHADOW_HASH_BUCKETS = 251


def sh_hash(n: int, t: int) -> int:
    """sh_hash(): sdbm-style over the low 5 bytes of `n`, seeded with the type."""
    k = t
    for _ in range(5):
        k = ((n & 0xFF) + (k << 6) + (k << 16) - k) & 0xFFFFFFFF
        n >>= 8
    return k % SHADOW_HASH_BUCKETS


class ShadowHash:
    def __init__(self, next_shadow, perfc) -> None:
        self.next_shadow = next_shadow  # frame-table tlbflush column (numpy view)
        self.map: dict[tuple[int, int], int] = {}
        self.buckets: list[list[int]] = [[] for _ in range(SHADOW_HASH_BUCKETS)]
        self.bucket_of: dict[int, int] = {}
        self.pc = perfc

    def _relink(self, b: list[int]) -> None:
        ns = self.next_shadow
        for i, smfn in enumerate(b):
            ns[smfn] = b[i + 1] if i + 1 < len(b) else 0

    def lookup(self, n: int, t: int, cpu: list[int] | None = None) -> int | None:
        """shadow_hash_lookup(): find the shadow; a hit moves to the front of its chain."""
        pc = self.pc
        ctr = cpu if cpu is not None else pc.cpu[0]
        ctr[pc.index["shadow_hash_lookups"]] += 1
        smfn = self.map.get((n, t))
        if smfn is None:
            ctr[pc.index["shadow_hash_lookup_miss"]] += 1
            return None
        b = self.buckets[self.bucket_of[smfn]]
        if b[0] == smfn:
            ctr[pc.index["shadow_hash_lookup_head"]] += 1
        else:
            b.remove(smfn)
            b.insert(0, smfn)
            self._relink(b)
        return smfn

    def insert(self, n: int, t: int, smfn: int) -> None:
        """shadow_hash_insert(): push on the front of its bucket."""
        self.pc.cpu[0][self.pc.index["shadow_hash_inserts"]] += 1
        key = sh_hash(n, t)
        self.map[(n, t)] = smfn
        self.bucket_of[smfn] = key
        b = self.buckets[key]
        b.insert(0, smfn)
        self.next_shadow[smfn] = b[1] if len(b) > 1 else 0

    def delete(self, n: int, t: int, smfn: int) -> None:
        """shadow_hash_delete(): unlink from its bucket."""
        self.pc.cpu[0][self.pc.index["shadow_hash_deletes"]] += 1
        del self.map[(n, t)]
        b = self.buckets[self.bucket_of.pop(smfn)]
        b.remove(smfn)
        self.next_shadow[smfn] = 0
        self._relink(b)

    def chain(self, bucket: int) -> list[int]:
        """The chain as the frame table links it (for audits)."""
        b = self.buckets[bucket]
        out: list[int] = []
        smfn = b[0] if b else 0
        while smfn and len(out) <= len(self.map):
            out.append(smfn)
            smfn = int(self.next_shadow[smfn])
        return out
