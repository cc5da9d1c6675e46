"""`python -m clara_cli.train.export SRC DST [bf16|fp16|fp32] [--rank R] [--expand N]`: a trained run -> a shippable model.

Drops the trainer state and casts adapters and token rows (bf16 by default: about half the
size of the fp32 masters), e.g. the last stage of `make train-default` into
clara_cli/default_model, which `checkpoint.load_model(None)` loads when it exists. With
--rank, every LoRA pair is cut to its best rank-R product (a LoRA r 64 run at r 16 is a
quarter of the size; docs/TRAINING.md measures what it costs). --expand N records how many sources
`ask` reads as raw text by default (ours, selective expansion; chosen on the dev split).
"""

from __future__ import annotations

import argparse

from .loop import export_model


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m clara_cli.train.export", description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("dtype", nargs="?", default="bf16", choices=("bf16", "fp16", "fp32"))
    ap.add_argument("--rank", type=int, default=None, help="cut every LoRA pair to this rank (SVD)")
    ap.add_argument("--expand", type=int, default=None,
                    help="sources `ask` reads as raw text by default (the model's config.expand)")
    args = ap.parse_args(argv)
    if args.rank is not None and args.rank < 1:
        ap.error("--rank must be at least 1")
    if args.expand is not None and args.expand < 0:
        ap.error("--expand must be 0 or more")
    dst = export_model(args.src, args.dst, dtype=args.dtype, rank=args.rank, expand=args.expand)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
