"""RFC 6962 Merkle tree: published vectors, properties, and tampering."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tee_daemon.trust import merkle
from tee_daemon.trust.merkle import MerkleTree

# The 8-leaf reference tree every certificate-transparency implementation tests against
# (google/certificate-transparency, transparency-dev/merkle testonly + proof tests).
LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
ROOTS = [  # by tree size 0..8
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (0-based leaf index, tree size, proof)
INCLUSION = [
    (0, 8, [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ]),
    (5, 8, [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ]),
    (0, 1, []),
]
# (old size, new size, proof)
CONSISTENCY = [
    (1, 1, []),
    (1, 8, [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ]),
    (6, 8, [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ]),
    (2, 5, [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ]),
    (6, 7, [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ]),
]

HASHES = [merkle.leaf_hash(x) for x in LEAVES]


def hx(proof: list[bytes]) -> list[str]:
    return [p.hex() for p in proof]


def test_primitives() -> None:
    assert merkle.leaf_hash(b"").hex() == ROOTS[1]
    assert merkle.node_hash(HASHES[0], HASHES[1]).hex() == ROOTS[2]
    assert merkle.EMPTY_ROOT == hashlib.sha256(b"").digest()


@pytest.mark.parametrize("size", range(9))
def test_reference_roots(size: int) -> None:
    assert merkle.root(HASHES[:size]).hex() == ROOTS[size]
    assert MerkleTree(HASHES).root(size).hex() == ROOTS[size]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_reference_inclusion(index: int, size: int, proof: list[str]) -> None:
    assert hx(merkle.inclusion_proof(index, HASHES[:size])) == proof
    assert hx(MerkleTree(HASHES).inclusion_proof(index, size)) == proof
    raw = [bytes.fromhex(p) for p in proof]
    root = bytes.fromhex(ROOTS[size])
    assert merkle.verify_inclusion(index, size, HASHES[index], raw, root)
    # Wrong index, wrong size, wrong leaf, extra or missing elements, flipped bit: all fail.
    assert not merkle.verify_inclusion(index + 1, size, HASHES[index], raw, root)
    assert not merkle.verify_inclusion(index, size * 2, HASHES[index], raw, root)
    assert not merkle.verify_inclusion(index, size, merkle.leaf_hash(b"x"), raw, root)
    assert not merkle.verify_inclusion(index, size, HASHES[index], raw + [root], root)
    assert not merkle.verify_inclusion(index, size, HASHES[index], [root] + raw, root)
    if raw:
        assert not merkle.verify_inclusion(index, size, HASHES[index], raw[:-1], root)
        bad = list(raw)
        bad[0] = bytes([bad[0][0] ^ 8]) + bad[0][1:]
        assert not merkle.verify_inclusion(index, size, HASHES[index], bad, root)


@pytest.mark.parametrize(("m", "n", "proof"), CONSISTENCY)
def test_reference_consistency(m: int, n: int, proof: list[str]) -> None:
    assert hx(merkle.consistency_proof(m, n, HASHES)) == proof
    raw = [bytes.fromhex(p) for p in proof]
    rm, rn = bytes.fromhex(ROOTS[m]), bytes.fromhex(ROOTS[n])
    assert merkle.verify_consistency(m, n, rm, rn, raw)
    if raw:
        assert not merkle.verify_consistency(m, n, rn, rm, raw)
        assert not merkle.verify_consistency(m - 1, n, rm, rn, raw)
        assert not merkle.verify_consistency(m, n * 2, rm, rn, raw)
        assert not merkle.verify_consistency(m, n, rm, rn, raw[:-1])
        assert not merkle.verify_consistency(m, n, rm, rn, raw + [rn])
        assert not merkle.verify_consistency(m, n, rm, rn, [raw[0]] + raw)
        assert not merkle.verify_consistency(m, n, rm, rn, [])


def test_trivial_consistency() -> None:
    a, b = bytes.fromhex(ROOTS[3]), bytes.fromhex(ROOTS[5])
    assert merkle.verify_consistency(0, 5, merkle.EMPTY_ROOT, b, [])
    assert merkle.verify_consistency(3, 3, a, a, [])
    assert not merkle.verify_consistency(3, 3, a, b, [])
    assert not merkle.verify_consistency(3, 3, a, a, [a])
    assert not merkle.verify_consistency(5, 3, b, a, [])


def _leaves(n: int) -> list[bytes]:
    return [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def _naive_root(hashes: list[bytes]) -> bytes:
    """MTH straight from RFC 6962's recursive definition, to cross-check the cache."""
    if not hashes:
        return merkle.EMPTY_ROOT
    if len(hashes) == 1:
        return hashes[0]
    k = 1 << ((len(hashes) - 1).bit_length() - 1)
    return merkle.node_hash(_naive_root(hashes[:k]), _naive_root(hashes[k:]))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.data())
def test_inclusion_property(size: int, data: st.DataObject) -> None:
    hashes = _leaves(size)
    tree = MerkleTree(hashes)
    assert tree.root() == _naive_root(hashes)
    index = data.draw(st.integers(0, size - 1))
    proof = tree.inclusion_proof(index)
    assert merkle.verify_inclusion(index, size, hashes[index], proof, tree.root())
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        bad = list(proof)
        bad[i] = bad[i][: bit // 8] + bytes([bad[i][bit // 8] ^ (1 << (bit % 8))]) + bad[i][bit // 8 + 1 :]
        assert not merkle.verify_inclusion(index, size, hashes[index], bad, tree.root())
    other = data.draw(st.integers(0, size - 1))
    if other != index:
        assert not merkle.verify_inclusion(other, size, hashes[index], proof, tree.root())


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.data())
def test_consistency_property(n: int, data: st.DataObject) -> None:
    hashes = _leaves(n)
    tree = MerkleTree(hashes)
    m = data.draw(st.integers(1, n))
    proof = tree.consistency_proof(m, n)
    assert tree.root(m) == _naive_root(hashes[:m])
    assert merkle.verify_consistency(m, n, tree.root(m), tree.root(n), proof)
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
        assert not merkle.verify_consistency(m, n, tree.root(m), tree.root(n), bad)
        # A history rewrite: change one old leaf and the old root no longer fits.
        forged = list(hashes[:m])
        forged[data.draw(st.integers(0, m - 1))] = merkle.leaf_hash(b"forged")
        assert not merkle.verify_consistency(m, n, _naive_root(forged), tree.root(n), proof)


def test_incremental_matches_batch_and_is_fast_enough() -> None:
    hashes = _leaves(100_000)
    tree = MerkleTree()
    for h in hashes[:1000]:
        tree.append(h)
    assert tree.root() == merkle.root(hashes[:1000])
    big = MerkleTree(hashes)
    # Proofs and past roots come from cached subtrees: thousands of them stay cheap.
    r = big.root()
    for i in range(0, 100_000, 97):
        assert merkle.verify_inclusion(i, big.size, hashes[i], big.inclusion_proof(i), r)
    p = big.consistency_proof(77_777)
    assert merkle.verify_consistency(77_777, 100_000, big.root(77_777), r, p)


def test_bad_arguments() -> None:
    tree = MerkleTree(HASHES)
    with pytest.raises(ValueError):
        tree.inclusion_proof(8)
    with pytest.raises(ValueError):
        tree.consistency_proof(3, 9)
    with pytest.raises(ValueError):
        tree.root(9)
    with pytest.raises(ValueError):
        tree.append(b"short")
    assert not merkle.verify_inclusion(0, 0, HASHES[0], [], HASHES[0])
    assert not merkle.verify_inclusion(0, 1, HASHES[0], [], b"short")
