"""explorer.sae against the real sae_lens, through fixtures it wrote (sae_lens is not needed here).

How the fixtures in tests/fixtures/saelens/ were made (sae-lens 6.54.12, torch 2.13.0+cpu,
recorded in manifest.json):

    python3 -m venv /tmp/saelens-venv
    /tmp/saelens-venv/bin/pip install torch==2.13.0
    /tmp/saelens-venv/bin/pip install sae-lens
    /tmp/saelens-venv/bin/python tests/fixtures/make_saelens_fixtures.py

Each case folder holds an SAE (d_in 8, d_sae 16) saved by sae_lens's own save_model
(standard, topk, topk_rescale, jumprelu, gated, layer_norm, constant_norm_rescale,
topk_layer_norm, no_b_dec), a hand-written pre-6.0 folder (legacy_topk), or one written
by explorer.save_sae (explorer_written); x.safetensors holds the input and
outputs.safetensors sae_lens's encode/decode after SAE.load_from_disk. The script also
asserts, for every case, that sae_lens loads explorer.save_sae's files and gives the same
outputs (atol 1e-5); its run printed OK for all 11 cases.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from explorer.sae_files import load_sae, save_sae

FIXTURES = Path(__file__).parent / "fixtures" / "saelens"
CASES = json.loads((FIXTURES / "manifest.json").read_text())["cases"]


def load_case(case: str):
    folder = FIXTURES / case
    return load_sae(folder), load_file(folder / "x.safetensors")["x"], load_file(folder / "outputs.safetensors")


def test_manifest_lists_every_case():
    folders = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
    assert folders == sorted(CASES) and len(CASES) == 11


@pytest.mark.parametrize("case", CASES)
def test_encode_decode_match_saelens(case):
    sae, x, expected = load_case(case)
    with torch.no_grad():
        f = sae.encode(x)
        torch.testing.assert_close(f, expected["encode"], atol=1e-5, rtol=0)
        # decode from sae_lens's own features, so a decode error cannot hide behind encode
        torch.testing.assert_close(sae.decode(expected["encode"], like=x), expected["decode"], atol=1e-5, rtol=0)
        torch.testing.assert_close(sae(x), expected["decode"], atol=1e-5, rtol=0)
    assert sae.cfg.hook_name == "blocks.1.hook_resid_post" and sae.cfg.model_name == "tiny-model"


@pytest.mark.parametrize("case", CASES)
def test_rewritten_by_explorer_still_matches(tmp_path, case):
    sae, x, expected = load_case(case)
    save_sae(sae, tmp_path / case)
    again = load_sae(tmp_path / case)
    assert again.cfg == sae.cfg
    with torch.no_grad():
        torch.testing.assert_close(again(x), expected["decode"], atol=1e-5, rtol=0)


def test_saelens_config_fields_are_read():
    assert load_case("topk_rescale")[0].cfg.rescale_acts_by_decoder_norm is True
    assert load_case("topk")[0].cfg.k == 4
    assert load_case("no_b_dec")[0].cfg.apply_b_dec_to_input is False
    assert load_case("constant_norm_rescale")[0].cfg.normalize_activations == "constant_norm_rescale"
    legacy = load_case("legacy_topk")[0].cfg
    assert (legacy.architecture, legacy.k, legacy.normalize_activations) == ("topk", 4, "none")
    saelens_metadata = load_case("standard")[0].cfg.metadata
    assert saelens_metadata["sae_lens_version"] == "6.54.12"
