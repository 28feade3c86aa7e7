#!/usr/bin/env bash
# Peak RSS and wall time of stages/evaluate.py alone on the inputs of bench/eval_inputs.py.
#   bench/bench_evaluate.sh DIR     (DIR written by: python bench/eval_inputs.py --symbols N --out DIR)
set -euo pipefail
d=${1:?usage: bench/bench_evaluate.sh DIR}
rm -rf "$d/res" && mkdir -p "$d/res"
/usr/bin/time -f "evaluate: max RSS %M KiB, wall %e s" python stages/evaluate.py \
  --preds "$d/boosting.parquet" --blend "$d/blend.parquet" --walk-forward "$d/backtest.parquet" \
  --bars "$d/bars.parquet" --info "$d/info.json" --labels "$d/labels.parquet" \
  --segments "$d/segments.parquet" --oracle "$d/oracle.parquet" --metrics "$d/res/test.json" \
  --oracle-metrics "$d/res/oracle.json" --headline "$d/res/headline.json" \
  --predictions "$d/res/test.parquet" --plots "$d/res/plots" --tune "$d/tune.json" > "$d/res/stdout.txt"
