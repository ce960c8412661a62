"""Key agreement, seed derivation, secret sharing and share encryption.

Each client has two X25519 key pairs per round: one whose agreements seed the
pairwise masks, one whose agreements encrypt the Shamir shares sent to
neighbours through the server. Every derived key is bound to the round and the
two node ids, so nothing carries over from one round or pair to another.
"""

from __future__ import annotations

import os

from Crypto.Protocol.SecretSharing import Shamir
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from common.secure_agg.prg import SEED_BYTES

KEY_BYTES = 32
NONCE_BYTES = 12
_LABEL = b"fedbigbigan secure-agg v1"


def new_private_key() -> bytes:
    """A fresh X25519 private key, raw 32 bytes."""
    return X25519PrivateKey.generate().private_bytes(
        Encoding.Raw, PrivateFormat.Raw, NoEncryption()
    )


def public_key(private: bytes) -> bytes:
    """The raw 32-byte X25519 public key of a raw private key."""
    return (
        X25519PrivateKey.from_private_bytes(private)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


def new_seed() -> bytes:
    return os.urandom(SEED_BYTES)


def _derive(secret: bytes, purpose: bytes, round_id: str, a: int, b: int) -> bytes:
    low, high = sorted((a, b))
    info = b"|".join(
        [_LABEL, purpose, round_id.encode(), str(low).encode(), str(high).encode()]
    )
    return HKDF(
        algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info
    ).derive(secret)


def agree(private: bytes, peer_public: bytes) -> bytes:
    """X25519 shared secret of a raw private key and a peer's raw public key."""
    return X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(peer_public)
    )


def pairwise_seed(
    private: bytes, peer_public: bytes, round_id: str, own: int, peer: int
) -> bytes:
    """The mask seed two neighbours share (either side derives the same)."""
    return _derive(agree(private, peer_public), b"pairwise mask", round_id, own, peer)


def self_mask_seed(secret: bytes, round_id: str, own: int) -> bytes:
    """The seed of a client's own mask, from its secret (the shared value)."""
    return _derive(secret, b"self mask", round_id, own, own)


def _share_key(private: bytes, peer_public: bytes, round_id: str, a: int, b: int):
    return AESGCM(
        _derive(agree(private, peer_public), b"share encryption", round_id, a, b)
    )


def _aad(round_id: str, src: int, dst: int) -> bytes:
    return b"|".join([_LABEL, round_id.encode(), str(src).encode(), str(dst).encode()])


def encrypt_shares(
    private: bytes, peer_public: bytes, round_id: str, src: int, dst: int, shares: bytes
) -> bytes:
    """Shares from `src` to `dst`, readable by `dst` only, bound to the round."""
    nonce = os.urandom(NONCE_BYTES)
    key = _share_key(private, peer_public, round_id, src, dst)
    return nonce + key.encrypt(nonce, shares, _aad(round_id, src, dst))


def decrypt_shares(
    private: bytes, peer_public: bytes, round_id: str, src: int, dst: int, blob: bytes
) -> bytes:
    """Open what `src` sent to `dst`; fails if tampered with or misrouted."""
    key = _share_key(private, peer_public, round_id, src, dst)
    nonce, body = blob[:NONCE_BYTES], blob[NONCE_BYTES:]
    return key.decrypt(nonce, body, _aad(round_id, src, dst))


def split_secret(secret: bytes, threshold: int, count: int) -> list[bytes]:
    """Shamir shares of `secret` (a multiple of 16 bytes) over GF(2**128), one
    polynomial per 16-byte block: any `threshold` of the `count` rebuild it.
    A share is its 2-byte index followed by one 16-byte value per block."""
    if not secret or len(secret) % 16:
        raise ValueError("secrets are shared in whole 16-byte blocks")
    if not 2 <= threshold <= count:
        raise ValueError(f"need 2 <= threshold ({threshold}) <= count ({count})")
    blocks = [
        Shamir.split(threshold, count, secret[i : i + 16], ssss=False)
        for i in range(0, len(secret), 16)
    ]
    return [
        index.to_bytes(2, "big") + b"".join(block[j][1] for block in blocks)
        for j, (index, _) in enumerate(blocks[0])
    ]


def join_shares(shares: list[bytes]) -> bytes:
    """The secret from at least `threshold` shares of `split_secret`."""
    n_blocks = (len(shares[0]) - 2) // 16
    points = [(int.from_bytes(s[:2], "big"), s[2:]) for s in shares]
    return b"".join(
        Shamir.combine(
            [(i, body[16 * b : 16 * (b + 1)]) for i, body in points], ssss=False
        )
        for b in range(n_blocks)
    )
