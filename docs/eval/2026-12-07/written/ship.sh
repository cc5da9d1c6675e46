#!/usr/bin/env bash
# A candidate default from a written-questions point (SRC, default wq-scp-3e-4: the fresh natural
# compressor + its natural QA epoch + an epoch of scp on the written QA, then the 40-step generator stage
# on the natural + written mix): the retrieval stage (query reasoner + center) against its memories, as
# `make train-retrieval` but over the natural + written scp file and 100 steps, then a bf16 export
# with every LoRA pair cut to rank 16 (the shipped size), then dev stores at the model's defaults,
# then (for the README's table only, once chosen on dev) the held-out questions.
#   ship.sh retrieval | ship.sh export | ship.sh dev | ship.sh heldout
#   SRC=wq2-scp-3e-4 NAME=ship2 DATA=data-nw2 ship.sh ...     (the second batch's point, S2)
#   RANK=N cuts to LoRA rank N at export (default 16; empty: no cut); RETRIEVERS: dev's retrievers
set -euo pipefail
cd "$(dirname "$0")/../../../.."  # the repository root
export D=.cache/e5x E=.cache/eval-e5x T=${THREADS:-2}
export OMP_NUM_THREADS=$T MKL_NUM_THREADS=$T
export LD_PRELOAD=$PWD/.venv/lib/python3.11/site-packages/ray/core/libjemalloc.so
export MALLOC_CONF=muzzy_decay_ms:-1,oversize_threshold:0
C=.venv/bin/clara; SRC=${SRC:-wq-scp-3e-4}; NAME=${NAME:-ship}; DATA=${DATA:-data-nw}
RET=$D/ret-$NAME; [ "$NAME" = ship ] && RET=$D/ret-wq  # the first candidate's folder
date -u
case $1 in
retrieval)
  $C train retrieval $D/$DATA/pretrain.jsonl --init-from $D/gen-$SRC --out $RET --max-examples 6000 \
    --steps 100 --batch-size 32 --save-every 25 --keep-every 25 --no-dropout --seed 0 --dtype auto ;;
export)
  # ours: `ask` reads the best source as text (selective expansion), as the shipped model; chosen on dev below
  R=${RANK-16}  # RANK= (empty): no cut, for a run already at the shipped rank (cut4.sh)
  .venv/bin/python -m clara_cli.train.export $RET $D/cand-$NAME bf16 ${R:+--rank $R} --expand 1 ;;
dev)
  $C --store $E/store-dev-$NAME update $E/dev.jsonl --model $D/cand-$NAME --dtype auto
  test -s $E/dev_qa_written-415.jsonl || head -n 415 data/dev_qa_written.jsonl > $E/dev_qa_written-415.jsonl  # as first chosen on
  for Q in data/dev_qa $E/dev_qa_written-415; do for X in 0 1; do for R in ${RETRIEVERS:-hybrid bm25}; do
    $C --store $E/store-dev-$NAME eval $Q.jsonl -k 5 --model $D/cand-$NAME --dtype auto --expand $X \
      --retriever $R --baseline none --report $E/$(basename $Q)-$NAME-$R-expand$X
  done; done; done ;;
heldout)
  $C --store $E/store-heldout-$NAME update $E/heldout.jsonl --model $D/cand-$NAME --dtype auto
  for RX in hybrid:1 hybrid:0 latent:1 latent:0; do
    $C --store $E/store-heldout-$NAME eval data/heldout_qa.jsonl -k 5 --model $D/cand-$NAME --dtype auto \
      --expand ${RX#*:} --retriever ${RX%:*} --baseline none --report $E/heldout-$NAME-${RX%:*}-expand${RX#*:}
  done ;;
esac
date -u
