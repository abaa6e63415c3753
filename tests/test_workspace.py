import numpy as np
import pytest
from tiny import tiny_model

from explorer.workspace import WorkspaceError, check_inside_roots, open_sae


def test_gemma_scope_npz_opens_on_the_given_hook(tmp_path):
    lm = tiny_model()
    rng = np.random.default_rng(0)
    d, m = lm.d_model, 64
    params = {"w_enc": rng.normal(size=(d, m)), "b_enc": np.zeros(m), "w_dec": rng.normal(size=(m, d)),
              "b_dec": np.zeros(d), "threshold": np.full(m, 0.1)}
    np.savez(tmp_path / "params.npz", **{k: v.astype(np.float32) for k, v in params.items()})
    sae, source, fingerprint = open_sae(lm, str(tmp_path / "params.npz"), hook="blocks.1.hook_resid_post")
    assert sae.cfg.architecture == "jumprelu" and sae.cfg.hook_name == "blocks.1.hook_resid_post"
    assert source.endswith("params.npz") and fingerprint
    with pytest.raises(WorkspaceError, match="--hook"):
        open_sae(lm, str(tmp_path / "params.npz"))


def test_sae_of_another_width_is_refused(tmp_path):
    from explorer.sae import random_sae
    from explorer.sae_files import save_sae

    save_sae(random_sae(48, 96, hook_name="blocks.1.hook_resid_post"), tmp_path / "sae")
    with pytest.raises(ValueError, match="48"):
        open_sae(tiny_model(), str(tmp_path / "sae"))


def test_only_paths_under_the_roots_are_opened(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "root-not"  # a shared prefix is not containment
    (root / "sae").mkdir(parents=True)
    outside.mkdir()
    (root / "out").symlink_to(outside)
    assert check_inside_roots("SAE", str(root / "sae"), [root]) == root / "sae"
    assert check_inside_roots("SAE", str(root / "not-yet"), [root]) == root / "not-yet"  # the loader says it is missing
    assert check_inside_roots("Index", str(root), [root]) == root
    for path in ("/", "/etc", str(outside), str(root / "out"), str(root / "sae" / ".." / ".."), str(root / "out" / "x")):
        with pytest.raises(WorkspaceError, match=r"is outside the folders this app opens.*EXPLORER_ROOTS"):
            check_inside_roots("SAE", path, [root])
    with pytest.raises(WorkspaceError, match="cannot be resolved"):
        check_inside_roots("SAE", str(root / "a\0b"), [root])  # a NUL byte
