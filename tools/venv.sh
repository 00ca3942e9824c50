#!/usr/bin/env bash
# Create (or reuse) .venv/ at the repository root with the pinned dependencies and eva_core
# installed in editable mode. Re-installs only when requirements.txt or eva_core/pyproject.toml
# changed since the last successful install, or when a project folder is added (the hash is in .venv/.eva_stamp).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3}"
stamp_src=$( (cat requirements.txt eva_core/pyproject.toml tools/venv.sh; ls -d projects/*/ 2>/dev/null) | sha256sum | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ "$(cat .venv/.eva_stamp 2>/dev/null)" = "$stamp_src" ]; then
  exit 0
fi
echo "[venv] installing pinned dependencies into $root/.venv (first time: a few minutes)" >&2
[ -x .venv/bin/python ] || "$py" -m venv .venv
quiet_pip() {  # the machine's pip config lists local indexes that may not exist: hide that noise
  .venv/bin/python -m pip install --quiet "$@" 2> >(grep -v "^WARNING: Location '" >&2)
}
quiet_pip --upgrade pip wheel "setuptools<81"
quiet_pip -r requirements.txt
# compat mode puts eva_core/ on sys.path, so `import eva_core` also works from the repo root
quiet_pip --no-deps -e eva_core --config-settings editable_mode=compat
# the task packages beside eva_core (video/, clip/ at the root; projects/*/ hold their own package)
# are importable from any directory, as in a detectron2 checkout with its projects on the path
site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
{ echo "$root"; for p in "$root"/projects/*/; do [ -d "$p" ] && echo "${p%/}"; done; } > "$site/eva_projects.pth"
echo "$stamp_src" > .venv/.eva_stamp
echo "[venv] ready" >&2
