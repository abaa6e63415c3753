"""What each `explorer` subcommand does: a thin call into the library per job.

`explorer.cli` builds the parser and runs one of these; everything a user can
get wrong raises CliError or a library ValueError, which the CLI prints as one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from explorer.settings import TrainConfig, env_settings
from explorer.terminal import printable

UNTRAINED_NOTE = "NOTE: this SAE is UNTRAINED (random weights of the right shape); its features mean nothing yet."


class CliError(Exception):
    """A problem the user can fix; printed without a traceback."""


def parse_intervention(spec: str, mode: str):
    """'12=3x' -> clamp feature 12 to 3x its max activation; '12=-5' -> absolute; '12' for ablate.
    A condition may follow '@': '12=3x@f45>0.5', '12=3x@gen', '12=3x@after=REGEX'."""
    import dataclasses

    from explorer.steering import check_condition, parse_condition

    spec, at, condition = spec.partition("@")
    iv = parse_edit(spec, mode)
    if not at:
        return iv
    cond = parse_condition(condition)
    check_condition(cond, None)  # the feature's upper bound is checked once the SAE is loaded
    return dataclasses.replace(iv, condition=cond)


def parse_edit(spec: str, mode: str):
    from explorer.steering import Intervention, check_value

    feature, _, value = spec.partition("=")
    try:
        feature_id = int(feature)
    except ValueError:
        raise CliError(f"--{mode} {spec!r}: the feature must be a whole-number id. Fix: e.g. --{mode} 12=3x") from None
    if mode == "ablate":
        return Intervention(feature_id, "ablate", 0.0)
    if not value:
        raise CliError(f"--{mode} {spec!r} has no value. "
                       f"Fix: e.g. --{mode} {feature_id}=3x (3x max) or --{mode} {feature_id}=8.5")
    relative = value.lower().endswith("x")
    try:
        number = float(value[:-1] if relative else value)
    except ValueError:
        raise CliError(f"--{mode} {spec!r}: {value!r} is not a number. Fix: use e.g. 3x or 8.5") from None
    iv = Intervention(feature_id, mode, number, relative)
    check_value(iv)  # before the model loads, not after
    return iv



def workspace(args, with_index: bool = True):
    from explorer.workspace import open_workspace

    env = env_settings()
    index = (args.index or env.index) if with_index else None
    ws = open_workspace(args.model or env.model, sae=args.sae or env.sae, index=index,
                        hook=args.hook, device=args.device, dtype=args.dtype)
    print(printable(ws.describe()), file=sys.stderr)
    if ws.index is not None and ws.index.label_notice:  # user labels kept aside: say where
        print(printable(ws.index.label_notice), file=sys.stderr)
    if ws.untrained:
        print(UNTRAINED_NOTE, file=sys.stderr)
    return ws


def cmd_demo_model(args) -> None:
    from explorer.model import prepare_demo_model

    print(prepare_demo_model(args.cache))


def cmd_activations(args) -> None:
    from explorer.activations import token_activations

    ws = workspace(args)
    acts = token_activations(ws.lm, ws.sae, args.prompt, chat=args.chat, top_k=args.top)
    if acts.truncated_from:
        print(cut_note(acts.truncated_from, len(acts.tokens)))
    labels = ws.index.label if ws.index is not None else (lambda f: "")
    for pos, (tok, feats, vals) in enumerate(zip(acts.tokens, acts.features, acts.values)):
        shown = ", ".join(f"#{f} {v:.2f}" + (f" ({printable(labels(f))})" if labels(f) else "")
                          for f, v in zip(feats[: args.top], vals))
        print(f"{pos:4d} {printable(tok[:16]):<16} {shown}")
    if ws.untrained:
        print(UNTRAINED_NOTE)


def cut_note(truncated_from: int, kept: int) -> str:
    return f"(prompt cut from {truncated_from} to {kept} tokens)"


def cmd_steer(args) -> None:
    from explorer.steering import (
        GenerationSettings,
        generate_pair,
        parse_stop,
        prompt_limit,
    )

    interventions = [parse_intervention(s, m) for m in ("clamp", "scale", "add", "ablate") for s in getattr(args, m) or []]
    if not interventions and not args.preset:
        raise CliError("Nothing to steer. Fix: add e.g. --clamp 12=3x or --ablate 12, or --preset NAME")
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  top_p=args.top_p, seed=args.seed, chat=args.chat)
    stop = parse_stop(args.stop_when) if args.stop_when else None
    ws = workspace(args)
    if args.preset:
        preset = named_preset(ws, args.preset)
        interventions = list(preset.interventions) + interventions
        stop = stop or preset.stop
    result = generate_pair(ws.lm, ws.sae, args.prompt, interventions, settings, ws.max_acts(), stop=stop)
    if result.truncated_from:
        print(cut_note(result.truncated_from, prompt_limit(ws.lm, settings)))
    width = max(30, (shutil.get_terminal_size().columns - 3) // 2)
    left = textwrap.wrap(printable(result.clean.text.replace("\n", " ↵ ")), width) or [""]
    right = textwrap.wrap(printable(result.steered.text.replace("\n", " ↵ ")), width) or [""]
    steer_names = printable(", ".join(iv.describe() for iv in interventions))  # a pattern is the user's text
    print(f"{'UNCLAMPED':<{width}} | STEERED ({steer_names})")
    print("-" * width + "-+-" + "-" * width)
    for i in range(max(len(left), len(right))):
        print(f"{(left[i] if i < len(left) else ''):<{width}} | {right[i] if i < len(right) else ''}")
    where = "never" if result.diverge_at is None else f"at generated token {result.diverge_at}"
    print(f"\nCompletions diverge {where}.")
    if result.steered.stopped_at is not None:
        print(f"The steered completion stopped after generated token {result.steered.stopped_at} "
              f"({result.steered.stopped_by.describe()}).")
    if ws.untrained:
        print(UNTRAINED_NOTE)


def cmd_attribute(args) -> None:
    from explorer.attribution import attribute

    ws = workspace(args)
    result = attribute(ws.lm, ws.sae, args.prompt, position=args.position, target=args.target,
                       versus=args.versus, chat=args.chat, top=args.top)
    labels = ws.index.label if ws.index is not None else (lambda f: "")
    metric = f"logit of {result.target_token!r}"
    if result.versus is not None:
        metric += f" minus logit of {result.versus_token!r}"
    print(f"Position {result.position} {result.tokens[result.position]!r}: {metric} = {result.metric:.3f}")
    for title, scores in (("Pushes towards", result.positive), ("Pushes against", result.negative)):
        print(f"\n{title}:")
        for s in scores:
            label = f"  ({labels(s.feature)})" if labels(s.feature) else ""
            print(f"  {s.score:+9.4f}  #{s.feature} at {s.position} {result.tokens[s.position]!r} "
                  f"(activation {s.activation:.2f}){label}")
    print(f"\nAll features {result.features_total:+.4f}, SAE error term {result.error_share:+.4f}, "
          f"decoder bias {result.bias_share:+.4f}")
    if ws.untrained:
        print(UNTRAINED_NOTE)


def cmd_windows(args) -> None:
    from explorer.corpus import read_documents, save_windows, tokenize_windows
    from explorer.model import load_model

    lm = load_model(args.model)
    windows = tokenize_windows(read_documents(args.corpus, text_field=args.field), lm.tokenizer,
                               window=args.window, max_windows=args.max_windows)
    save_windows(windows, args.out)
    print(f"{len(windows.tokens):,} windows of {args.window} tokens -> {args.out}")


def _split(args):
    """The (train, held-out) windows for a seed: train, eval and index agree on it."""
    from explorer.corpus import load_windows, split_windows

    train, held = split_windows(load_windows(args.windows), args.held_out, seed=args.seed)
    return train, held


def cmd_train(args) -> None:
    from explorer import distributed
    from explorer.train_distributed import SINGLE, Ranks

    cfg = train_config(args)  # checked before the slow part, not after caching
    if getattr(args, "distribute_hooks", False) and not getattr(args, "hooks", None):
        raise CliError("--distribute-hooks shares out the hooks of --hooks. Fix: name several hooks with --hooks")
    if distributed.from_env() is None:
        return train_hooks(args, cfg, SINGLE)
    with distributed.session(cfg.device or None) as dist:
        train_hooks(args, dataclasses.replace(cfg, device=str(dist.device)), Ranks.of(dist))


def train_hooks(args, cfg: TrainConfig, ranks) -> None:
    """`explorer train` in one process, or as one rank of a torchrun job (`ranks`): cache the
    hooks' activations, then train their SAEs."""
    from explorer.activation_cache import cache_activations, cache_hooks
    from explorer.model import load_model
    from explorer.train import train_sae
    from explorer.train_distributed import SINGLE

    hooks = getattr(args, "hooks", None)
    if not ranks.main:
        ranks.barrier()  # rank 0 loads first: it converts the demo model if that is not done yet
    lm = load_model(args.model, device=cfg.device or None, progress=ranks.main)
    if ranks.main:
        ranks.barrier()
    train, _ = _split(args)
    if args.max_windows:
        train = train[: args.max_windows]
    caching = {"batch_size": args.batch_windows, "shard_tokens": args.shard_tokens, "ranks": ranks}
    if hooks:
        caches = cache_hooks(lm, {hook: Path(args.acts) / hook for hook in hooks}, train, **caching)
    else:
        caches = {cfg.hook_name: cache_activations(lm, cfg.hook_name, train, args.acts, **caching)}
    del lm  # training needs only the caches
    # One hook keeps the folder as given; several get a subfolder each, named after the hook.
    runs = {hook: dataclasses.replace(cfg, hook_name=hook, out_dir=str(Path(cfg.out_dir) / hook))
            for hook in hooks} if hooks else {cfg.hook_name: cfg}
    if getattr(args, "distribute_hooks", False):
        mine = list(runs)[ranks.rank::ranks.world]
        for hook in mine:
            train_sae(runs[hook], caches[hook], ranks=SINGLE)
        print(f"Rank {ranks.rank}: " + (", ".join(f"SAE saved in {runs[h].out_dir}" for h in mine) or "no hook"))
        return
    for hook, run in runs.items():
        train_sae(run, caches[hook], progress=ranks.main, ranks=ranks)
        if ranks.main:
            print(f"SAE saved in {run.out_dir}")


def cmd_eval(args) -> None:
    import json

    from explorer.evaluate import evaluate_sae

    ws = workspace(args, with_index=False)
    _, held = _split(args)
    report = evaluate_sae(ws.lm, ws.sae, held[: args.max_windows] if args.max_windows else held)
    print(report.to_markdown())
    if args.json:
        from explorer.files import write_atomic

        write_atomic(args.json, json.dumps(report.to_dict(), indent=2))


def cmd_index(args) -> None:
    from explorer import distributed
    from explorer.index import build_index

    if args.verify:
        return check_index(args.verify)
    if not (args.windows and args.out):
        raise CliError("Building an index needs --windows and --out (or check one with --verify DIR)")
    if distributed.from_env() is not None:
        return index_under_torchrun(args)
    ws, windows = index_inputs(args)
    print(build_index(ws.lm, ws.sae, windows, args.out, top_n=args.top_n, batch_size=args.batch_windows,
                      sae_path_fingerprint=ws.sae_id, force=args.force))


def cmd_map(args) -> None:
    """Lay the SAE's features out in 2D (explorer.feature_map) and store the map with its index."""
    from explorer.feature_map import compute_map, save_map
    from explorer.index.integrity import read_manifest
    from explorer.sae_files import load_sae, sae_fingerprint
    from explorer.workspace import DEMO_INDEX, DEMO_SAE

    env = env_settings()
    index = Path(args.index or env.index or DEMO_INDEX)
    sae_path = args.sae or env.sae or DEMO_SAE
    manifest = read_manifest(index)
    fingerprint = sae_fingerprint(sae_path)
    if fingerprint != manifest.sae_fingerprint:
        raise CliError(f"The index at {index} was built for SAE {manifest.sae_fingerprint[:16]}, but {sae_path} is "
                       f"{fingerprint[:16]}. Fix: pass the SAE the index was built with (--sae)")
    sae = load_sae(sae_path)
    fmap = compute_map(sae.W_dec, seed=args.seed)
    fmap = dataclasses.replace(fmap, sae_fingerprint=fingerprint)
    print(f"{save_map(index, fmap)}: {fmap.d_sae:,} features, {fmap.params.method} (seed {args.seed})")


def index_inputs(args):
    """(workspace, windows) of `explorer index`."""
    from explorer.corpus import load_windows

    ws = workspace(args, with_index=False)
    windows = load_windows(args.windows)
    return ws, (windows[: args.max_windows] if args.max_windows else windows)


def index_under_torchrun(args) -> None:
    """`explorer index` as one rank of a torchrun job: each rank builds a shard, rank 0 writes."""
    from explorer import distributed
    from explorer.index import build_index

    with distributed.session(args.device) as dist:
        args.device = str(dist.device)
        ws, windows = index_inputs(args)
        out = build_index(ws.lm, ws.sae, windows, args.out, top_n=args.top_n, batch_size=args.batch_windows,
                          sae_path_fingerprint=ws.sae_id, force=args.force, dist=dist)
        if dist.rank == 0:
            print(out)


def check_index(path: str) -> None:
    """Print one line per problem of the index at `path` and exit 2 if there is any."""
    from explorer.index.integrity import verify_index

    problems = verify_index(path)
    for line in problems:
        print(printable(line))
    if problems:
        raise SystemExit(2)
    print(printable(f"{path}: every file has the size and sha256 that the build recorded"))


def _neuronpedia_files(args, ws, features):
    """The Neuronpedia-format files asked for, one batch at a time."""
    from explorer import neuronpedia

    parts = {"model_id": args.np_model_id, "layer": args.np_layer, "sae_set": args.np_sae_set, "suffix": args.np_suffix}
    for fmt in (f for f in args.format if f in neuronpedia.FORMATS):
        ids = neuronpedia.workspace_ids(ws, **parts)
        print(f"{fmt}: Neuronpedia model {ids.model_id!r}, source {ids.source!r}", file=sys.stderr)
        dead = neuronpedia.dead_features(ws, features) if fmt == "neuronpedia-upload" else []
        if dead:
            print(f"{len(dead)} features never fired and are left out of the upload: {dead[:20]}", file=sys.stderr)
        yield from neuronpedia.export_files(ws, features, fmt, dataset=args.np_dataset, **parts)


def cmd_export(args) -> None:
    from explorer import export
    from explorer.files import make_dirs, write_atomic

    ws = workspace(args)
    if ws.index is None:
        raise CliError("Exporting cards needs a feature index. Fix: pass --index DIR (build one with `explorer index`)")
    features = list(range(ws.index.d_sae)) if args.all else sorted(set(args.features))
    if not features:
        raise CliError("No features named. Fix: give feature ids, or --all for every feature of the index")
    if not 0 <= features[0] <= features[-1] < ws.index.d_sae:
        raise CliError(f"This index has features 0..{ws.index.d_sae - 1}. Fix: give feature ids in that range")
    meta = dict(model=ws.lm.name, hook=ws.hook_name, sae_id=ws.sae_id)
    card_formats = [f for f in args.format if f in export.FORMATS]
    cards = (ws.index.card(f) for f in (features if card_formats else []))
    card_files = ((export.card_filename(c.feature, fmt),
                   export.card_bytes(c, fmt, **meta, explanations=ws.index.feature_explanations(c.feature)))
                  for c in cards for fmt in card_formats)
    files = itertools.chain(card_files, _neuronpedia_files(args, ws, features))
    out = Path(args.out)
    if args.zip:
        write_atomic(out, export.files_to_zip(files))
        print(out)
        return
    make_dirs(out)
    for name, data in files:
        write_atomic(out / name, data)
        print(out / name)


def workspace_presets(ws, path: str | None = None) -> tuple[Path, dict]:
    """The presets file of the workspace's SAE (or `path`) and its presets by name."""
    from explorer.presets import load_presets, presets_path

    file = Path(path) if path else presets_path(env_settings().cache, ws.sae_id)
    return file, load_presets(file, ws.sae_id, ws.sae.cfg.d_sae)


def named_preset(ws, name: str):
    file, presets = workspace_presets(ws)
    if name not in presets:
        raise CliError(f"There is no preset {name!r} in {file}. "
                       f"Fix: use one of {', '.join(sorted(presets)) or 'none (save one on the steering page)'}")
    return presets[name]


def cmd_serve(args) -> None:
    from explorer.serve import make_app, serve, served_models

    from explorer.presets import PresetsFile, presets_path

    ws = workspace(args)
    presets = PresetsFile(Path(args.presets) if args.presets else presets_path(env_settings().cache, ws.sae_id),
                          ws.sae_id, ws.sae.cfg.d_sae)
    app = make_app(ws.lm, ws.sae, presets, ws.max_acts())
    print(f"Presets from {presets.path} (read again when it changes); models: "
          f"{', '.join(served_models(ws.lm, presets.current()))}", file=sys.stderr)
    print(f"OpenAI-compatible API at http://{args.host}:{args.port}/v1", file=sys.stderr)
    serve(app, args.host, args.port)


def cmd_app(args) -> None:
    app = Path(__file__).resolve().parent.parent / "app.py"
    if not app.exists():
        raise CliError(f"{app} not found: the app runs from a source checkout of the project")
    # ui.launch: streamlit run app.py, with the workspace loading while the server starts
    cmd = [sys.executable, "-m", "ui.launch", "--server.port", str(args.port), "--browser.gatherUsageStats", "false"]
    path = os.pathsep.join(p for p in (str(app.parent), os.environ.get("PYTHONPATH", "")) if p)
    raise SystemExit(subprocess.call(cmd, env={**os.environ, "PYTHONPATH": path}))



def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig)})



def cmd_explain(args) -> None:
    from explorer import explain, llm_client, scoring

    # Everything that can be checked before the model loads is checked first.
    if not (args.features or args.top or args.all):
        raise CliError("No features to explain. Fix: give --features 1,2,5, --top N or --all")
    for url in (args.explainer_url, args.judge_url):
        if url and not url.startswith(("http://", "https://")):
            raise CliError(f"{url!r} is not an http(s) URL. Fix: give the endpoint's base URL, e.g. http://localhost:8080/v1")
    if (args.explainer_url or args.judge_url) and not args.explainer_model and not args.judge_model:
        raise CliError("An endpoint needs a model name. Fix: add --explainer-model NAME (the name the server lists)")
    ws = workspace(args)
    if ws.index is None:
        raise CliError("Explaining features needs a feature index. Fix: pass --index DIR (build one with `explorer index`)")
    features = explain.pick_features(ws.index, args.features or (), args.top, args.all)
    methods = ["heuristic"] if args.heuristic_only else ["llm", "heuristic"]
    chat = None
    if not args.heuristic_only:
        chat = (llm_client.EndpointChat(args.explainer_url, args.explainer_model, args.explainer_key_env)
                if args.explainer_url else llm_client.LocalChat(ws.lm, ws.sae))
    judge = negatives = None
    if args.score:
        if args.judge_url:
            judge = scoring.ChatJudge(llm_client.EndpointChat(args.judge_url, args.judge_model or args.explainer_model,
                                                              args.explainer_key_env))
        elif args.explainer_url and not args.local_judge:
            judge = scoring.ChatJudge(chat)
        else:
            judge = scoring.LocalJudge(ws.lm)
        print(f"scoring with judge {judge.name!r} on {args.negative_windows} windows for non-activating examples",
              file=sys.stderr)
        negatives = scoring.negative_pool(ws.lm, ws.sae, ws.index, args.negative_windows)
    local = chat is None or isinstance(chat, llm_client.LocalChat)
    records = explain.explain_index(ws.index, features, methods, chat, judge, negatives,
                                    concurrency=1 if local else args.concurrency, force=args.force,
                                    n_per_class=args.examples)
    for rec in records:
        print(printable(f"#{rec.feature} {rec.method}: {rec.text} [{rec.scores()}]"))
    print(f"{len(records)} records written to {ws.index.path / 'explanations.jsonl'} "
          f"({len(features) - len({r.feature for r in records})} features were already done)", file=sys.stderr)
