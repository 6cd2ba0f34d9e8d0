#!/usr/bin/env bash
# Install an optional dependency group of pyproject.toml into .venv without changing anything already installed.
#
#   bash scripts/install_extras.sh bench    # what `make bench` runs after scripts/setup_venv.sh
#
# Every package already in the venv (the pinned stack of requirements/cpu.txt and its dependencies) is passed to pip
# as a constraint at its installed version, so an extra that would need another version of one of them fails here,
# with pip's message, instead of quietly replacing it.
set -euo pipefail
cd "$(dirname "$0")/.."

GROUP=${1:?usage: scripts/install_extras.sh GROUP}
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
PIP="$PY -m pip --disable-pip-version-check"
PIP_ARGS=${POSTVL_PIP_ARGS:-}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" - "$GROUP" > "$tmp/requirements.txt" <<'PYTHON'
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the TOML reader pip itself ships
    from pip._vendor import tomli as tomllib

groups = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]
group = sys.argv[1]
if group not in groups:
    sys.exit(f"pyproject.toml has no optional dependency group {group!r}; groups: {', '.join(sorted(groups))}")
print("\n".join(groups[group]))
PYTHON
# editable installs (postvl itself) cannot be constraints; the rest are pinned at what is installed
$PIP freeze --exclude-editable | grep -v -E '^(-e |postvl[ =@])' > "$tmp/installed.txt"
$PIP install -q $PIP_ARGS -c "$tmp/installed.txt" -r "$tmp/requirements.txt"
echo "[extras] $GROUP: $(tr '\n' ' ' < "$tmp/requirements.txt")installed in $VENV"
