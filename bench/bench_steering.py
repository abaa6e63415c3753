"""Steering and activation costs on the demo model, as ratios measured in one run.

    python bench/bench_steering.py [--tokens 32] [--reps 5] [--sae data/demo/sae]

1. generate_pair (one batch of two rows) vs one plain `model.generate` of the
   same length and settings (target <= 1.25x);
2. one clamped generation vs plain generation, tokens/s (target >= 0.95);
3. per-token activations of a 128-token prompt vs a plain forward pass to the
   hook layer (target <= 1.2x).
Runs alternate between the two sides of each ratio so machine noise hits both.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from explorer.activations import encode_prompt, token_activations
from explorer.hooks import run_to_hook
from explorer.steering import GenerationSettings, Intervention, generate_pair, generate_rows
from explorer.workspace import open_workspace

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(a, b, reps: int) -> tuple[float, float]:
    """Median seconds of a and b, run alternately after one warm-up each."""
    a(), b()
    ta, tb = [], []
    for _ in range(reps):
        ta.append(timed(a))
        tb.append(timed(b))
    return statistics.median(ta), statistics.median(tb)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=32, help="new tokens per generation")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--sae", default=None, help="SAE folder (default: the demo SAE, or a random one)")
    p.add_argument("--feature", type=int, default=0)
    args = p.parse_args()

    ws = open_workspace("demo", sae=args.sae, progress=False)
    lm, sae = ws.lm, ws.sae
    print(f"# {ws.describe()}; Linear weights: {lm.layout}")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    settings = GenerationSettings(max_new_tokens=args.tokens, stop_at_eos=False)
    iv = [Intervention(args.feature, "clamp", 10.0)]
    ids, _ = encode_prompt(lm, PROMPT)  # the same tokens generate_pair starts from

    def hf_generate():
        with torch.inference_mode():
            lm.model.generate(ids, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False,
                              pad_token_id=lm.tokenizer.eos_token_id)

    pair, plain = alternate(lambda: generate_pair(lm, sae, PROMPT, iv, settings), hf_generate, args.reps)
    print(f"1. generate_pair {pair:.3f}s vs model.generate {plain:.3f}s: ratio {pair / plain:.3f} (target <= 1.25)")

    # transformers' own layout, as a plain `from_pretrained` user would run it
    from transformers import AutoModelForCausalLM

    from explorer.model import prepare_demo_model

    stock = AutoModelForCausalLM.from_pretrained(prepare_demo_model(progress=False), dtype=torch.float32).eval()

    def stock_generate():
        with torch.inference_mode():
            stock.generate(ids, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False,
                           pad_token_id=lm.tokenizer.eos_token_id)

    pair, plain = alternate(lambda: generate_pair(lm, sae, PROMPT, iv, settings), stock_generate, args.reps)
    print(f"   vs stock-layout model.generate {plain:.3f}s: ratio {pair / plain:.3f}")

    clamped, plain = alternate(lambda: generate_rows(lm, sae, PROMPT, [iv], settings), hf_generate, args.reps)
    print(f"2. clamped {args.tokens / clamped:.1f} tok/s vs model.generate {args.tokens / plain:.1f} tok/s: "
          f"ratio {plain / clamped:.3f} (target >= 0.95)")
    ours, _ = alternate(lambda: generate_rows(lm, sae, PROMPT, [[]], settings), hf_generate, args.reps)
    print(f"   (our loop with no edit: {args.tokens / ours:.1f} tok/s; clamped/unedited ratio {ours / clamped:.3f})")

    long_text = " ".join(["The quick brown fox jumps over the lazy dog near the river bank."] * 12)
    long_ids = lm.tokenizer(long_text, return_tensors="pt").input_ids[:, :128].to(lm.device)
    long_prompt = lm.tokenizer.decode(long_ids[0])

    def forward_to_hook():
        with torch.inference_mode():
            run_to_hook(lm.model, sae.cfg.hook_name, long_ids)

    acts, fwd = alternate(lambda: token_activations(lm, sae, long_prompt, max_tokens=128), forward_to_hook, args.reps)
    print(f"3. token_activations(128 tokens) {acts * 1000:.1f} ms vs forward to {sae.cfg.hook_name} "
          f"{fwd * 1000:.1f} ms: ratio {acts / fwd:.3f} (target <= 1.2)")


if __name__ == "__main__":
    main()
