#!/usr/bin/env bash
# Written questions about training paragraphs (data/train_qa_written.jsonl), on top of the dev-chosen
# model of the 2026-12-07 curve (the fresh natural compressor + its natural QA epoch at lr 3e-4,
# .cache/e5x/scp-fnat-qa; dev 27.5 memory only). Two jobs side by side, one thread each:
#   run.sh data     # the synth files: natural + written (nw), written only (w), a seeded mix of nw's instruct
#   run.sh gen      # G: the same 40-step generator stage as every point, on the mix instead of natural only
#   run.sh scp LR   # S: + 1 epoch of scp on the written QA records at LR, then G's generator stage
#   run.sh data2    # after the second batch of written questions (commit 5acdd1d): nw2, w2, and w2's QA
#                   # records about paragraphs the first batch did not cover (qa-new.jsonl)
#   run.sh scp2 LR  # S2: from S, 1 epoch of scp on qa-new at LR, then the generator stage on nw2's mix
#   run.sh scp3 LR  # S3: from S2, a second epoch of scp over all the written QA records (qa.jsonl of w2) at LR
#   run.sh gen2 N   # G2: S2's compressor with an N-step generator stage on nw2's mix instead of 40
#   run.sh data3    # after the third batch (the rest of the training paragraphs): nw3, w3, and w3's QA
#                   # records about paragraphs the first two batches did not cover (qa-new.jsonl)
#   run.sh scp4 LR FROM   # S4: from FROM's compressor (scp-wq2-LR or scp-wq3-LR), 1 epoch of scp on
#                   # w3's qa-new at LR, then the generator stage on nw3's mix
#   run.sh scp5 LR  # S5: from S4 (scp-wq4-LR), a second epoch over w3's qa-new at LR, then the generator
#                   # stage on nw3's mix: every written question seen twice, in another order (--seed 1; rule: RULE-S5.md)
# Each point stops after dev (DEV_ONLY=1); the held-out runs are heldout.sh.
# The first three used data/train_qa_written.jsonl as of commit 3c3cc3c (3,530 questions), data2 and
# scp2 the file as of commit 5acdd1d (7,121; its first 7,121 lines since), data3 the whole file (19,693).
set -euo pipefail
cd "$(dirname "$0")/../../../.."  # the repository root
export D=.cache/e5x E=.cache/eval-e5x T=${THREADS:-1}
export OMP_NUM_THREADS=$T MKL_NUM_THREADS=$T
export LD_PRELOAD=$PWD/.venv/lib/python3.11/site-packages/ray/core/libjemalloc.so
export MALLOC_CONF=muzzy_decay_ms:-1,oversize_threshold:0
C=.venv/bin/clara; W=data/train_qa_written.jsonl
date -u
case $1 in
data)
  $C synth --split train --seed 0 --questions natural --written $W --out $D/data-nw
  $C synth --split train --seed 0 --questions written --written $W --out $D/data-w
  grep '^{"data_type": "qa"' $D/data-w/pretrain.jsonl > $D/data-w/qa.jsonl
  .venv/bin/python -c "import random,sys; l=open(sys.argv[1]).readlines(); random.Random(0).shuffle(l); open(sys.argv[2],'w').writelines(l)" \
    $D/data-nw/instruct.jsonl $D/data-nw/instruct-mix.jsonl
  wc -l $D/data-nw/instruct-mix.jsonl $D/data-w/qa.jsonl $D/data-w/instruct.jsonl ;;
data2)
  $C synth --split train --seed 0 --questions natural --written $W --out $D/data-nw2
  $C synth --split train --seed 0 --questions written --written $W --out $D/data-w2
  grep '^{"data_type": "qa"' $D/data-w2/pretrain.jsonl | grep -vxFf $D/data-w/qa.jsonl > $D/data-w2/qa-new.jsonl
  .venv/bin/python -c "import random,sys; l=open(sys.argv[1]).readlines(); random.Random(0).shuffle(l); open(sys.argv[2],'w').writelines(l)" \
    $D/data-nw2/instruct.jsonl $D/data-nw2/instruct-mix.jsonl
  wc -l $D/data-nw2/instruct-mix.jsonl $D/data-w2/qa-new.jsonl ;;
scp2)
  LR=$2
  $C train scp $D/data-w2/qa-new.jsonl --init-from $D/scp-wq-$LR --out $D/scp-wq2-$LR --epochs 1 --lr "$LR" \
    --batch-size 8 --grad-accum 2 --save-every 10 --no-dropout --seed 0 --dtype auto --compile
  echo SCP-DONE; date -u
  INSTRUCT=$D/data-nw2/instruct-mix.jsonl DEV_ONLY=${DEV_ONLY-1} THREADS=$T \
    bash docs/eval/2026-12-01/e5/point.sh wq2-scp-$LR $D/scp-wq2-$LR ;;
data3)
  $C synth --split train --seed 0 --questions natural --written $W --out $D/data-nw3
  $C synth --split train --seed 0 --questions written --written $W --out $D/data-w3
  grep '^{"data_type": "qa"' $D/data-w2/pretrain.jsonl > $D/data-w2/qa.jsonl
  grep '^{"data_type": "qa"' $D/data-w3/pretrain.jsonl | grep -vxFf $D/data-w2/qa.jsonl > $D/data-w3/qa-new.jsonl
  .venv/bin/python -c "import random,sys; l=open(sys.argv[1]).readlines(); random.Random(0).shuffle(l); open(sys.argv[2],'w').writelines(l)" \
    $D/data-nw3/instruct.jsonl $D/data-nw3/instruct-mix.jsonl
  wc -l $D/data-nw3/instruct-mix.jsonl $D/data-w3/qa-new.jsonl ;;
scp4|scp5)
  # scp4: FROM ($3) -> scp-wq4-LR, seed 0; scp5: scp-wq4-LR -> scp-wq5-LR, seed 1 (the same records again)
  LR=$2; N=${1#scp}; FROM=${3:-scp-wq4-$LR}; SEED=$(( N == 5 ))
  $C train scp $D/data-w3/qa-new.jsonl --init-from $D/$FROM --out $D/scp-wq$N-$LR --epochs 1 --lr "$LR" \
    --batch-size 8 --grad-accum 2 --save-every 10 --no-dropout --seed $SEED --dtype auto --compile
  echo SCP-DONE; date -u
  INSTRUCT=$D/data-nw3/instruct-mix.jsonl DEV_ONLY=${DEV_ONLY-1} THREADS=$T \
    bash docs/eval/2026-12-01/e5/point.sh wq$N-scp-$LR $D/scp-wq$N-$LR ;;
scp3)
  LR=$2
  grep '^{"data_type": "qa"' $D/data-w2/pretrain.jsonl > $D/data-w2/qa.jsonl
  $C train scp $D/data-w2/qa.jsonl --init-from $D/scp-wq2-$LR --out $D/scp-wq3-$LR --epochs 1 --lr "$LR" \
    --batch-size 8 --grad-accum 2 --save-every 10 --no-dropout --seed 0 --dtype auto --compile
  echo SCP-DONE; date -u
  INSTRUCT=$D/data-nw2/instruct-mix.jsonl DEV_ONLY=${DEV_ONLY-1} THREADS=$T \
    bash docs/eval/2026-12-01/e5/point.sh wq3-scp-$LR $D/scp-wq3-$LR ;;
gen2)
  INSTRUCT=$D/data-nw2/instruct-mix.jsonl DEV_ONLY=${DEV_ONLY-1} THREADS=$T GEN_STEPS=$2 \
    bash docs/eval/2026-12-01/e5/point.sh wq2-gen$2 $D/scp-wq2-3e-4 ;;
gen)
  INSTRUCT=$D/data-nw/instruct-mix.jsonl DEV_ONLY=${DEV_ONLY-1} THREADS=$T \
    bash docs/eval/2026-12-01/e5/point.sh wq-gen $D/scp-fnat-qa ;;
scp)
  LR=$2
  $C train scp $D/data-w/qa.jsonl --init-from $D/scp-fnat-qa --out $D/scp-wq-$LR --epochs 1 --lr "$LR" \
    --batch-size 8 --grad-accum 2 --save-every 10 --no-dropout --seed 0 --dtype auto --compile
  echo SCP-DONE; date -u
  INSTRUCT=$D/data-nw/instruct-mix.jsonl DEV_ONLY=${DEV_ONLY-1} THREADS=$T \
    bash docs/eval/2026-12-01/e5/point.sh wq-scp-$LR $D/scp-wq-$LR ;;
esac
date -u
