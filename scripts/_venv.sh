# Sourced by scripts/serve and scripts/test: make .venv (Python >= 3.11) and install greenfork into it.
# Usage: GF_EXTRAS=test . scripts/_venv.sh   (GF_EXTRAS: the pyproject extras to install)
set -eu
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "greenfork needs Python 3.11 or newer as '$PY' (set PYTHON=/path/to/python3.11)" >&2
  exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
EXTRAS=${GF_EXTRAS:-}
SPEC="$ROOT"
[ -n "$EXTRAS" ] && SPEC="$ROOT[$EXTRAS]"
# A stamp of pyproject.toml skips the (slow) reinstall when nothing changed.
# Strict editable mode links each module at install time, so a new module
# needs a reinstall too: the stamp records pyproject.toml and the module list.
STAMP="$VENV/.greenfork-installed-${EXTRAS:-base}"
WANT=$(cd "$ROOT" && { cat pyproject.toml; find master workers metrics -name '*.py' -o -name py.typed | sort; } | cksum)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade "pip>=24" "setuptools>=68" wheel
  # strict editable mode: mypy and other static tools see the mapped greenfork.* packages
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    -e "$SPEC" --config-settings editable_mode=strict
  echo "$WANT" > "$STAMP"
fi
