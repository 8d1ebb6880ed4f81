"""Trust primitives: canonical JSON, Merkle trees, the transparency log, checkpoints, the quote binding, quote parsing, the TEE client and its simulator."""
