#!/usr/bin/env bash
# CI: a second virtualenv holding sae-lens, for the SAELens round trip of tests/test_export.py.
# sae-lens pulls in transformer-lens, wandb and ~50 more packages that the project does not
# need, so they stay out of the test venv. Prints the venv's python on stdout (everything else
# goes to stderr), for:   SAE_LENS_PYTHON="$(.ci/saelens-venv.sh /tmp/ci-saelens-venv)"
# Reuses an existing venv that already holds the pinned sae-lens.
set -euo pipefail
VENV="${1:-/tmp/saelens-venv}"
SAE_LENS_VERSION="${SAE_LENS_VERSION:-6.54.12}"   # the release engine/export.py was tested against
{
    if ! "$VENV/bin/python" -c "import sys, importlib.metadata as m; sys.exit(m.version('sae-lens') != '$SAE_LENS_VERSION')" 2>/dev/null; then
        python3 -m venv "$VENV"
        export PIP_DISABLE_PIP_VERSION_CHECK=1
        "$VENV/bin/pip" install -q torch==2.13.0
        "$VENV/bin/pip" install -q "sae-lens==$SAE_LENS_VERSION"
    fi
    "$VENV/bin/python" -c "import sae_lens; print('sae-lens', sae_lens.__version__, 'in $VENV')"
} >&2
echo "$VENV/bin/python"
