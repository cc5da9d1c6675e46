#!/usr/bin/env bash
# The curve's points beside the training run (train.sh): s0 at once, then each kept model as it
# appears, then the end. One point is docs/eval/2026-12-01/e5/point.sh over this run's folders.
cd "$(dirname "$0")/../../../.."  # the repository root
export D=.cache/e5x E=.cache/eval-e5x
P=docs/eval/2026-12-01/e5/point.sh
until [ -f $D/data/instruct.jsonl ]; do sleep 20; done
bash $P s0 default
for S in 80 160; do
  until [ -d $D/scp-steps/step-$S ]; do sleep 30; done  # the trainer renames the folder in when complete
  bash $P s$S $D/scp-steps/step-$S
done
until grep -q TRAIN-DONE $D/train.log; do sleep 30; done
THREADS=2 HELD1=1 bash $P final $D/scp
echo POINTS-DONE
