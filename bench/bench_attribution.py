"""Attribution cost on the demo model, as a ratio measured in one run.

    python bench/bench_attribution.py [--tokens 64] [--reps 7] [--sae data/demo/sae]

`attribute` on a prompt of --tokens tokens (BOS included), at its last token,
vs a plain forward pass of the same tokens (`model(ids)`, all logits, under
inference mode): target <= 3x. Also printed: the ratio to a forward pass that
computes only the last position's logits, as `attribute` itself does.
Runs alternate between the two sides so machine noise hits both.
"""

from __future__ import annotations

import argparse
import platform

import torch

from explorer.activations import encode_prompt
from explorer.attribution import attribute
from explorer.workspace import open_workspace

from bench_steering import alternate  # bench/ is on sys.path when a script here runs

TEXT = ("The old lighthouse keeper climbed the spiral stairs every evening to light the lamp. One stormy night "
        "he saw a small boat struggling against the waves near the rocks, and he ran down to the shore with a "
        "rope and a lantern, shouting to the sailors to steer towards the light of the harbour. When morning came, "
        "the sea was calm again, and the fishermen of the village gathered on the pier to thank him.")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=64, help="prompt length in tokens, BOS included")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--sae", default=None, help="SAE folder (default: the demo SAE, or a random one)")
    args = p.parse_args()

    ws = open_workspace("demo", sae=args.sae, progress=False)
    lm, sae = ws.lm, ws.sae
    print(f"# {ws.describe()}; Linear weights: {lm.layout}")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    ids, _ = encode_prompt(lm, TEXT, max_tokens=args.tokens)  # the tokens `attribute` reads, BOS first
    if ids.shape[1] != args.tokens:
        raise SystemExit(f"TEXT has only {ids.shape[1]} tokens; lengthen it for --tokens {args.tokens}")

    def forward(**kwargs):
        def run():
            with torch.inference_mode():
                lm.model(ids, use_cache=False, **kwargs)
        return run

    attr, plain = alternate(lambda: attribute(lm, sae, TEXT, max_tokens=args.tokens), forward(), args.reps)
    print(f"attribute({args.tokens} tokens) {attr * 1000:.1f} ms vs forward pass {plain * 1000:.1f} ms: "
          f"ratio {attr / plain:.2f} (target <= 3)")
    attr, last = alternate(lambda: attribute(lm, sae, TEXT, max_tokens=args.tokens), forward(logits_to_keep=1), args.reps)
    print(f"   vs a forward pass with the last logits only {last * 1000:.1f} ms: ratio {attr / last:.2f}")


if __name__ == "__main__":
    main()
