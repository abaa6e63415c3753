"""Nearest decoder rows by cosine, approximately, for SAEs too wide for the exact search on CPU.

The index keeps each feature's N_NEIGHBOURS nearest other features by decoder cosine. The
exact search (explorer.index.finalise) costs d_sae^2 * d_model multiply-adds: about a minute
on 2 CPU cores at 65,536 features, but hours at 1M. On CPU above EXACT_MAX_CPU features the
index uses `approximate_neighbours`: faiss-cpu's IndexIVFFlat, an inverted-file index over the
normalised decoder rows (inner product = cosine) whose coarse centroids come from spherical
k-means; each query scans the `nprobe` lists nearest to it, computing exact (uncompressed)
cosines. Its candidates are ranked as the exact search ranks them, ties to the lower id. `recall` measures it
against `exact_neighbours_of` on a sample.

Reproducible: k-means starts from a fixed seed on a fixed sample of rows, and every step
after it (assignment, the list scan per query, the ranking) is a deterministic function of
the weights, so the same weights give the same neighbours on one machine and faiss version
(checked in tests/test_reader_width.py). The settings and faiss version go into the manifest.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

EXACT_MAX_CPU = 65_536  # widest SAE searched exactly on CPU (on a GPU: always exact)


@dataclass(frozen=True)
class IVFSettings:
    nlist: int  # k-means centroids = inverted lists
    nprobe: int  # lists scanned per query
    train_rows: int  # rows k-means trains on (a fixed random sample)
    niter: int  # k-means iterations
    candidates: int  # neighbours asked of faiss, then ranked with ties to the lower id
    seed: int = 1234


def ivf_settings(n: int, k: int) -> IVFSettings:
    """The settings used at width `n`: sqrt(n)-scaled lists (faiss' usual 4 * sqrt(n)), 16 probed,
    k-means on 40 rows per list (faiss warns below 39)."""
    nlist = max(1, min(n // 40, int(4 * math.sqrt(n))))
    return IVFSettings(nlist=nlist, nprobe=min(nlist, 16), train_rows=min(n, 40 * nlist), niter=10,
                       candidates=min(n, 2 * k + 1))


def normalised(W_dec: Tensor) -> Tensor:
    """Unit decoder rows, float32 (zero rows stay zero)."""
    W = W_dec.detach().float()
    return W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)


def approximate_neighbours(W: Tensor, k: int, settings: IVFSettings | None = None,
                           batch: int = 4096) -> tuple[np.ndarray, np.ndarray, dict]:
    """(ids, cosines, method) of the k nearest other rows of unit rows `W` (n, d) by cosine,
    through faiss IndexIVFFlat; -1 / 0 pad rows that find fewer than k. `method` is what the
    manifest records."""
    import faiss  # heavy, and only needed here

    n, dim = W.shape
    s = settings or ivf_settings(n, k)
    X = np.ascontiguousarray(W.cpu().numpy(), np.float32)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, s.nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.spherical, index.cp.niter, index.cp.seed = True, s.niter, s.seed
    sample = np.sort(np.random.default_rng(s.seed).choice(n, s.train_rows, replace=False))
    index.train(X[sample])
    index.add(X)
    index.nprobe = s.nprobe
    ids = np.full((n, k), -1, np.int32)
    cos = np.zeros((n, k), np.float32)
    for a in range(0, n, batch):
        sims, cand = index.search(X[a:a + batch], s.candidates)  # (rows, candidates), -1 when short
        ids[a:a + batch], cos[a:a + batch] = _best(np.arange(a, min(a + batch, n)), cand, sims, k)
    method = {"method": "faiss IndexIVFFlat", "faiss": faiss.__version__,
              **dataclasses.asdict(s)}
    return ids, cos, method


def _best(rows: np.ndarray, cand: np.ndarray, cos: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of each row's candidates by cosine, ties to the lower id, as the exact search
    ranks them; the row itself and faiss' -1 padding are dropped (-1 / 0 pad the result).
    IndexIVFFlat's inner products are exact (no compression), so they are the cosines."""
    valid = (cand >= 0) & (cand != rows[:, None])
    key_cos = np.where(valid, cos, -np.inf)
    order = np.lexsort((np.where(valid, cand, np.iinfo(np.int64).max), -key_cos.astype(np.float64)), axis=1)[:, :k]
    cand, cos = np.take_along_axis(cand, order, 1), np.take_along_axis(key_cos, order, 1)
    found = np.isfinite(cos)
    return np.where(found, cand, -1).astype(np.int32), np.where(found, cos, 0).astype(np.float32)


@torch.inference_mode()
def exact_neighbours_of(W: Tensor, rows: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """The exact k nearest other rows (ids) of each of `rows`, for measuring recall."""
    out = []
    for a in range(0, len(rows), chunk):
        r = torch.from_numpy(np.asarray(rows[a:a + chunk], np.int64))
        sims = W[r] @ W.T  # (chunk, n)
        sims[torch.arange(len(r)), r] = -math.inf  # not its own neighbour
        out.append(sims.topk(k, dim=1).indices.numpy())
    return np.concatenate(out)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact neighbours that `found` (same rows) holds: recall@k."""
    hits = sum(len(np.intersect1d(f[f >= 0], e)) for f, e in zip(found, exact))
    return hits / exact.size
