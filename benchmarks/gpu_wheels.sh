#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with what the GPU machine lacks to run benchmarks/gpu_check.sh:
# the Python 3.12 manylinux wheels of resjax's dependencies that are not in its image, and
# Fashion-MNIST's four upstream archives (.whl/fashion-mnist/, for the trainer stage). Run it
# from the repository root, on a machine that reaches PyPI:
#   bash benchmarks/gpu_wheels.sh
# then carry .whl/ with the checkout and run the command line in benchmarks/README.md ("GPU").
#
# The GPU image (Python 3.12.3; jax 0.11.2 with CUDA, flax, optax, orbax-checkpoint, chex,
# torch 2.11, torchvision 0.26, numpy, absl-py, etils, protobuf, pyarrow, psutil, pyyaml, ...,
# listed in PRESENT below) has none of tensorflow-datasets, ml-collections, grain or
# array_record. The versions are the ones the Python 3.11 stack is tested with. protobuf
# travels too, but pip takes it only if the image's is older than googleapis-common-protos or
# grain accept. The last step checks that every requirement of every wheel here (extras
# included, markers for Python 3.12 on Linux) is either here or in the image.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(
  tensorflow-datasets==4.9.10 ml-collections==1.1.0 grain==0.2.18 array_record==0.8.6
  tensorboardX==2.6.5 importlib_resources==7.1.0
  # what they need that the image lacks
  dm-tree==0.1.10 immutabledict==4.3.1 simple_parsing==0.1.9 docstring-parser==0.18.0
  tensorflow-metadata==1.21.0 googleapis-common-protos==1.76.0 termcolor==3.3.0 toml==0.10.2
  portpicker==1.6.0 protobuf==7.36.2
)
SDISTS=(promise==2.3)  # no wheel on PyPI: built here (pure Python)
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl "${WHEELS[@]}" 2>&1 | { grep -v "^WARNING: Location" || true; }
python3 -m pip wheel -q --no-deps -w .whl "${SDISTS[@]}" 2>&1 | { grep -v "^WARNING: Location" || true; }
FMNIST=/usr/share/datasets/fashion-mnist  # Debian's dataset-fashion-mnist
if [[ ! -d $FMNIST ]]; then
  echo "no $FMNIST: apt-get install -y dataset-fashion-mnist (the trainer stage needs it)" >&2
  exit 1
fi
mkdir -p .whl/fashion-mnist
cp "$FMNIST"/*-ubyte.gz .whl/fashion-mnist/

python3 - <<'PY'
"""Every requirement of the wheels in .whl/ is met by .whl/ or the GPU image."""
import re
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

# The GPU image's packages (its pip list, 2026-11): the ones resjax's dependencies ask for.
PRESENT = set("""absl-py attrs chex cloudpickle einops etils flax fsspec jax jaxlib ml-dtypes
msgpack numpy opt-einsum optax orbax-checkpoint packaging pillow protobuf psutil pyarrow pyyaml
requests rich safetensors six tensorstore tqdm typing-extensions wrapt zipp matplotlib
humanize treescope simplejson""".split())
ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "os_name": "posix", "platform_machine": "x86_64",
       "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def requires(meta, extras):
    """The requirements a wheel's METADATA makes for these extras (and none)."""
    out = []
    for line in meta.splitlines():
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is None or any(req.marker.evaluate({**ENV, "extra": e})
                                         for e in ("", *extras)):
                out.append(req)
    return out


wheels = {}
for path in sorted(Path(".whl").glob("*.whl")):
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    name = norm(re.search(r"^Name: (.+)$", text, re.M).group(1))
    wheels[name] = text
known = set(wheels) | PRESENT
missing = []
for name, text in wheels.items():
    for req in requires(text, ()):
        dep = norm(req.name)
        if dep in wheels:
            extra_reqs = requires(wheels[dep], req.extras) if req.extras else []
        elif dep in PRESENT:
            try:  # the extras of a package in the image, read from this machine's copy
                import importlib.metadata as md
                extra_reqs = [Requirement(r) for r in (md.requires(req.name) or [])]
                extra_reqs = [r for r in extra_reqs if r.marker and any(
                    r.marker.evaluate({**ENV, "extra": e}) for e in req.extras)]
            except md.PackageNotFoundError:
                extra_reqs = []
        else:
            missing.append(f"{name} needs {req}")
            continue
        for sub in extra_reqs:
            if norm(sub.name) not in known:
                missing.append(f"{name} needs {req} -> {sub}")
size = sum(p.stat().st_size for p in Path(".whl").rglob("*") if p.is_file())
print(f".whl/: {len(wheels)} wheels + Fashion-MNIST, {size / 2**20:.1f} MiB")
if missing:
    print("not in .whl/ nor in the GPU image:\n  " + "\n  ".join(sorted(set(missing))))
    sys.exit(1)
print("every requirement is in .whl/ or in the GPU image")
PY
