"""Run the clara CLI with hybrid's fusion as before 2026-12-07 (equal weights, ties by key)."""
import sys
import clara_cli.answer as answer
def rrf_old(rankings, k, c=answer.RRF_K, weights=None):
    fused = {}
    for ranked in rankings:
        for rank, (key, _) in enumerate(ranked, start=1):
            fused[key] = fused.get(key, 0.0) + 1.0 / (c + rank)
    return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
answer.rrf = rrf_old
from clara_cli.cli import cli
cli(sys.argv[1:])
