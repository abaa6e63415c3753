"""The feature map: deterministic for a seed, landmarks for large widths, stored with the index."""

import numpy as np
import pytest
from tiny import tiny_model

from explorer.cli import main
from explorer.feature_map import (
    MAP_FILE,
    FeatureMap,
    MapError,
    MapParams,
    compute_map,
    load_map,
    place_by_landmarks,
    save_map,
    unit_rows,
)
from explorer.sae import random_sae
from explorer.sae_files import sae_fingerprint, save_sae

HOOK = "blocks.1.hook_resid_post"


def clustered(n: int, d: int = 16, clusters: int = 4, seed: int = 0) -> np.ndarray:
    """n rows around `clusters` random directions (cluster c = rows c, c + clusters, ...)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    return (centres[np.arange(n) % clusters] + 0.15 * rng.normal(size=(n, d))).astype(np.float32)


def test_same_seed_same_bytes_other_seed_other_map(tmp_path):
    W = clustered(120)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        (tmp_path / name).mkdir()
        save_map(tmp_path / name, compute_map(W, seed=seed, progress=False))
    a, b, c = ((tmp_path / n / MAP_FILE).read_bytes() for n in "abc")
    assert a == b and a != c
    fmap = load_map(tmp_path / "a")
    assert fmap.params == MapParams(0, "umap", 120) and fmap.x.dtype == np.float32


def test_landmarks_above_the_limit_keep_clusters_together():
    W = clustered(300)
    fmap = compute_map(W, seed=0, umap_max=100, progress=False)
    assert fmap.params.method == "umap-landmarks" and fmap.params.n_landmarks == 100
    xy = np.stack([fmap.x, fmap.y], 1)
    # Every feature sits nearer its own cluster's centre on the map than any other cluster's.
    centres = np.stack([xy[c::4].mean(0) for c in range(4)])
    nearest = np.linalg.norm(xy[:, None] - centres[None], axis=2).argmin(1)
    assert (nearest == np.arange(300) % 4).mean() > 0.95


def test_a_point_on_a_landmark_lands_on_it():
    L = unit_rows(np.eye(3, dtype=np.float32))
    xy = np.array([[0, 0], [10, 0], [0, 10]], np.float32)
    got = place_by_landmarks(L, L, xy, k=1)
    assert np.array_equal(got, xy)
    mid = place_by_landmarks(unit_rows(np.array([[1, 1, 0]], np.float32)), L, xy, k=2)
    np.testing.assert_allclose(mid, [[5, 0]], atol=1e-5)


def test_load_refuses_stale_or_damaged_maps(tmp_path):
    assert load_map(tmp_path) is None
    fmap = FeatureMap(np.zeros(5, np.float32), np.ones(5, np.float32), MapParams(0, "umap", 5), "abc" * 20)
    save_map(tmp_path, fmap)
    assert load_map(tmp_path, d_sae=5, sae_fingerprint="abc" * 20).d_sae == 5
    with pytest.raises(MapError, match="holds 5 points, but the index has 6"):
        load_map(tmp_path, d_sae=6)
    with pytest.raises(MapError, match="another SAE.*explorer map"):
        load_map(tmp_path, sae_fingerprint="def" * 20)
    (tmp_path / MAP_FILE).write_bytes(b"not a map")
    with pytest.raises(MapError, match="cannot be read"):
        load_map(tmp_path)


def test_map_command_stores_the_map_for_the_index_sae_only(tmp_path, capsys):
    from explorer.corpus import Windows
    from explorer.index import build_index

    lm = tiny_model()
    sae = random_sae(32, 40, architecture="topk", k=4, hook_name=HOOK, seed=2)
    save_sae(sae, tmp_path / "sae")
    tokens = np.random.default_rng(0).integers(0, 256, (6, 8)).astype(np.int32)
    index = build_index(lm, sae, Windows(tokens, np.arange(6), np.zeros(6, np.int64)), tmp_path / "ix",
                        sae_path_fingerprint=sae_fingerprint(tmp_path / "sae"), progress=False)
    main(["map", "--index", str(index), "--sae", str(tmp_path / "sae"), "--seed", "3"])
    assert "40 features, umap (seed 3)" in capsys.readouterr().out
    fmap = load_map(index, d_sae=40, sae_fingerprint=sae_fingerprint(tmp_path / "sae"))
    assert fmap.params.seed == 3 and fmap.sae_fingerprint == sae_fingerprint(tmp_path / "sae")
    build_index(lm, sae, Windows(tokens[:4], np.arange(4), np.zeros(4, np.int64)), index,
                sae_path_fingerprint=sae_fingerprint(tmp_path / "sae"), progress=False)
    assert np.array_equal(load_map(index).x, fmap.x)  # a rebuild for the same SAE keeps the map

    save_sae(random_sae(32, 40, hook_name=HOOK, seed=9), tmp_path / "other")
    with pytest.raises(SystemExit) as stop:
        main(["map", "--index", str(index), "--sae", str(tmp_path / "other")])
    assert stop.value.code == 2 and "was built for SAE" in capsys.readouterr().err


def test_shown_points_sample_every_density_range():
    from explorer.feature_map import density_grid, shown_points

    density = np.random.default_rng(0).random(1000) ** 4
    assert np.array_equal(shown_points(density, 1000), np.arange(1000))
    shown = shown_points(density, 100)
    assert len(shown) == 100 and np.array_equal(shown, np.unique(shown))
    assert shown[np.argmin(density[shown])] == np.argmin(density) and density[shown].max() == density.max()
    counts, _, _ = density_grid(np.array([0.0, 1, 1]), np.array([0.0, 0, 1]), bins=2)
    assert counts.tolist() == [[1, 1], [0, 1]] and counts.sum() == 3


def test_selection_reads_feature_ids_and_clicks():
    from ui.map_chart import selected_features

    assert selected_features(None) == ([], False)
    assert selected_features({"points": [{"customdata": 7}], "box": [], "lasso": []}) == ([7], True)
    box = {"points": [{"customdata": [9]}, {"customdata": 3}, {"z": 1}], "box": [{"x": [0, 1]}], "lasso": []}
    assert selected_features(box) == ([3, 9], False)


@pytest.mark.demo
def test_map_page_says_how_to_make_a_map_then_draws_it(tmp_path, monkeypatch):
    import json

    from test_app import ROOT, app, no_exception, texts

    import explorer.feature_map as fm

    monkeypatch.setattr(fm, "MAP_FILE", str(tmp_path / "absent.safetensors"))  # an absolute name wins over the folder
    at = app("pages/map.py")
    no_exception(at)
    assert at.title[0].value == "Feature map" and "explorer map --index" in texts(at.info)

    manifest = json.loads((ROOT / "data/demo/index/manifest.json").read_text())
    d = manifest["d_sae"]
    xy = np.random.default_rng(0).normal(size=(2, d)).astype(np.float32)
    monkeypatch.setattr(fm, "MAP_FILE", str(tmp_path / "map.safetensors"))
    save_map(tmp_path, FeatureMap(xy[0], xy[1], MapParams(0, "umap", d), manifest["sae_fingerprint"]))
    at = app("pages/map.py")
    no_exception(at)
    assert f"{d:,} features (UMAP of every decoder direction" in texts(at.caption)
    assert not at.info and not at.error
