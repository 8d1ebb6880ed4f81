"""RFC 6962 / RFC 9162 Merkle tree over SHA-256 (SPEC section 6).

Leaf hash `SHA256(0x00 || data)`, node hash `SHA256(0x01 || left || right)`, the empty
tree's root is `SHA256("")`. Proofs follow RFC 9162 sections 2.1.3 and 2.1.4, so any
other RFC 6962 implementation (Go's transparency-dev/merkle, CT monitors, ...) can check
what this daemon publishes, and the other way round.

`MerkleTree` keeps every complete, aligned power-of-two subtree hash as leaves are
appended (about 2n hashes in memory). Every subtree that RFC 6962's recursive
definitions ask for is either such a complete subtree (one lookup) or the ragged right
edge of a tree, assembled from at most log2(n) of them. So roots of any past size and
proofs cost O(log^2 n) hashes, not O(n): the audit endpoint asks for one proof per
entry and the log is expected to reach ~100k leaves.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly less than n (n >= 2): RFC 6962's `k`."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """An append-only tree of leaf hashes with cached complete subtrees."""

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        # _levels[h][i] = hash of leaves [i * 2^h, (i + 1) * 2^h), only complete ones.
        self._levels: list[list[bytes]] = [[]]
        for h in leaf_hashes:
            self.append(h)

    def __len__(self) -> int:
        return len(self._levels[0])

    @property
    def size(self) -> int:
        return len(self._levels[0])

    def append(self, leaf_hash_: bytes) -> None:
        if len(leaf_hash_) != HASH_SIZE:
            raise ValueError("a leaf hash is 32 bytes")
        self._levels[0].append(leaf_hash_)
        level = 0
        # Each time a level gains an even count, a new complete parent subtree exists.
        while len(self._levels[level]) % 2 == 0:
            row = self._levels[level]
            if len(self._levels) == level + 1:
                self._levels.append([])
            self._levels[level + 1].append(node_hash(row[-2], row[-1]))
            level += 1

    def leaf(self, index: int) -> bytes:
        return self._levels[0][index]

    def _range(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]) for a non-empty range reached by RFC 6962's recursion."""
        n = hi - lo
        if n & (n - 1) == 0 and lo % n == 0:
            return self._levels[n.bit_length() - 1][lo // n]
        k = _split(n)
        return node_hash(self._range(lo, lo + k), self._range(lo + k, hi))

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        if not 0 <= size <= self.size:
            raise ValueError(f"tree size {size} is outside 0..{self.size}")
        return EMPTY_ROOT if size == 0 else self._range(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 PATH(index, D[0:size]), leaf-side sibling first."""
        size = self.size if size is None else size
        if not 0 <= index < size <= self.size:
            raise ValueError(f"no leaf {index} in a tree of size {size}")
        proof: list[bytes] = []
        lo, hi = 0, size
        while hi - lo > 1:
            k = _split(hi - lo)
            if index < lo + k:
                proof.append(self._range(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._range(lo, lo + k))
                lo = lo + k
        proof.reverse()  # collected root-side first; the wire order is leaf-side first
        return proof

    def consistency_proof(self, m: int, n: int | None = None) -> list[bytes]:
        """RFC 9162 PROOF(m, D[0:n]); empty for the trivial cases m == 0 and m == n."""
        n = self.size if n is None else n
        if not 0 <= m <= n <= self.size:
            raise ValueError(f"no consistency proof from {m} to {n} (log size {self.size})")
        if m == 0 or m == n:
            return []
        proof: list[bytes] = []
        lo, hi, whole = 0, n, True  # `whole`: the old tree is exactly this subtree so far
        while True:
            size = hi - lo
            if m == size:
                if not whole:
                    proof.append(self._range(lo, hi))
                break
            k = _split(size)
            if m <= k:
                proof.append(self._range(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._range(lo, lo + k))
                lo, m, whole = lo + k, m - k, False
        proof.reverse()
        return proof


# Convenience functions over a plain list of leaf hashes (they build a tree: O(n)).


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    return MerkleTree(leaf_hashes).root()


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    return MerkleTree(leaf_hashes).inclusion_proof(index)


def consistency_proof(m: int, n: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    return MerkleTree(leaf_hashes[:n]).consistency_proof(m, n)


def _ok_hashes(*hashes: bytes) -> bool:
    return all(isinstance(h, (bytes, bytearray)) and len(h) == HASH_SIZE for h in hashes)


def root_from_inclusion_proof(
    index: int, size: int, leaf_hash_: bytes, proof: Sequence[bytes]
) -> bytes | None:
    """RFC 9162 2.1.3.2: the root the proof leads to, or None when it is malformed."""
    if not 0 <= index < size or not _ok_hashes(leaf_hash_, *proof):
        return None
    fn, sn, r = index, size - 1, bytes(leaf_hash_)
    for p in proof:
        if sn == 0:
            return None  # more proof than tree height
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def verify_inclusion(
    index: int, size: int, leaf_hash_: bytes, proof: Sequence[bytes], root_: bytes
) -> bool:
    got = root_from_inclusion_proof(index, size, leaf_hash_, proof)
    return got is not None and _ok_hashes(root_) and hmac.compare_digest(got, root_)


def verify_consistency(
    m: int, n: int, root_m: bytes, root_n: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 2.1.4.2. Size 0 is consistent with anything; m == n needs equal roots."""
    if not 0 <= m <= n or not _ok_hashes(*proof):
        return False
    if m == 0:
        return len(proof) == 0
    if not _ok_hashes(root_m, root_n):
        return False
    if m == n:
        return len(proof) == 0 and hmac.compare_digest(root_m, root_n)
    if not proof:
        return False
    path = list(proof)
    if m & (m - 1) == 0:
        path.insert(0, bytes(root_m))  # the old tree is a complete subtree: its root starts
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and hmac.compare_digest(fr, root_m) and hmac.compare_digest(sr, root_n)
