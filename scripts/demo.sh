#!/usr/bin/env bash
# The main job on the default dataset: train (+ report) -> evaluate -> index -> search.
# Each step is the CLI command a user would run; everything lands in runs/mnist30/.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
de=.venv/bin/deepembed
run=runs/mnist30
start=$(date +%s)
step() { echo; echo "\$ deepembed $*"; "$de" "$@"; }

# A finished run is kept (train refuses to replace it without --overwrite): a second
# `make demo` re-runs only the quick steps. `rm -rf runs/mnist30` to train again.
if [ -f "$run/metrics.json" ]; then
    echo "$run is already trained; keeping it (rm -rf $run, or train with --overwrite, to retrain)"
else
    step train configs/mnist30.yaml
fi
# The trainer wrote report.html; a run trained by an older version gets it now.
[ -f "$run/report.html" ] || step report "$run"
step evaluate "$run/embeddings/test.npz"
step index build "$run/embeddings/test.npz"
# One example query by item id (the first unseen-class item), and one by image file.
step search "$run/index" --id 0 -k 5
.venv/bin/python - "$run/query.png" <<'PY'
import sys
from deepembed import data
from PIL import Image
image, label = data.open("mnist30", split="test")[7000]
Image.fromarray((image[0].numpy() * 255).astype("uint8")).save(sys.argv[1])
print(f"wrote {sys.argv[1]} (an unseen-class test image, label {label})")
PY
step search "$run/index" --image "$run/query.png" -k 5

echo
echo "demo finished in $(( $(date +%s) - start )) s. Results in $run/:"
echo "  report.html (open it in a browser: metrics, curves, retrieval grids, the embedding map)"
echo "  config.yaml (resolved config)  history.jsonl  metrics.json  evaluation.json  model/"
echo "  embeddings/  index/  query.png"
echo
echo "Search it in a browser (the web page at http://127.0.0.1:8000/, the API at /docs):"
echo "  .venv/bin/deepembed serve $run"
