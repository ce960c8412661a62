"""A site's signed claim of its example count: what it signs, how it is checked.

Under a roster (run config `roster-file`, `server.roster`) every reply that
declares an example count (the properties reply's `n_train`, a train reply's
`num_examples`) carries a config record `roster` with the site's name on the
roster and an ECDSA signature, by the site's node-auth key, over (run id,
server round, node id, declared count, site name). The node id and round are
signed so that no other node, and no other round, can reuse it.
"""

from __future__ import annotations

import json

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from common.privacy import pki

SITE_NAME = pki._SITE_NAME  # the names `pki add-site` accepts

RECORD = "roster"  # the reply's config record
SITE = "site"
SIGNATURE = "signature"
MAX_SIGNATURE_BYTES = 160  # DER ECDSA: P-521 is at most 139 bytes
_DOMAIN = "fedbigbigan-roster-claim/1"  # never valid as any other signed text


def message_round(group_id: str) -> int:
    """The server round a message belongs to: its group id (both secure
    protocols set it to the round); 0 for messages outside a round (properties)."""
    try:
        return int(group_id)
    except (TypeError, ValueError):
        return 0


def payload(run_id: int, rnd: int, node_id: int, n: object, site: str) -> bytes:
    """The signed bytes: unambiguous (JSON list), the count as it was sent."""
    return json.dumps(
        [_DOMAIN, int(run_id), int(rnd), int(node_id), n, site],
        separators=(",", ":"),
    ).encode()


def _hash(curve: ec.EllipticCurve) -> hashes.HashAlgorithm:
    # the hash that matches the curve's strength (P-384, the default, SHA-384)
    sizes = {256: hashes.SHA256(), 384: hashes.SHA384(), 521: hashes.SHA512()}
    return sizes.get(curve.key_size, hashes.SHA256())


def sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """A DER ECDSA signature of `data`."""
    return key.sign(data, ec.ECDSA(_hash(key.curve)))


def verify(key: ec.EllipticCurvePublicKey, signature: object, data: bytes) -> bool:
    """Whether `signature` is `key`'s signature of `data` (anything else: False)."""
    if not isinstance(signature, bytes) or len(signature) > MAX_SIGNATURE_BYTES:
        return False
    try:
        key.verify(signature, data, ec.ECDSA(_hash(key.curve)))
    except InvalidSignature:
        return False
    return True
