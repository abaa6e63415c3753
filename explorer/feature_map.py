"""A 2D map of every feature of an SAE, computed once and stored with its index.

`compute_map(W_dec, seed)` lays the decoder directions out in the plane: features whose
directions point alike land close together. Up to UMAP_MAX features this is UMAP (umap-learn)
of the unit-normalised decoder rows, cosine metric, one thread and a fixed `random_state`, so
a seed gives the same bytes every time. Above UMAP_MAX, UMAP on all rows takes too long on a
CPU (see bench/bench_map.py), so the map is UMAP of a seeded random sample of UMAP_MAX
"landmark" features, and every other feature is placed at the similarity-weighted mean of its
N_PLACE most similar landmarks (by cosine): the same neighbourhoods, at the cost of a single
pass of matrix products. `FeatureMap.method` says which was used.

`save_map(index_dir, fmap)` writes MAP_FILE into the index folder (atomically), with the
parameters and the fingerprint of the SAE it was made from; `load_map(index_dir)` reads it
back, None when there is none, MapError when it is damaged or belongs to another SAE. A
rebuild of the index for the same SAE keeps the map (`carry_over_map`).

What a page draws: `shown_points` (every feature up to MAX_POINTS, else a sample stratified by
density) and `density_grid` (a 2D histogram of all of them, for the sampled case).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from explorer.files import replacing

log = logging.getLogger(__name__)

MAP_FILE = "feature_map.safetensors"
MAP_COMMAND = "explorer map --index INDEX --sae SAE"
UMAP_MAX = 20_000  # features laid out by UMAP itself; above this, landmarks (see the module docstring)
N_PLACE = 8  # landmarks a non-landmark feature is placed between
N_NEIGHBORS, MIN_DIST = 15, 0.1  # umap-learn's defaults, written down so the file records them


class MapError(ValueError):
    """A feature map cannot be made or read; the message names the fix."""


@dataclass(frozen=True)
class MapParams:
    seed: int
    method: str  # "umap" (every feature) or "umap-landmarks" (a sample, the rest placed by similarity)
    n_landmarks: int  # features UMAP saw: d_sae for "umap"
    n_neighbors: int = N_NEIGHBORS
    min_dist: float = MIN_DIST
    metric: str = "cosine"


@dataclass(frozen=True)
class FeatureMap:
    x: np.ndarray  # (d_sae,) float32
    y: np.ndarray  # (d_sae,) float32
    params: MapParams
    sae_fingerprint: str = ""

    @property
    def d_sae(self) -> int:
        return len(self.x)


def unit_rows(W_dec: np.ndarray | torch.Tensor) -> np.ndarray:
    """(d_sae, d_in) float32 rows of length 1 (zero rows stay zero)."""
    W = torch.as_tensor(W_dec).detach().float().cpu()
    return (W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)).numpy()


def _umap(points: np.ndarray, seed: int) -> np.ndarray:
    import umap  # slow to import (numba), so only here

    n_neighbors = max(2, min(N_NEIGHBORS, len(points) - 1))
    reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=MIN_DIST, metric="cosine", random_state=seed,
                        n_jobs=1, init="spectral" if len(points) > n_neighbors + 1 else "random")
    return reducer.fit_transform(points).astype(np.float32)  # (n, 2)


def place_by_landmarks(points: np.ndarray, landmarks: np.ndarray, landmark_xy: np.ndarray,
                       k: int = N_PLACE, chunk: int = 4096, progress: bool = False) -> np.ndarray:
    """(n, 2) positions: each of `points` (unit rows) at the mean of the positions of its `k` most
    cosine-similar `landmarks`, weighted by that similarity (clipped at a small positive floor)."""
    L = torch.from_numpy(landmarks)
    L_xy = torch.from_numpy(landmark_xy)
    out = np.zeros((len(points), 2), np.float32)
    k = min(k, len(landmarks))
    for a in tqdm(range(0, len(points), chunk), desc="placing", unit="chunk", disable=not progress):
        sims = torch.from_numpy(points[a:a + chunk]) @ L.T  # (chunk, n_landmarks)
        top, idx = sims.topk(k, dim=1)  # ties do not matter: equal similarities, equal weights
        w = top.clamp_min(1e-3)
        out[a:a + chunk] = ((L_xy[idx] * w[..., None]).sum(1) / w.sum(1, keepdim=True)).numpy()
    return out


def compute_map(W_dec: np.ndarray | torch.Tensor, seed: int = 0, umap_max: int = UMAP_MAX,
                progress: bool = True) -> FeatureMap:
    """The map of the decoder rows `W_dec` (d_sae, d_in): deterministic for a seed."""
    points = unit_rows(W_dec)
    d = len(points)
    if d < 3:
        raise MapError(f"An SAE of {d} features is too small to map; a map needs at least 3.")
    if d <= umap_max:
        log.info("UMAP of %d decoder directions", d)
        xy = _umap(points, seed)
        return FeatureMap(xy[:, 0].copy(), xy[:, 1].copy(), MapParams(seed, "umap", d))
    chosen = np.sort(np.random.default_rng(seed).choice(d, size=umap_max, replace=False))
    log.info("UMAP of %d landmark directions of %d, the rest placed between them", umap_max, d)
    landmark_xy = _umap(points[chosen], seed)
    xy = place_by_landmarks(points, points[chosen], landmark_xy, progress=progress)
    xy[chosen] = landmark_xy  # landmarks keep their own place
    return FeatureMap(xy[:, 0].copy(), xy[:, 1].copy(), MapParams(seed, "umap-landmarks", umap_max))


def map_file(index_dir: str | Path) -> Path:
    return Path(index_dir).expanduser() / MAP_FILE


def save_map(index_dir: str | Path, fmap: FeatureMap) -> Path:
    """Write the map into the index folder (atomically); returns the file."""
    from safetensors.numpy import save

    file = map_file(index_dir)
    # One metadata key: safetensors writes several in hash order, and the bytes must not vary.
    meta = {"map": json.dumps({"params": asdict(fmap.params), "sae_fingerprint": fmap.sae_fingerprint},
                              sort_keys=True)}
    data = save({"x": np.ascontiguousarray(fmap.x, np.float32), "y": np.ascontiguousarray(fmap.y, np.float32)},
                metadata=meta)
    with replacing(file) as tmp:
        tmp.write_bytes(data)
    return file


def carry_over_map(old_dir: Path, new_dir: Path, sae_fingerprint: str) -> None:
    """Copy the map of the index being replaced into its rebuild when both are of the same SAE:
    the map depends on the SAE's weights only. Any other map is left behind with the old folder."""
    try:
        fmap = load_map(old_dir, sae_fingerprint=sae_fingerprint)
    except MapError:
        return
    if fmap is not None and fmap.sae_fingerprint == sae_fingerprint:
        save_map(new_dir, fmap)


def load_map(index_dir: str | Path, d_sae: int | None = None, sae_fingerprint: str | None = None) -> FeatureMap | None:
    """The map stored in the index folder, or None if it has none. MapError when the file is
    damaged, or was made for another width or SAE (then it says to make it again)."""
    from safetensors import safe_open

    file = map_file(index_dir)
    if not file.is_file():
        return None
    again = f"Fix: make it again with `explorer map --index {Path(index_dir)} --sae SAE`"
    try:
        with safe_open(str(file), framework="np") as fh:
            meta = json.loads((fh.metadata() or {})["map"])
            x, y = fh.get_tensor("x"), fh.get_tensor("y")
        params = MapParams(**meta["params"])
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        raise MapError(f"The feature map {file} cannot be read ({err}). {again}") from None
    if x.shape != y.shape or x.ndim != 1 or (d_sae is not None and len(x) != d_sae):
        raise MapError(f"The feature map {file} holds {len(x)} points, but the index has {d_sae} features. {again}")
    found = meta.get("sae_fingerprint", "")
    if sae_fingerprint and found and found != sae_fingerprint:
        raise MapError(f"The feature map {file} was made from another SAE ({found[:16]}, the index's is "
                       f"{sae_fingerprint[:16]}). {again}")
    return FeatureMap(x.astype(np.float32), y.astype(np.float32), params, found)


# --------------------------------------------------------------------------- what a page draws

MAX_POINTS = 20_000  # points a map page draws; above, a sample (and a density grid of all)


def shown_points(density: np.ndarray, max_points: int = MAX_POINTS) -> np.ndarray:
    """Sorted ids of the features to draw: all of them up to `max_points`, else `max_points` spread
    evenly over the features ranked by density (a stratified sample: rare and dense features keep
    their share). Deterministic."""
    d = len(density)
    if d <= max_points:
        return np.arange(d)
    order = np.lexsort((np.arange(d), density))  # density asc, ties by id
    return np.sort(order[np.linspace(0, d - 1, max_points).round().astype(np.int64)])


def density_grid(x: np.ndarray, y: np.ndarray, bins: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(counts (bins, bins) indexed [y, x], x centres, y centres): how many features fall in each cell."""
    counts, xe, ye = np.histogram2d(x, y, bins=bins)
    return counts.T, (xe[:-1] + xe[1:]) / 2, (ye[:-1] + ye[1:]) / 2
