# The real trainer over a longer stretch, as the recipe runs it: `clara train scp`, 80 steps of 8 x 2 from
# the shipped model, a checkpoint every 10 steps (TRAIN_FLAGS of the Makefile), --dtype auto (bf16 here),
# --compile, jemalloc with the Makefile's setting [AMD EPYC, avx512_bf16, no AMX, 2 cores].
# Data: the QA records of `clara synth --split train --seed 0 --limit 2000 --questions natural`.
set -u
cd /work/main
rm -rf /tmp/trun/long
LD_PRELOAD=$PWD/.venv/lib/python3.11/site-packages/ray/core/libjemalloc.so MALLOC_CONF=muzzy_decay_ms:-1,oversize_threshold:0 \
  /usr/bin/time -v .venv/bin/clara train scp /tmp/synth2k/qa.jsonl --init-from default --out /tmp/trun/long --steps 80 \
  --batch-size 8 --grad-accum 2 --no-dropout --save-every 10 --seed 0 --dtype auto --compile --json > /tmp/trun/long.json 2> /tmp/trun/long.err
echo "$(tail -1 /tmp/trun/long.json)"; grep -E "Maximum resident|Elapsed" /tmp/trun/long.err
.venv/bin/python - <<'PY'
import json
h = json.load(open('/tmp/trun/long/train_state.json'))['history']
for a, b in ((3, 20), (20, 40), (40, 60), (60, 80)):
    s = sum(r['seconds'] for r in h[a:b]); t = sum(r['tokens'] for r in h[a:b])
    print(f"steps {a + 1}-{b}: {t} tokens in {s:.1f} s of steps = {t / s:.0f} tokens/s")
s = sum(r['seconds'] for r in h[3:]); t = sum(r['tokens'] for r in h[3:])
print(f"steps 4-80: {t / s:.0f} tokens/s (step time only; the checkpoints are outside the steps' seconds)")
PY
