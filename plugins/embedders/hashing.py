"""``hashing``: a deterministic bag-of-character-n-grams embedder with no model at all.

It exists for tests and for trying the pipeline without a model download: equal strings get
equal vectors and strings sharing many n-grams get similar ones, but it knows no meaning, so a
model trained on its vectors learns nothing about language. Do not use it for real training.
"""

from __future__ import annotations

import hashlib

import numpy as np

from tributary_core.embedder import Embedder

#: n-gram lengths hashed into the vector.
NGRAMS = (2, 3, 4)


class HashingEmbedder(Embedder):
    name = "hashing"
    default_model = "char-ngram-blake2b-v1"
    description = "deterministic n-gram hashing, for tests only (carries no meaning)"
    batch_size = 1024
    reduction = "none"  # builds exactly D values itself
    cacheable = False

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            padded = f" {text.lower()} "
            for n in NGRAMS:
                for i in range(max(len(padded) - n + 1, 1)):
                    digest = hashlib.blake2b(padded[i : i + n].encode(), digest_size=8).digest()
                    h = int.from_bytes(digest, "little")
                    sign = 1.0 if (h >> 63) & 1 else -1.0
                    out[row, h % self.dimension] += sign
            norm = np.linalg.norm(out[row])
            if norm > 0:
                out[row] /= norm
        return out
