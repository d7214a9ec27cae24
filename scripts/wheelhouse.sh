#!/usr/bin/env bash
# Builds wheelhouse/: the wheels that latentlm needs on the air-gapped GPU node beyond what that
# node's image already has (CPython 3.12, manylinux x86_64, with torch, lightning, numpy, pandas,
# pyarrow, fsspec, huggingface-hub, click, httpx, protobuf, requests, pyyaml, typing-extensions, ...;
# see "Python packages already there" in the device notes). Only the missing packages and their
# missing runtime requirements are fetched, pinned to the versions in .venv, so the folder stays
# small enough to travel with the work tree. Idempotent: existing wheels are kept.
#
# On the node:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheelhouse/*.whl \
#     && export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail

cd "$(dirname "$0")/.."
OUT=${WHEELHOUSE:-wheelhouse}
PY=${PYTHON:-python3}
mkdir -p "$OUT"

# NAME==VERSION, one per line. Pure-python ones are py3-none-any; pydantic-core, multiprocess's
# cp312 build and wandb (its Go core inside) are manylinux x86_64 wheels.
PKGS=(
  # hydra
  hydra-core==1.3.8
  omegaconf==2.3.1
  # datasets (pyarrow, pandas, numpy, fsspec, huggingface-hub, xxhash, tqdm: on the node)
  datasets==5.2.0
  dill==0.4.1
  multiprocess==0.70.19
  # wandb (click, protobuf, requests, pyyaml, httpx, anyio, typing-extensions: on the node)
  wandb==0.31.0
  cwevals==0.0.1b1
  distro==1.9.0
  sniffio==1.3.1
  platformdirs==4.14.7
  pydantic==2.14.3
  pydantic-core==2.50.4
  annotated-types==0.8.0
  typing-inspection==0.4.5
  googleapis-common-protos==1.76.0
  opentelemetry-api==1.45.2
  opentelemetry-sdk==1.45.2
  opentelemetry-semantic-conventions==0.66b2
  opentelemetry-proto==1.45.2
  opentelemetry-exporter-otlp-proto-http==1.45.2
  opentelemetry-exporter-otlp-proto-common==1.45.2
  opentelemetry-exporter-otlp-common==0.66b2
  opentelemetry-exporter-http-transport==0.66b2
  # Hydra launchers: hydra/launcher=gpus (joblib) and slurm (submitit)
  hydra-joblib-launcher==1.2.0
  joblib==1.6.0
  cloudpickle==3.1.3
  hydra-submitit-launcher==1.2.0
  submitit==1.5.4
  # fused_loss=true (torch, triton, packaging: on the node)
  liger-kernel==0.8.5
)
ANTLR=antlr4-python3-runtime==4.9.3   # sdist only on PyPI: built here (pure python)

PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_24_x86_64
           manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64 any)
PLAT_ARGS=()
for p in "${PLATFORMS[@]}"; do PLAT_ARGS+=(--platform "$p"); done

# "name-version" as a wheel file name starts: lower case, "-" and "." in the name as "_".
key() { local n=${1%%==*}; n=${n,,}; echo "${n//[-.]/_}-${1##*==}"; }
wheel_key() { local b; b=$(basename "$1"); b=${b,,}; echo "${b%%-*}-$(cut -d- -f2 <<<"$b")"; }
have() {
  local k f
  k=$(key "$1")
  for f in "$OUT"/*.whl; do [[ -e $f && $(wheel_key "$f") == "$k" ]] && return 0; done
  return 1
}

fetched=()
for spec in "${PKGS[@]}"; do
  if have "$spec"; then continue; fi
  echo "fetching $spec"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --abi cp312 --abi abi3 --abi none "${PLAT_ARGS[@]}" -d "$OUT" "$spec"
  fetched+=("$spec")
done

if ! have "$ANTLR"; then
  echo "building $ANTLR"
  "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$OUT" "$ANTLR" \
    || "$PY" -m pip wheel -q --no-deps -w "$OUT" "$ANTLR"
  fetched+=("$ANTLR")
fi

# One version of each package: drop any wheel whose name-version is not in the list.
declare -A KEEP=()
for spec in "${PKGS[@]}" "$ANTLR"; do KEEP[$(key "$spec")]=1; done
for f in "$OUT"/*.whl; do
  [[ -e $f ]] || continue
  if [[ -z ${KEEP[$(wheel_key "$f")]:-} ]]; then echo "removing stale $(basename "$f")"; rm -f "$f"; fi
done

echo
if ((${#fetched[@]})); then echo "fetched: ${fetched[*]}"; else echo "fetched: nothing (all present)"; fi
echo "wheels in $OUT/:"
ls -1 "$OUT" | sed 's/^/  /'
echo "total: $(du -sh "$OUT" | cut -f1) ($(ls "$OUT"/*.whl | wc -l) wheels)"
echo
echo "install on the node:"
echo "  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $OUT/*.whl && export PYTHONPATH=/tmp/site:\$PWD"
