"""Activation cache and SAE trainer, on a tiny random llama (d_model 32) and a few hundred tokens."""

import argparse
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from tiny import tiny_model

from explorer.activation_cache import MANIFEST, ActivationCache, CacheError, cache_activations, cache_hooks
from explorer.cli import add_train_config_args, build_parser, field_docs
from explorer.commands import train_config
from explorer.corpus import Windows
from explorer.hooks import blocks, run_to_hook
from explorer.sae import random_sae
from explorer.sae_files import load_sae
from explorer.sae_losses import relu_losses, topk_losses
from explorer.settings import DEMO_HOOK
from explorer.train import TrainConfig, TrainError, train_sae

HOOK = "blocks.1.hook_resid_post"
N_WINDOWS, CONTEXT = 12, 33  # 12 * 32 = 384 tokens once BOS is dropped
BOS = 257


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm():
    return tiny_model()


@pytest.fixture(scope="module")
def windows():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, size=(N_WINDOWS, CONTEXT)).astype(np.int32)
    tokens[:, 0] = BOS
    return Windows(tokens, np.arange(N_WINDOWS), np.zeros(N_WINDOWS, dtype=np.int64))


@pytest.fixture(scope="module")
def cache(lm, windows, tmp_path_factory):
    # 100-token shards hold 3 windows each: 4 shards, read 2 at a time.
    path = tmp_path_factory.mktemp("cache")
    cache_activations(lm, HOOK, windows, path, batch_size=5, shard_tokens=100, progress=False)
    return ActivationCache(path, buffer_shards=2)


def _all_shards(cache):
    return torch.cat([cache.load_shard(i) for i in range(len(cache.shards))])


def _sorted_rows(t):
    return t[np.lexsort(t.numpy().T[::-1])]


def _cfg(out_dir, **kw):
    base = {"out_dir": str(out_dir), "d_sae": 64, "k": 4, "batch_size": 64, "epochs": 6, "checkpoint_every": 5,
                "lr_warmup_steps": 2, "b_dec_samples": 256}
    return TrainConfig(**{**base, **kw})


def _fvu(sae, x):
    with torch.no_grad():
        return ((x - sae(x)).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()


# ---------------------------------------------------------------------------------------------
# Activation cache


def test_cache_holds_the_hook_activations_without_bos(lm, windows, cache):
    assert cache.n_tokens == N_WINDOWS * (CONTEXT - 1)
    assert (cache.d_in, cache.hook_name, len(cache.shards)) == (32, HOOK, 4)
    assert cache.manifest["prepend_bos"] is True
    expected = run_to_hook(lm.model, HOOK, torch.from_numpy(windows.tokens.astype(np.int64)))[:, 1:]
    # Batches of 5 there, one of 12 here: float32 sums may differ in the last bit before rounding.
    torch.testing.assert_close(_all_shards(cache), expected.reshape(-1, 32).half(), rtol=1e-3, atol=1e-4)


def test_cache_resumes_after_an_interruption(lm, windows, cache, tmp_path):
    path = tmp_path / "cache"
    shutil.copytree(cache.path, path)
    # Interrupted before the last shard was recorded: its file and manifest entry are gone.
    manifest = json.loads((path / MANIFEST).read_text())
    last = manifest["shards"].pop()
    (path / last["file"]).unlink()
    manifest["complete"] = False
    (path / MANIFEST).write_text(json.dumps(manifest))
    # A shard the manifest lists but whose file was lost is recomputed too.
    (path / manifest["shards"][0]["file"]).unlink()
    with pytest.raises(CacheError, match="incomplete"):
        ActivationCache(path)

    resumed = cache_activations(lm, HOOK, windows, path, batch_size=5, shard_tokens=100, progress=False)
    assert resumed.manifest == cache.manifest
    assert torch.equal(_all_shards(resumed), _all_shards(cache))


def test_cache_refuses_other_windows(lm, windows, cache, tmp_path):
    path = tmp_path / "cache"
    shutil.copytree(cache.path, path)
    with pytest.raises(CacheError, match="tokens_sha256"):
        cache_activations(lm, HOOK, windows[:6], path, shard_tokens=100, progress=False)


def test_batches_cover_every_token_once_per_epoch(cache):
    everything = _all_shards(cache).float()
    key = _sorted_rows
    epoch0 = list(cache.batches(50, seed=1, epoch=0))
    assert [len(b) for b in epoch0] == [50] * 7 + [34]
    assert all(b.dtype == torch.float32 for b in epoch0)
    assert torch.equal(key(torch.cat(epoch0)), key(everything))
    epoch1 = torch.cat(list(cache.batches(50, seed=1, epoch=1)))
    assert torch.equal(key(epoch1), key(everything))
    assert not torch.equal(epoch1, torch.cat(epoch0))  # reshuffled
    # Resuming mid-epoch gives the same batches as skipping them.
    later = list(cache.batches(50, seed=1, epoch=0, start=5))
    assert all(torch.equal(a, b) for a, b in zip(later, epoch0[5:], strict=True))
    assert len(list(cache.batches(50, seed=1, drop_last=True))) == 7


class _Calls:
    """Counts the calls of a module's forward while in a with block."""

    def __init__(self, module):
        self.module, self.n = module, 0

    def __enter__(self):
        self.handle = self.module.register_forward_pre_hook(lambda *_: setattr(self, "n", self.n + 1))
        return self

    def __exit__(self, *exc):
        self.handle.remove()


MULTI = ["blocks.0.attn.hook_z", HOOK, "blocks.2.hook_mlp_out"]


def test_several_hooks_cache_from_one_forward_per_batch_as_one_hook_each(lm, windows, cache, tmp_path):
    folders = {hook: tmp_path / hook for hook in MULTI}
    with _Calls(lm.model) as calls, _Calls(blocks(lm.model)[3]) as last_layer:
        caches = cache_hooks(lm, folders, windows, batch_size=5, shard_tokens=100, progress=False)
    assert calls.n == 4 * 1  # 4 shards of 3 windows: one batch (of 5) each, one forward for all 3 hooks
    assert last_layer.n == 0  # stopped after the deepest hook
    for hook in MULTI:
        single = cache.path if hook == HOOK else cache_activations(lm, hook, windows, tmp_path / "one" / hook,
                                                                     batch_size=5, shard_tokens=100,
                                                                     progress=False).path
        assert sorted(p.name for p in single.iterdir()) == sorted(p.name for p in folders[hook].iterdir())
        for file in single.iterdir():
            assert file.read_bytes() == (folders[hook] / file.name).read_bytes(), (hook, file.name)
        assert caches[hook].hook_name == hook


def test_several_hooks_resume_each_on_its_own(lm, windows, cache, tmp_path):
    deep, shallow = tmp_path / "deep", tmp_path / "shallow"
    cache_hooks(lm, {"blocks.2.hook_mlp_out": deep}, windows, batch_size=5, shard_tokens=100, progress=False)
    shutil.copytree(cache.path, shallow)
    manifest = json.loads((shallow / MANIFEST).read_text())
    lost = manifest["shards"].pop(1)
    (shallow / lost["file"]).unlink()
    manifest["complete"] = False
    (shallow / MANIFEST).write_text(json.dumps(manifest))
    # A whole shard file the manifest does not list yet (written just before an interruption) is kept.
    manifest["shards"].pop(2)
    (shallow / MANIFEST).write_text(json.dumps(manifest))
    with _Calls(lm.model) as calls, _Calls(blocks(lm.model)[2]) as layer2:
        cache_hooks(lm, {HOOK: shallow, "blocks.2.hook_mlp_out": deep}, windows, batch_size=5, shard_tokens=100,
                    progress=False)
    assert calls.n == 1 and layer2.n == 0  # only the lost shard, and only as far as the hook lacking it
    assert (shallow / MANIFEST).read_bytes() == (cache.path / MANIFEST).read_bytes()
    assert torch.equal(_all_shards(ActivationCache(shallow)), _all_shards(cache))


def test_a_new_cache_drops_shard_files_no_manifest_vouches_for(lm, windows, cache, tmp_path):
    path = tmp_path / "cache"
    shutil.copytree(cache.path, path)
    (path / MANIFEST).unlink()  # the files could be of any model, hook or windows
    other = cache_activations(lm, "blocks.0.hook_resid_post", windows, path, batch_size=5, shard_tokens=100,
                              progress=False)
    assert not torch.equal(_all_shards(other), _all_shards(cache))
    expected = run_to_hook(lm.model, "blocks.0.hook_resid_post", torch.from_numpy(windows.tokens.astype(np.int64)))
    torch.testing.assert_close(_all_shards(other), expected[:, 1:].reshape(-1, 32).half(), rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Losses


def _dense_topk_fvu(sae, x, k):
    """Reference: the dense SAELens-style forward with plain autograd."""
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    top = pre.topk(k, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    x_hat = f @ sae.W_dec + sae.b_dec
    return (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()


def test_sparse_backward_matches_dense_autograd():
    torch.manual_seed(0)
    sae = random_sae(16, 48, k=5)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    x = torch.randn(40, 16)
    none_dead = torch.zeros(48, dtype=torch.bool)
    topk_losses(sae, x, 5, none_dead, k_aux=8).fvu.backward()
    sparse = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    _dense_topk_fvu(sae, x, 5).backward()
    for name, p in sae.named_parameters():
        torch.testing.assert_close(sparse[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_auxk_is_zero_without_dead_latents_and_trains_dead_encoders():
    torch.manual_seed(0)
    sae = random_sae(16, 48, k=5)
    x = torch.randn(40, 16)
    none = topk_losses(sae, x, 5, torch.zeros(48, dtype=torch.bool), k_aux=8)
    assert none.auxk.item() == 0.0
    dead = torch.zeros(48, dtype=torch.bool)
    dead[24:] = True
    some = topk_losses(sae, x, 5, dead, k_aux=8)
    assert some.auxk.item() > 0
    torch.testing.assert_close(some.fvu, none.fvu)
    some.auxk.backward()
    assert sae.W_enc.grad[:, 24:].abs().sum() > 0  # the dead latents' encoders are pulled
    assert sae.W_enc.grad[:, :24].abs().sum() == 0
    assert int(some.fired.sum()) == int((some.l0 * 40).round())


@pytest.mark.parametrize("architecture", ["topk", "relu"])
def test_slices_with_the_whole_batch_sum_to_the_batch_losses_and_gradients(architecture):
    """What data parallelism rests on: ranks' slices, each with the whole batch's denominators."""
    torch.manual_seed(0)
    sae = random_sae(16, 48, k=5)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
    x = torch.randn(40, 16) * 3 + 1
    dead = torch.arange(48) % 3 == 0

    def run(part, whole=None):
        sae.zero_grad()
        if architecture == "topk":
            losses = topk_losses(sae, part, 5, dead, k_aux=8, whole=whole)
            loss = losses.fvu + 0.5 * losses.auxk
        else:
            losses = relu_losses(sae, part, whole=whole)
            loss = losses.fvu + 0.1 * losses.l1
        loss.backward()
        return loss.detach(), losses.fired, [p.grad.clone() for p in sae.parameters()]

    loss, fired, grads = run(x)
    slices = [run(x[lo:hi], x) for lo, hi in ((0, 13), (13, 40))]
    torch.testing.assert_close(slices[0][0] + slices[1][0], loss)
    assert torch.equal(slices[0][1] + slices[1][1], fired)
    for g, a, b in zip(grads, slices[0][2], slices[1][2], strict=True):
        torch.testing.assert_close(a + b, g, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(slices[0][2][0], grads[0])  # one slice alone is not the batch


def test_relu_losses_give_an_l1_that_ignores_scale():
    sae = random_sae(16, 48, architecture="standard")
    x = torch.randn(40, 16)
    small, big = relu_losses(sae, x), relu_losses(sae, 10 * x)
    torch.testing.assert_close(small.l1, big.l1)
    torch.testing.assert_close(small.fvu, big.fvu)


# ---------------------------------------------------------------------------------------------
# Training


def test_training_reduces_loss_keeps_unit_decoder_and_saves_saelens_format(cache, tmp_path):
    x = _all_shards(cache).float()
    initial = train_sae(_cfg(tmp_path / "init", epochs=30), cache, progress=False, stop_after_steps=0)
    sae = train_sae(_cfg(tmp_path / "run", epochs=30), cache, progress=False)
    assert _fvu(sae, x) < 0.6 * _fvu(initial, x)  # about 0.70 -> 0.31
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(64))

    loaded = load_sae(tmp_path / "run")
    assert (loaded.cfg.architecture, loaded.cfg.k, loaded.cfg.d_sae) == ("topk", 4, 64)
    assert (loaded.cfg.hook_name, loaded.cfg.model_name) == (HOOK, "tiny-llama")
    meta = loaded.cfg.metadata
    assert (meta["context_size"], meta["prepend_bos"], meta["trained_tokens"]) == (CONTEXT, True, 180 * 64)
    assert set(meta["training"]) >= {"fvu", "explained_variance", "l0", "dead_fraction", "steps"}
    assert loaded.sparsity.shape == (64,) and (loaded.sparsity <= 0).all()
    for name, p in sae.named_parameters():
        assert torch.equal(p, getattr(loaded, name)), name


def test_training_is_deterministic_for_a_seed(cache, tmp_path):
    a = train_sae(_cfg(tmp_path / "a", epochs=2), cache, progress=False)
    b = train_sae(_cfg(tmp_path / "b", epochs=2), cache, progress=False)
    c = train_sae(_cfg(tmp_path / "c", epochs=2, seed=1), cache, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.W_dec, c.W_dec)


def test_resuming_from_a_checkpoint_gives_the_uninterrupted_weights(cache, tmp_path):
    # dead_after_tokens=128 makes AuxK and the firing counters part of what must be restored.
    straight = train_sae(_cfg(tmp_path / "straight", dead_after_tokens=128), cache, progress=False)
    cfg = _cfg(tmp_path / "sliced", dead_after_tokens=128)
    train_sae(cfg, cache, progress=False, stop_after_steps=13)  # stops mid-epoch, between checkpoints
    assert (tmp_path / "sliced" / "checkpoint" / "step_000000013").is_dir()
    resumed = train_sae(cfg, cache, progress=False)
    for name, p in straight.named_parameters():
        assert torch.equal(p, getattr(resumed, name)), name
    assert torch.equal(straight.sparsity, resumed.sparsity)
    with pytest.raises(TrainError, match="k=4"):
        train_sae(_cfg(tmp_path / "sliced", dead_after_tokens=128, k=8), cache, progress=False)


def test_relu_architecture_saves_a_standard_sae(cache, tmp_path):
    sae = train_sae(_cfg(tmp_path / "relu", architecture="relu", epochs=2), cache, progress=False)
    loaded = load_sae(tmp_path / "relu")
    assert loaded.cfg.architecture == "standard" and loaded.cfg.k is None
    assert torch.equal(loaded.W_enc, sae.W_enc)
    assert loaded.cfg.metadata["training"]["l1_coefficient"] == 0.03


def test_bad_settings_name_the_fix(cache, tmp_path):
    with pytest.raises(TrainError, match="k=0"):
        _cfg(tmp_path, k=0)
    with pytest.raises(TrainError, match="larger than the cache"):
        train_sae(_cfg(tmp_path, batch_size=10_000), cache, progress=False)
    with pytest.raises(TrainError, match="cache holds"):
        train_sae(_cfg(tmp_path, hook_name="blocks.0.hook_resid_post"), cache, progress=False)


# ---------------------------------------------------------------------------------------------
# `explorer train` options, built from TrainConfig's fields

# A value other than the default for every field (the first test checks that none is missing).
EVERY_FIELD = dict(out_dir="sae-out", hook_name="blocks.3.hook_mlp_out", d_sae=512, expansion_factor=4,
                   architecture="relu", k=16, lr=3e-4, lr_warmup_steps=10, lr_decay_fraction=0.5, batch_size=256,
                   n_tokens=100_000, epochs=2.5, auxk_alpha=0.1, k_aux=64, dead_after_tokens=5000,
                   l1_coefficient=0.01, b_dec_init="mean", b_dec_samples=1024, normalize_activations=False, seed=7,
                   checkpoint_every=50, device="cpu")


def _parse_train(*options):
    return build_parser().parse_args(["train", "--windows", "w.safetensors", "--acts", "acts", *options])


def _options(cfg):
    """The command line that asks for `cfg`, each field under its own option name."""
    argv = []
    for f in dataclasses.fields(cfg):
        value, option = getattr(cfg, f.name), "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(option if value else "--no-" + option[2:])
        else:
            argv += [option, str(value)]
    return argv


def test_every_train_config_field_is_an_option_that_round_trips():
    cfg = TrainConfig(**EVERY_FIELD)
    assert [f.name for f in dataclasses.fields(TrainConfig) if getattr(cfg, f.name) == f.default] == []
    assert train_config(_parse_train(*_options(cfg))) == cfg


def test_every_train_option_has_the_field_docstring_as_help():
    docs = field_docs(TrainConfig)
    assert sorted(docs) == sorted(f.name for f in dataclasses.fields(TrainConfig))
    parser = argparse.ArgumentParser()
    add_train_config_args(parser)
    helps = {action.dest: action.help for action in parser._actions}
    for name, doc in docs.items():
        assert helps[name].startswith(doc.replace("%", "%%")), name


def test_train_defaults_and_the_older_option_names():
    # The defaults are TrainConfig's, except the hook: the command caches activations itself.
    assert train_config(_parse_train("--out", "o")) == TrainConfig(out_dir="o", hook_name=DEMO_HOOK)
    older = _parse_train("--out", "o", "--hook", "blocks.2.hook_resid_post", "--expansion", "4", "--d-sae", "0",
                         "--architecture", "relu", "--k", "8", "--epochs", "3", "--batch-size", "512",
                         "--seed", "1", "--device", "cpu")
    assert train_config(older) == TrainConfig(out_dir="o", hook_name="blocks.2.hook_resid_post", expansion_factor=4,
                                              architecture="relu", k=8, epochs=3.0, batch_size=512, seed=1,
                                              device="cpu")
    assert (older.seed, older.held_out, older.batch_windows) == (1, 0.05, 16)  # --seed also picks the split


def test_train_options_are_checked_by_the_parser_and_by_train_config(capsys):
    with pytest.raises(SystemExit):
        _parse_train("--out", "o", "--architecture", "gated")
    assert "invalid choice: 'gated'" in capsys.readouterr().err
    with pytest.raises(TrainError, match="k=0"):
        train_config(_parse_train("--out", "o", "--k", "0"))
