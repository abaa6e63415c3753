"""The EXPLORER_* environment, read in one place (explorer/settings.py), and its users."""

import os
import types
from pathlib import Path

import pytest
import torch

from explorer import cli, commands
from explorer.model import cache_dir
from explorer.settings import PROJECT_DIR, SettingsError, env_settings

VARIABLES = ("EXPLORER_MODEL", "EXPLORER_SAE", "EXPLORER_INDEX", "EXPLORER_CACHE", "EXPLORER_THREADS", "EXPLORER_DTYPE",
             "EXPLORER_ROOTS")


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A clean environment: no EXPLORER_* variable, and a home folder of our own."""
    for name in (*VARIABLES, "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return monkeypatch


def test_defaults_when_nothing_is_set(env, tmp_path):
    s = env_settings()
    assert (s.model, s.sae, s.index, s.threads) == ("demo", None, None, None)
    assert s.cache == tmp_path / ".cache" / "sae-explorer"


def test_values_are_read_at_call_time_and_empty_means_unset(env, tmp_path):
    env.setenv("EXPLORER_MODEL", "/models/m")
    env.setenv("EXPLORER_SAE", "random")
    env.setenv("EXPLORER_INDEX", "my-index")
    env.setenv("EXPLORER_THREADS", "2")
    env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    s = env_settings()
    assert (s.model, s.sae, s.index, s.threads) == ("/models/m", "random", "my-index", 2)
    assert s.cache == tmp_path / "xdg" / "sae-explorer"
    env.setenv("EXPLORER_CACHE", "~/models")  # beats XDG_CACHE_HOME, and ~ is expanded
    assert env_settings().cache == tmp_path / "models" == cache_dir()
    assert cache_dir(tmp_path / "flag") == tmp_path / "flag"  # and a flag beats both
    for name in VARIABLES:
        env.setenv(name, "")
    s = env_settings()
    assert (s.model, s.sae, s.index, s.threads) == ("demo", None, None, None)
    assert s.cache == tmp_path / "xdg" / "sae-explorer"


@pytest.mark.parametrize("value", ["two", "0", "-1", "1.5"])
def test_a_bad_thread_count_names_the_variable_and_the_fix(env, value):
    env.setenv("EXPLORER_THREADS", value)
    with pytest.raises(SettingsError, match=rf"EXPLORER_THREADS='{value}' is not a positive whole number\. Fix:"):
        env_settings()


def test_a_bad_dtype_names_the_variable_and_the_fix(env):
    assert env_settings().dtype is None
    env.setenv("EXPLORER_DTYPE", "bfloat16")
    assert env_settings().dtype == "bfloat16"
    env.setenv("EXPLORER_DTYPE", "int4")
    with pytest.raises(SettingsError, match=r"EXPLORER_DTYPE='int4' is not a dtype\. Fix: set it to float32 or bfloat16"):
        env_settings()


def test_the_model_loads_in_the_dtype_the_environment_names(env, tmp_path):
    from explorer.model import load_model
    from tests.tiny import byte_tokenizer, tiny_model

    tiny_model("llama").model.save_pretrained(tmp_path / "m")
    byte_tokenizer().save_pretrained(tmp_path / "m")
    env.setenv("EXPLORER_DTYPE", "bfloat16")
    lm = load_model(str(tmp_path / "m"), device="cpu")
    assert lm.dtype == torch.bfloat16 and next(lm.model.parameters()).dtype == torch.bfloat16
    assert load_model(str(tmp_path / "m"), device="cpu", dtype="float32").dtype == torch.float32  # an argument beats it


def test_the_cli_reports_a_bad_variable_in_one_line(env, capsys):
    env.setenv("EXPLORER_THREADS", "many")
    with pytest.raises(SystemExit) as exit:
        cli.main(["activations", "hello"])
    assert exit.value.code == 2
    assert capsys.readouterr().err.startswith("error: EXPLORER_THREADS='many'")


def test_cli_flags_beat_the_environment_which_beats_the_defaults(env, monkeypatch):
    opened = []

    def fake_open_workspace(model, sae, index, **kw):
        opened.append((model, sae, index))
        return types.SimpleNamespace(describe=lambda: "", untrained=False, index=None)

    monkeypatch.setattr("explorer.workspace.open_workspace", fake_open_workspace)
    parse = cli.build_parser().parse_args
    commands.workspace(parse(["activations", "hi"]))
    env.setenv("EXPLORER_MODEL", "env-model")
    env.setenv("EXPLORER_SAE", "env-sae")
    env.setenv("EXPLORER_INDEX", "env-index")
    commands.workspace(parse(["activations", "hi"]))
    commands.workspace(parse(["activations", "hi", "--model", "m", "--sae", "s", "--index", "i"]))
    commands.workspace(parse(["eval", "--windows", "w"]), with_index=False)
    assert opened == [("demo", None, None), ("env-model", "env-sae", "env-index"), ("m", "s", "i"),
                      ("env-model", "env-sae", None)]



def test_roots_default_to_data_the_cache_and_the_working_directory(env, tmp_path):
    env.chdir(tmp_path)
    assert env_settings().roots == ((PROJECT_DIR / "data").resolve(), tmp_path / ".cache" / "sae-explorer", tmp_path)
    env.chdir("/")  # a service's usual working directory would open the whole disk
    assert Path("/") not in env_settings().roots


def test_roots_from_the_variable_are_resolved(env, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    env.setenv("EXPLORER_ROOTS", os.pathsep.join(["~/saes", str(tmp_path / "link"), "", str(tmp_path / "x" / "..")]))
    assert env_settings().roots == (tmp_path / "saes", tmp_path / "real", tmp_path)
