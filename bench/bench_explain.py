"""Explanations on the demo index: time per feature, scores of LLM explanations against the
automatic labels, and the seed's experiment (does searching "error" rank the feature that
turns a correct program's output into an error higher with explanations than with labels?).

Works on a copy of the index (--out), so data/demo/index is never written; rerunning resumes.

    EXPLORER_THREADS=1 python bench/bench_explain.py --features 4 --examples 4
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explorer.explain import explain_index  # noqa: E402
from explorer.files import write_json  # noqa: E402
from explorer.examples import CORRECT_PROGRAM  # noqa: E402
from explorer.index import FeatureIndex  # noqa: E402
from explorer.llm_client import LocalChat  # noqa: E402
from explorer.scoring import LocalJudge, negative_pool  # noqa: E402
from explorer.steering import GenerationSettings, Intervention, generate_pair  # noqa: E402
from explorer.workspace import DEMO_INDEX, open_workspace  # noqa: E402

PROGRAM = CORRECT_PROGRAM  # the first-visit page's program, whose output these clamps turn into errors
ERROR_WORDS = ("Error", "Traceback", "Exception")


def looks_like_error(text: str) -> bool:
    return any(w in text for w in ERROR_WORDS)


def spread(values: list[float]) -> str:
    if not values:
        return "none"
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return f"mean {statistics.mean(values):.3f}, quartiles {q[0]:.2f}/{q[1]:.2f}/{q[2]:.2f} (n={len(values)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", default=str(DEMO_INDEX))
    ap.add_argument("--out", default="/tmp/bench-explain-index", help="copy of the index that gets the explanations")
    ap.add_argument("--features", type=int, default=4, help="random live features to explain besides the 'error' hits")
    ap.add_argument("--examples", type=int, default=4, help="held-out activating examples per score")
    ap.add_argument("--negative-windows", type=int, default=32)
    ap.add_argument("--clamp", type=float, default=4.0, help="clamp value, x max activation, for the seed experiment")
    ap.add_argument("--query", default="error")
    args = ap.parse_args()

    out = Path(args.out)
    if not out.exists():
        shutil.copytree(args.index, out)
    ws = open_workspace("demo", index=str(out))
    index: FeatureIndex = ws.index
    lm, sae = ws.lm, ws.sae

    # 1) the seed experiment: which label hit turns the program's output into an error when
    # clamped (kept in the copy's seed.json, so that a resumed run does not redo it)
    hits = index.search(args.query, by="label", limit=50, explanations=False)
    seed_file = out / "seed.json"
    if seed_file.exists():
        seed = json.loads(seed_file.read_text())
    else:
        settings = GenerationSettings(max_new_tokens=24)
        max_acts = ws.max_acts()
        seed = {"clean": "", "steered": {}}
        for f in hits:
            iv = Intervention(f, "clamp", args.clamp, relative=True)
            res = generate_pair(lm, sae, PROGRAM, [iv], settings, max_acts)
            seed["clean"], seed["steered"][str(f)] = res.clean.text, res.steered.text
        write_json(seed_file, seed)
    erroring = [f for f in hits if looks_like_error(seed["steered"][str(f)]) and not looks_like_error(seed["clean"])]
    for f in hits:
        print(f"#{f} clamp {args.clamp:g}x -> {seed['steered'][str(f)][:60]!r}{'  <- error' if f in erroring else ''}")
    print(f"clean completion: {seed['clean'][:60]!r}; label hits for {args.query!r}: {hits}; erroring: {erroring}")

    # 2) explain the hits and a seeded sample of live features, with the demo model as explainer and judge
    live = [f for f in range(index.d_sae) if index.densities()[f] > 0 and f not in hits]
    import random

    sample = random.Random(0).sample(live, min(args.features, len(live)))
    features = hits + sample
    start = time.perf_counter()
    judge = LocalJudge(lm)
    negatives = negative_pool(lm, sae, index, args.negative_windows)
    print(f"negative pool of {args.negative_windows} windows: {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    done = explain_index(index, features, ["llm", "heuristic"], LocalChat(lm, sae), judge, negatives,
                         n_per_class=args.examples)
    wall = time.perf_counter() - start
    index.reload_explanations()
    recs = index.explanations()

    # 3) numbers
    llm = [recs[(f, "llm")] for f in features if (f, "llm") in recs]
    heur = [recs[(f, "heuristic")] for f in features if (f, "heuristic") in recs]
    for name, group in (("llm", llm), ("heuristic", heur)):
        for field in ("detection", "fuzzing", "detection_auc", "fuzzing_auc"):
            print(f"{name:9s} {field:13s} {spread([getattr(r, field) for r in group if getattr(r, field) is not None])}")
    print(f"explain seconds per feature: {spread([r.seconds for r in llm])}")
    print(f"score seconds per method per feature: {spread([r.score_seconds for r in llm + heur])}")
    with_expl = index.search(args.query, by="label", limit=50)
    for f in erroring:
        print(f"#{f} ({recs.get((f, 'llm')).text if (f, 'llm') in recs else '-'}): rank {hits.index(f) + 1} of "
              f"{len(hits)} by labels, {with_expl.index(f) + 1 if f in with_expl else 'absent'} with explanations")
    for f in hits:
        if (f, "llm") in recs:
            print(f"  #{f} label {index.label(f)!r} | llm {recs[(f, 'llm')].text!r} | {recs[(f, 'llm')].scores()}")
    print(f"SUMMARY features={len(features)} new_records={len(done)} wall={wall:.0f}s "
          f"llm_detection_mean={statistics.mean([r.detection for r in llm]):.3f} "
          f"heuristic_detection_mean={statistics.mean([r.detection for r in heur]):.3f} "
          f"llm_det_auc_mean={statistics.mean([r.detection_auc for r in llm]):.3f} "
          f"heuristic_det_auc_mean={statistics.mean([r.detection_auc for r in heur]):.3f} "
          f"erroring={erroring}")


if __name__ == "__main__":
    main()
