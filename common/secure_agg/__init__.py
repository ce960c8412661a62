"""Our secure aggregation: SecAgg+'s protocol (pairwise masks over a neighbour
graph, Shamir-shared secrets, a self mask, a reconstruction threshold) with
uint32 fixed point, AES-CTR mask expansion and chunked vectors.

Plain numpy and `cryptography` (plus Flower's Shamir helper); the Flower mod and
workflow that carry it are `client.secure_agg_mod` and
`server.secure_agg_workflow`.

- `quantize`: float <-> uint32 (or uint16) fixed point, stochastic rounding,
  headroom for the number of clients, sums mod 2**32 (2**16).
- `prg`: masks expanded from 32-byte seeds with AES-256-CTR, in uint32 or
  uint16 lanes, any slice of a vector on its own (seekable), in bounded chunks.
- `keys`: X25519 key agreement, seed derivation, Shamir shares, AES-GCM
  encryption of the shares between neighbours.
- `masking`: a client's masks, and the server's removal of masks.
- `protocol`: stage names, record keys, the neighbour graph, the vector layout.
"""
