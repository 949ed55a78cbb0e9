#!/usr/bin/env bash
# Build the sdist and the wheel, check their metadata, and install the wheel in a fresh
# virtual environment: the practitioner's floor with torch alone, then the lab with the
# `course` extra. A wheel that misses a module or the lab's data files fails here.
#
#   scripts/check_wheel.sh
#
# torch is installed first at the version requirements.txt pins (set TORCH_INDEX_URL to
# PyTorch's CPU index on a machine where plain `pip install torch==...` would take a CUDA
# build), so the wheel's own `torch>=2.6` is already satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
quiet() {  # run a command, show its output only if it fails
    "$@" >"$work/last.log" 2>&1 || { cat "$work/last.log"; return 1; }
}

echo "=== build the sdist and the wheel (the wheel from the sdist), check their metadata"
quiet python -m build --outdir "$work/dist" .
wheel=$(ls "$work"/dist/*.whl)

python - "$wheel" "$work"/dist/*.tar.gz <<'PY'
import email, pathlib, sys, tarfile, tomllib, zipfile
wheel, sdist = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
project = tomllib.loads(pathlib.Path("pyproject.toml").read_text())["project"]
archive = zipfile.ZipFile(wheel)
inside = set(archive.namelist())
info = next(n for n in inside if n.endswith(".dist-info/METADATA"))
meta = email.message_from_bytes(archive.read(info))
assert meta["Name"] == project["name"] and meta["Version"] == project["version"], meta["Name"]
assert meta["License-Expression"] == project["license"], meta["License-Expression"]
assert meta["Requires-Python"] == project["requires-python"]
assert meta["Description-Content-Type"] == "text/markdown", "no Markdown description"
assert "Gradient clipping" in meta.get_payload(), "the README is not the description"
plain = sorted(r for r in meta.get_all("Requires-Dist") if "extra ==" not in r)
assert plain == sorted(project["dependencies"]), plain
extras = set(meta.get_all("Provides-Extra"))
assert extras == set(project["optional-dependencies"]), extras
assert any(n.endswith("licenses/LICENSE") for n in inside), "the wheel carries no LICENSE"
with tarfile.open(sdist) as tar:
    in_sdist = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
assert {"LICENSE", "pyproject.toml", "README.md"} <= in_sdist, "the sdist misses project files"
print(f"metadata: {meta['Name']} {meta['Version']}, {meta['License-Expression']}, "
      f"requires {plain}, extras {sorted(extras)}")
package = pathlib.Path("clipping_lib")
wanted = {p.as_posix() for p in package.rglob("*") if p.suffix in {".py", ".npz"}}
missing = sorted(wanted - inside)
assert not missing, f"{wheel.name} misses {missing}"
print(f"{wheel.name}: all {len(wanted)} modules and data files of clipping_lib are inside")
PY

echo "=== a fresh virtual environment with torch only, then the wheel"
python -m venv "$work/venv"
py="$work/venv/bin/python"
torch_pin=$(grep -E '^torch==' "$repo/requirements.txt")
quiet "$py" -m pip install --disable-pip-version-check ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$torch_pin"
"$py" -m pip freeze | sort >"$work/before.txt"
quiet "$py" -m pip install --disable-pip-version-check "$wheel"
"$py" -m pip freeze | sort >"$work/after.txt"
added=$(comm -13 "$work/before.txt" "$work/after.txt" | sed -E 's/[=@ ].*//' | sort | tr '\n' ' ')
echo "installing the wheel beside torch added: $added"
[ "$added" = "clipping-lib numpy " ] || [ "$added" = "clipping_lib numpy " ] || {
    echo "the practitioner's floor must pull torch and numpy only"; exit 1; }
echo "size of the environment (torch + the library): $(du -sh "$work/venv" | cut -f1)"

cd "$work"  # away from the checkout, so the installed copy is imported
"$py" - <<'PY'
import importlib, importlib.util, pkgutil
import clipping_lib
assert "site-packages" in clipping_lib.__file__, clipping_lib.__file__
names = [i.name for i in pkgutil.iter_modules(clipping_lib.__path__, "clipping_lib.")]
for name in names:
    if name != "clipping_lib.lab":
        importlib.import_module(name)
for absent in ("matplotlib", "ipywidgets", "PIL", "sklearn", "IPython"):
    assert importlib.util.find_spec(absent) is None, f"{absent} came with the floor"
print(f"the practitioner's floor imports from the wheel: {len(names) - 1} modules")
PY

echo "=== the lab bench, with the course extra"
quiet "$py" -m pip install --disable-pip-version-check "$wheel[course]"
"$py" - <<'PY'
import importlib, pkgutil
import clipping_lib.lab
from clipping_lib.lab.sweep import SWEEP_PATH, load_sweep
names = [i.name for i in pkgutil.walk_packages(clipping_lib.lab.__path__, "clipping_lib.lab.")]
for name in names:
    importlib.import_module(name)
assert SWEEP_PATH.is_file(), SWEEP_PATH
load_sweep(SWEEP_PATH)
print(f"the lab imports from the wheel: {len(names)} modules, and its cached sweep loads")
PY
echo "=== the wheel check passed"
