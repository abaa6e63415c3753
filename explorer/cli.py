"""The `explorer` command line: its options (one subcommand per job, see
explorer.commands) and `main`, which turns every error a user can cause into one line."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import errno
import inspect
import os
import re
import sys
import textwrap
import typing
from pathlib import Path

from explorer.commands import (
    CliError,
    cmd_activations,
    cmd_app,
    cmd_attribute,
    cmd_demo_model,
    cmd_eval,
    cmd_explain,
    cmd_export,
    cmd_index,
    cmd_serve,
    cmd_map,
    cmd_steer,
    cmd_train,
    cmd_windows,
)
from explorer.settings import DEMO_HOOK, DEMO_MODEL, TrainConfig
from explorer.terminal import printable

# `explorer train` has one option per TrainConfig field, named after it (--lr for lr, --d-sae for
# d_sae). These fields also answer to the shorter names the command has always had.
TRAIN_ALIASES = {"out_dir": "--out", "hook_name": "--hook", "expansion_factor": "--expansion"}
# The command caches the activations itself, so it needs a hook where TrainConfig can take the cache's.
TRAIN_CLI_DEFAULTS = {"hook_name": DEMO_HOOK}
# Commands that keep their progress when stopped, and pick it up when run again.
RESUMABLE = {"index", "train", "explain"}
INTERRUPTED = 130  # the shell's code for a command stopped by Ctrl-C (128 + SIGINT)


def count(text: str) -> int:
    """argparse type: a whole number of 1 or more."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is less than 1")
    return n


def hook_list(text: str) -> list[str]:
    """argparse type: comma-separated hook names, each once, in the order given."""
    hooks = list(dict.fromkeys(h.strip() for h in text.split(",") if h.strip()))
    if not hooks:
        raise argparse.ArgumentTypeError(f"{text!r} names no hook; use e.g. {DEMO_HOOK},blocks.3.hook_resid_post")
    return hooks


def add_workspace_args(p: argparse.ArgumentParser, index: bool = True) -> None:
    # No defaults here: `workspace` fills them from the environment when the command runs.
    p.add_argument("--model", help="'demo', a local model directory, a .gguf file, or a hub id "
                                   "(default: $EXPLORER_MODEL, else demo)")
    p.add_argument("--sae", help="SAE folder in SAELens format, or 'random' for an untrained one "
                                 "(default: $EXPLORER_SAE, else the demo SAE)")
    p.add_argument("--hook", help=f"hook name, e.g. {DEMO_HOOK} (default: the SAE's own)")
    if index:
        p.add_argument("--index", help="feature index folder (default: $EXPLORER_INDEX, else the demo index)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dtype", help="float32, bfloat16 or float16 (default: EXPLORER_DTYPE, else float32 on CPU, bf16 on CUDA)")



def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass, by field name (Python keeps no such
    docstrings at run time, so they are read from the source)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    return {field.target.id: inspect.cleandoc(doc.value.value) for field, doc in zip(body, body[1:])
            if isinstance(field, ast.AnnAssign) and isinstance(doc, ast.Expr)
            and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)}


def add_train_config_args(p: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, with its type, default and docstring as help."""
    types = typing.get_type_hints(TrainConfig)
    docs = field_docs(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        names = [f"--{field.name.replace('_', '-')}"]
        if field.name in TRAIN_ALIASES:
            names.append(TRAIN_ALIASES[field.name])
        kind = types[field.name]
        default = TRAIN_CLI_DEFAULTS.get(field.name, field.default)
        options = dict(dest=field.name, help=docs.get(field.name, "").replace("%", "%%"))
        if default is dataclasses.MISSING:
            options["required"] = True
        else:
            options["default"] = default
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction  # --x and --no-x
        elif typing.get_origin(kind) is typing.Literal:
            options["choices"] = typing.get_args(kind)
        else:
            options["type"] = kind
        if default not in (dataclasses.MISSING, ""):
            options["help"] += " (default: %(default)s)"
        p.add_argument(*names, **options)



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="explorer", description="Browse and steer SAE features of language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-model", help="convert the demo model (SmolLM2-135M-Instruct GGUF) into the local cache")
    p.add_argument("--cache", help="cache folder (default: $EXPLORER_CACHE or ~/.cache/sae-explorer)")
    p.set_defaults(func=cmd_demo_model)

    p = sub.add_parser("activations", help="print the top SAE features of every token of a prompt")
    p.add_argument("prompt")
    p.add_argument("--top", type=count, default=5, help="features shown per token")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    add_workspace_args(p)
    p.set_defaults(func=cmd_activations)

    p = sub.add_parser("steer", help="generate with and without steered features, side by side",
                       epilog="Conditions: any intervention may end in @CONDITION to apply only where it holds: "
                              "@f45>0.5 (where feature 45's activation is above 0.5), @gen (generated tokens "
                              "only, not the prompt), @after=REGEX (once the generated text matches REGEX). "
                              "E.g. --clamp '12=3x@f45>0.5' --ablate '7@gen' --add '3=5@after=\\.' "
                              "(quote them: > is a shell redirect).")
    p.add_argument("prompt")
    for mode, example in (("clamp", "12=3x"), ("scale", "12=0.5"), ("add", "12=-4")):
        p.add_argument(f"--{mode}", action="append", metavar="FEATURE=VALUE[@CONDITION]",
                       help=f"{mode} a feature, e.g. {example}; a value ending in x is a multiple of its max activation")
    p.add_argument("--ablate", action="append", metavar="FEATURE[@CONDITION]", help="set a feature to 0")
    p.add_argument("--stop-when", metavar="FEATURE>THRESHOLD",
                   help="end the steered completion after the token where the feature fires above the threshold, "
                        "e.g. '45>0.5'")
    p.add_argument("--max-new-tokens", type=count, default=40)
    p.add_argument("--temperature", type=float, default=0.0, help="0 for greedy decoding")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--preset", help="also steer with a saved steering preset (see `explorer serve`)")
    add_workspace_args(p)
    p.set_defaults(func=cmd_steer)

    p = sub.add_parser("attribute", help="rank the features that push the logit of a token up or down")
    p.add_argument("prompt")
    p.add_argument("--position", type=int, default=-1,
                   help="token position whose next-token logit is explained; BOS is 0, negative counts from the end "
                        "(default: the last token)")
    p.add_argument("--target", help="the token to explain, as text (' Paris') or id:123 "
                                    "(default: the actual next token, or the model's top prediction at the end)")
    p.add_argument("--versus", help="a second token: explain logit(target) - logit(versus)")
    p.add_argument("--top", type=int, default=10, help="features listed per direction")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    add_workspace_args(p)
    p.set_defaults(func=cmd_attribute)

    p = sub.add_parser("windows", help="tokenize a corpus into fixed-length windows")
    p.add_argument("corpus", help="text file or folder, .jsonl, .csv, .parquet, or a saved `datasets` folder")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--field", default="text", help="text field / column")
    p.add_argument("--window", type=count, default=128)
    p.add_argument("--max-windows", type=count)
    p.add_argument("--model", default=DEMO_MODEL, help="model whose tokenizer to use")
    p.set_defaults(func=cmd_windows)

    def split_args(p: argparse.ArgumentParser, seed: bool = True) -> None:
        p.add_argument("--windows", required=True, help="windows file from `explorer windows`")
        p.add_argument("--held-out", type=float, default=0.05, help="fraction of windows held out for evaluation")
        if seed:  # train has TrainConfig's --seed, which seeds the split too
            p.add_argument("--seed", type=int, default=0, help="seeds the held-out split")
        p.add_argument("--max-windows", type=count, help="use at most this many windows")

    p = sub.add_parser("train", help="train an SAE (TopK by default) on activations at a hook",
                       description="Cache the activations at a hook, then train an SAE on them. Both steps "
                                   "resume where they stopped. --seed also picks the held-out windows. Under "
                                   "torchrun (torchrun --nproc_per_node=N -m explorer.cli train ...) the processes "
                                   "share out the caching, then train data parallel: the same SAE as one process.")
    split_args(p, seed=False)
    p.add_argument("--model", default=DEMO_MODEL, help="model whose activations to train on (default: demo)")
    p.add_argument("--acts", required=True, help="activation cache folder (reused and resumed)")
    p.add_argument("--batch-windows", type=count, default=16, help="windows per forward pass")
    p.add_argument("--shard-tokens", type=count, default=65_536,
                   help="tokens per activation-cache shard, the unit of resuming and of sharing out the caching "
                        "between processes (default: %(default)s)")
    add_train_config_args(p)
    p.add_argument("--hooks", type=hook_list, help="several hooks, comma-separated, instead of --hook: their "
                   "activations are cached from one forward pass per batch into ACTS/<hook>/, and one SAE per "
                   "hook is trained into OUT/<hook>/, one after another")
    p.add_argument("--distribute-hooks", action="store_true",
                   help="under torchrun with --hooks: each process trains its own hooks' SAEs (hook i on rank "
                        "i %% world size) instead of all processes training each SAE together")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate an SAE on held-out windows (L0, EV, CE-loss score, KL, dead/dense)")
    split_args(p)
    p.add_argument("--json", help="also write the report as JSON here")
    add_workspace_args(p, index=False)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("index", help="build the feature index (examples, histograms, logits, neighbours)")
    p.add_argument("--windows", help="windows file from `explorer windows` (needed to build)")
    p.add_argument("--max-windows", type=count)
    p.add_argument("--out", help="index folder to build or rebuild (needed to build)")
    p.add_argument("--force", action="store_true", help="replace an index at --out that was built for another SAE")
    p.add_argument("--verify", metavar="DIR", help="only check the index in DIR: every file's size and sha256 "
                                                   "against its manifest; exit 2 on any problem")
    p.add_argument("--top-n", type=count, default=20, help="max-activating examples kept per feature")
    p.add_argument("--batch-windows", type=count, default=16)
    add_workspace_args(p, index=False)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("map", help="lay every feature out in 2D (UMAP of decoder directions) and store the map "
                                   "with the index, for the app's Feature map page")
    p.add_argument("--index", help="feature index folder (default: $EXPLORER_INDEX, else the demo index)")
    p.add_argument("--sae", help="the SAE folder the index was built with (default: $EXPLORER_SAE, else the demo SAE)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same map")
    p.set_defaults(func=cmd_map)

    p = sub.add_parser("export", help="export feature cards as JSON, Markdown, HTML or PNG, or for Neuronpedia")
    p.add_argument("features", type=int, nargs="*")
    p.add_argument("--all", action="store_true", help="every feature of the index")
    p.add_argument("--format", nargs="+", choices=("json", "md", "html", "png", "neuronpedia", "neuronpedia-upload"),
                   default=["json", "md", "html", "png"],
                   help="neuronpedia: SAEDashboard's batch-N.json files; neuronpedia-upload: bodies for "
                        "Neuronpedia's /api/feature/upload-batch")
    p.add_argument("--out", required=True, help="folder, or a .zip file with --zip")
    p.add_argument("--zip", action="store_true")
    np_ids = "(default: from the SAE's neuronpedia_id, else from the model and hook names)"
    p.add_argument("--np-model-id", help=f"Neuronpedia model id {np_ids}")
    p.add_argument("--np-layer", type=int, help=f"Neuronpedia layer {np_ids}")
    p.add_argument("--np-sae-set", help=f"Neuronpedia SAE set, e.g. res-jb {np_ids}")
    p.add_argument("--np-suffix", help="Neuronpedia source suffix (the part after __)")
    p.add_argument("--np-dataset", help="dataset name recorded in the files (default: the SAE's dataset_path)")
    add_workspace_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="serve an OpenAI-compatible API (/v1/completions, /v1/chat/completions); "
                                     "each saved steering preset is a model of its own")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: localhost only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--presets", help="presets file (default: the SAE's own, under the cache folder)")
    add_workspace_args(p)
    p.set_defaults(func=cmd_serve)

    add_explain_parser(sub)

    p = sub.add_parser("app", help="start the Streamlit app")
    p.add_argument("--port", type=int, default=8501)
    p.set_defaults(func=cmd_app)
    return parser


def feature_list(text: str) -> list[int]:
    """argparse type: '1,2,5' -> [1, 2, 5]."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of feature ids, e.g. 1,2,5") from None


def add_explain_parser(sub) -> None:
    p = sub.add_parser("explain", help="explain features in one sentence with an LLM, and score the "
                                       "explanations and the automatic labels (detection, fuzzing)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--features", type=feature_list, help="feature ids, e.g. 1,2,5")
    which.add_argument("--top", type=count, help="the N densest features")
    which.add_argument("--all", action="store_true", help="every feature of the index")
    p.add_argument("--explainer-url", help="base URL of an OpenAI-compatible chat endpoint, e.g. "
                                           "http://localhost:8080/v1 (default: the loaded model, if it is an instruct model)")
    p.add_argument("--explainer-model", help="model name to ask the endpoint for")
    p.add_argument("--explainer-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the endpoint's API key (default: OPENAI_API_KEY)")
    p.add_argument("--judge-url", help="endpoint for scoring (default: the explainer's; with the loaded model, "
                                       "its Yes/No logits)")
    p.add_argument("--judge-model", help="model name for --judge-url (default: --explainer-model)")
    p.add_argument("--local-judge", action="store_true", help="score with the loaded model's Yes/No logits "
                                                              "even when explaining through an endpoint")
    p.add_argument("--score", action=argparse.BooleanOptionalAction, default=True,
                   help="score every explanation and automatic label (default: yes)")
    p.add_argument("--heuristic-only", action="store_true", help="only score the automatic labels")
    p.add_argument("--concurrency", type=count, default=4, help="requests at once to an endpoint (the loaded "
                                                                "model does one feature at a time)")
    p.add_argument("--negative-windows", type=count, default=64,
                   help="corpus windows run through the model to find non-activating examples")
    p.add_argument("--examples", type=count, default=10, help="held-out activating examples per score, and as "
                                                               "many non-activating ones (default: 10)")
    p.add_argument("--force", action="store_true", help="redo features that already have explanations")
    add_workspace_args(p)
    p.set_defaults(func=cmd_explain)


# What to do about an operating-system error, by its type; the first that matches wins.
OS_ERROR_FIXES = [
    (PermissionError, "choose a path you may use, or change its permissions"),
    (IsADirectoryError, "give a file name, not a folder"),
    (NotADirectoryError, "a part of the path is a file, not a folder: correct the path"),
    (FileExistsError, "something else is at that path: choose another path, or move it away"),
    (FileNotFoundError, "check the path"),
]
ERRNO_FIXES = {errno.ENOSPC: "free some disk space, or write elsewhere", errno.EROFS: "write to a writable disk",
               errno.ENAMETOOLONG: "use a shorter name"}
# The hidden temp sibling explorer.files writes first: `.NAME.<8 random chars>.tmp`.
TEMP_SIBLING = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")


def os_error_line(err: OSError) -> str:
    """'<what failed>: <path>. Fix: <what to do>' for an error of the operating system."""
    if err.strerror is None:  # raised by our code, with its own message and fix
        return str(err)
    path = err.filename2 if err.filename2 is not None else err.filename
    if path is not None:
        path = Path(os.fsdecode(path))
        temp = TEMP_SIBLING.match(path.name)
        path = path.parent / temp["name"] if temp else path  # name the file the user asked for
    fix = ERRNO_FIXES.get(err.errno) or next((f for kind, f in OS_ERROR_FIXES if isinstance(err, kind)),
                                             "check the path and try again")
    return f"{err.strerror}" + (f": {path}" if path is not None else "") + f". Fix: {fix}"


def check_utf8(argv: list[str]) -> None:
    """Python keeps bytes that are not UTF-8 as lone surrogates, which neither the
    tokenizer nor the terminal can take: refuse them here, naming the bytes."""
    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raw = arg.encode("utf-8", "surrogateescape")
            raise CliError(f"The argument {raw!r} is not valid UTF-8 text. "
                           "Fix: pass prompts and paths as UTF-8 (check the terminal's or the script's encoding)") from None


def fail(line: str, code: int) -> typing.NoReturn:
    print(printable(line), file=sys.stderr)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    """Run one command. Every error a user can cause ends in one line on stderr,
    `error: <problem>. Fix: <what to do>`, and exit code 2; Ctrl-C ends in
    "interrupted" and exit code 130. Other exceptions are bugs, and keep their traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        check_utf8(argv)
    except CliError as err:
        fail(f"error: {err}", 2)
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
    except (CliError, ValueError) as err:
        # Library errors carry the problem and the fix in their message.
        fail(f"error: {err}", 2)
    except BrokenPipeError:
        # Whoever read our output stopped (`explorer ... | head`): nothing to tell them,
        # and Python's own flush at exit must not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
    except OSError as err:
        fail(f"error: {os_error_line(err)}", 2)
    except KeyboardInterrupt:
        resume = "; run the same command again to resume" if args.command in RESUMABLE else ""
        fail(f"interrupted{resume}", INTERRUPTED)


if __name__ == "__main__":
    main()

