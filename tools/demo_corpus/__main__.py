"""`python -m tools.demo_corpus --out data/corpus`: build the demo corpus from offline sources."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tools.demo_corpus.build import build_demo_corpus
from tools.demo_corpus.sources import SOURCES


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.demo_corpus",
                                     description="Build the demo corpus from offline sources.")
    parser.add_argument("--out", type=Path, required=True, help="output folder (corpus.jsonl, manifest.json)")
    parser.add_argument("--tokens", type=int, default=3_000_000, help="target size in tokens (~chars/4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sources", nargs="*", help=f"only these sources: {' '.join(s.name for s in SOURCES)}")
    parser.add_argument("--cache", type=Path, help="download cache (default OUT/sources)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    build_demo_corpus(args.out, args.tokens, args.seed, args.sources, args.cache)


if __name__ == "__main__":
    main()
