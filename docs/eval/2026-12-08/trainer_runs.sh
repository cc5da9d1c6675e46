# The real trainer on this machine: `clara train scp`, 16 steps of 8 x 2 from the shipped model, --dtype auto,
# --compile (its first step inside the totals), jemalloc with the Makefile's setting; once as the CPU is
# (AMD EPYC, avx512_bf16, no AMX: auto = bf16) and once capped to AVX2 (auto = fp32).
# Data: the QA records of `clara synth --split train --seed 0 --limit 2000 --questions natural`.
set -u
cd /work/main
D=/tmp/synth2k/qa.jsonl
export LD_PRELOAD=$PWD/.venv/lib/python3.11/site-packages/ray/core/libjemalloc.so MALLOC_CONF=muzzy_decay_ms:-1,oversize_threshold:0
for kind in ${KINDS:-native avx2}; do
  rm -rf /tmp/trun/$kind; mkdir -p /tmp/trun
  caps=""; [ $kind = avx2 ] && caps="ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2"
  env $caps /usr/bin/time -v .venv/bin/clara train scp $D --init-from default --out /tmp/trun/$kind --steps 16 \
    --batch-size 8 --grad-accum 2 --no-dropout --save-every 100 --dtype auto --compile --json > /tmp/trun/$kind.json 2> /tmp/trun/$kind.err
  echo "$kind: $(tail -1 /tmp/trun/$kind.json)"; grep -E "Maximum resident|Elapsed" /tmp/trun/$kind.err
  .venv/bin/python -c "
import json,statistics as st; h=json.load(open('/tmp/trun/$kind/train_state.json'))['history']; s=[r['seconds'] for r in h]
print('$kind first 3 steps', s[:3], 'steps 4-16 median', round(st.median(s[3:]),2), 's, sum', round(sum(s[3:]),1), 's')
t=[r.get('tokens') for r in h]
if all(t): print('$kind tokens per step', t, '; steps 4-16:', sum(t[3:]), 'tokens,', round(sum(t[3:])/sum(s[3:]),1), 'tokens/s')"
done
