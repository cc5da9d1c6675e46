"""`python -m clara_cli.train.export SRC DST [bf16|fp16|fp32]`: a trained run -> a shippable model.

Drops the trainer state and casts adapters and token rows (bf16 by default: about half the
size of the fp32 masters), e.g. the last stage of `make train-default` into
clara_cli/default_model, which `checkpoint.load_model(None)` loads when it exists.
"""

from __future__ import annotations

import sys

from .loop import export_model


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        sys.exit("usage: python -m clara_cli.train.export SRC DST [bf16|fp16|fp32]")
    dst = export_model(args[0], args[1], dtype=args[2] if len(args) == 3 else "bf16")
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
