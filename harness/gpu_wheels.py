"""The wheels the GPU image lacks (``make gpu-wheels``, docs/gpu.md): Hydra, its OmegaConf,
antlr4 and PyYAML, and xformers, for CPython 3.12 on manylinux x86_64, each at the version
pinned in pyproject.toml or installed in ``.venv``; downloaded here (with network) into
``.gpu-wheels/``, checked complete, carried to the GPU machine with the tree.
Standard library only: it runs where nothing else is installed yet.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20
WHEELS_DIR = ".gpu-wheels"
WHEELS_LIST = "wheels.json"  # the required distributions and versions, written by `wheels`
WHEELS_LIMIT = 64 * MIB  # what may travel with the working tree to the GPU machine
PYTHON = (3, 12)  # the GPU image's interpreter
GLIBC = (2, 28)  # the oldest glibc the image's torch (manylinux_2_28) runs on
PLATFORM = "manylinux_2_28_x86_64"
PINNED = ("hydra-core", "xformers")  # versions from pyproject.toml
INSTALLED = ("omegaconf", "antlr4-python3-runtime", "PyYAML")  # versions from .venv
SDIST_ONLY = frozenset({"antlr4-python3-runtime"})  # PyPI has no wheel: built here


# --- the wheel set -------------------------------------------------------------------------

def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them (``PyYAML`` -> ``pyyaml``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Wheel:
    """A wheel file's name, parsed: distribution, version and its compressed tag sets."""

    file: str
    dist: str
    version: str
    pythons: tuple[str, ...]
    abis: tuple[str, ...]
    platforms: tuple[str, ...]


def parse_wheel(file: str) -> Wheel:
    """Parse ``name-version[-build]-python-abi-platform.whl``; ValueError if malformed."""
    parts = file.removesuffix(".whl").split("-")
    if not file.endswith(".whl") or len(parts) not in (5, 6):
        raise ValueError(f"{file}: not a wheel file name (name-version-python-abi-platform.whl)")
    py, abi, plat = (tuple(p.split(".")) for p in parts[-3:])
    return Wheel(file, normalize(parts[0]), parts[1], py, abi, plat)


def python_ok(tag: str, abi: str, python: tuple[int, int] = PYTHON) -> bool:
    """Whether CPython ``python`` accepts a wheel's python and ABI tag pair."""
    match = re.fullmatch(r"(py|cp)(\d)(\d*)", tag)
    if not match or int(match.group(2)) != python[0]:
        return False
    generic, minor = match.group(1) == "py", match.group(3)
    here = f"cp{python[0]}{python[1]}"
    if abi == "none" and generic:  # py3, or py3X for X up to ours
        return not minor or int(minor) <= python[1]
    if abi == "abi3":  # the stable ABI of cp3X for X up to ours
        return not generic and bool(minor) and int(minor) <= python[1]
    return tag == here and abi in ("none", here)


def platform_ok(tag: str, glibc: tuple[int, int] = GLIBC) -> bool:
    """Whether a Linux x86_64 machine with ``glibc`` accepts a wheel's platform tag."""
    legacy = {"manylinux1_x86_64": (2, 5), "manylinux2010_x86_64": (2, 12),
              "manylinux2014_x86_64": (2, 17)}
    if tag == "any":
        return True
    if tag in legacy:
        return legacy[tag] <= glibc
    match = re.fullmatch(r"manylinux_(\d+)_(\d+)_x86_64", tag)
    return bool(match) and (int(match.group(1)), int(match.group(2))) <= glibc


def compatible(w: Wheel, python: tuple[int, int] = PYTHON, glibc: tuple[int, int] = GLIBC) -> bool:
    """Whether pip on that Python and glibc would install the wheel."""
    return (any(python_ok(p, a, python) for p in w.pythons for a in w.abis)
            and any(platform_ok(p, glibc) for p in w.platforms))


@dataclass(frozen=True)
class WheelSet:
    """What a wheel folder holds against what is required: sizes, total and the problems."""

    sizes: dict[str, int]
    problems: tuple[str, ...]

    @property
    def total(self) -> int:
        """The wheels' total size in bytes."""
        return sum(self.sizes.values())


def check_wheels(folder: Path, required: dict[str, str], python: tuple[int, int] = PYTHON,
                 limit: int = WHEELS_LIMIT) -> WheelSet:
    """Every required distribution has exactly one wheel, at its version, that ``python``
    on manylinux x86_64 installs; no other wheel; the total under ``limit``."""
    want = {normalize(k): v for k, v in required.items()}
    files = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    problems, found = [], {}
    for path in files:
        try:
            w = parse_wheel(path.name)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        found.setdefault(w.dist, []).append(w)
        if w.dist not in want:
            problems.append(f"{w.file}: {w.dist} is not required (it would be installed too)")
        elif w.version != want[w.dist]:
            problems.append(f"{w.file}: version {w.version}, required {want[w.dist]}")
        if not compatible(w, python):
            problems.append(f"{w.file}: its tags do not install on CPython "
                            f"{python[0]}.{python[1]} manylinux x86_64")
    for dist in want:
        if len(found.get(dist, [])) != 1:
            problems.append(f"{dist}: {len(found.get(dist, []))} wheels, exactly one required")
    sizes = {p.name: p.stat().st_size for p in files}
    if sum(sizes.values()) >= limit:
        problems.append(f"total {sum(sizes.values()) / MIB:.1f} MiB: over {limit / MIB:.0f} MiB")
    return WheelSet(sizes, tuple(problems))


def required_versions(root: Path = ROOT) -> dict[str, str]:
    """Distribution -> version: the pins of pyproject.toml for PINNED, and what this
    interpreter has installed (``.venv``) for INSTALLED."""
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {normalize(d.split("==")[0]): d.split("==")[1].strip() for d in deps if "==" in d}
    out = {name: pins[normalize(name)] for name in PINNED}
    out.update({name: importlib.metadata.version(name) for name in INSTALLED})
    return out


def download(required: dict[str, str], dest: Path, python: str = sys.executable) -> None:
    """Fetch the wheels into ``dest`` (replaced as a whole once all are there); build the
    sdist-only ones here with ``pip wheel --no-deps``; record the set in WHEELS_LIST."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=dest.name + ".") as tmp:
        pip = [python, "-m", "pip", "--disable-pip-version-check"]
        binary = [f"{d}=={v}" for d, v in required.items() if d not in SDIST_ONLY]
        subprocess.run([*pip, "download", "--no-deps", "--only-binary=:all:",
                        "--python-version", f"{PYTHON[0]}.{PYTHON[1]}", "--platform", PLATFORM,
                        "--implementation", "cp", "--abi", f"cp{PYTHON[0]}{PYTHON[1]}",
                        "--abi", "abi3", "--abi", "none", "-d", tmp, *binary], check=True)
        for d in sorted(SDIST_ONLY & set(required)):
            subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp,
                            f"{d}=={required[d]}"], check=True)
        for path in Path(tmp).iterdir():
            if path.suffix != ".whl":
                path.unlink()
        listing = {"python": f"{PYTHON[0]}.{PYTHON[1]}", "platform": PLATFORM,
                   "required": required}
        (Path(tmp) / WHEELS_LIST).write_text(json.dumps(listing, indent=1) + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        Path(tmp).chmod(0o755)
        Path(tmp).rename(dest)


def read_required(folder: Path) -> dict[str, str]:
    """The required set recorded by ``wheels`` (empty if it never ran)."""
    path = folder / WHEELS_LIST
    return json.loads(path.read_text())["required"] if path.exists() else {}


def report_wheels(dest: Path, check_only: bool = False) -> int:
    """Download the wheel set (unless ``check_only``), then print it with sizes, the total
    and any problem; 1 if the set is incomplete."""
    required = required_versions()
    if not check_only:
        download(required, dest)
    found = check_wheels(dest, required)
    for name, size in sorted(found.sizes.items()):
        print(f"{size / MIB:8.2f} MiB  {name}")
    print(f"{found.total / MIB:8.2f} MiB  total in {dest} (limit {WHEELS_LIMIT / MIB:.0f} "
          f"MiB with the tree)")
    wanted = ", ".join(f"{d}=={v}" for d, v in required.items())
    print(f"required for CPython {PYTHON[0]}.{PYTHON[1]} {PLATFORM}: {wanted}")
    for problem in found.problems:
        print(f"problem: {problem}", file=sys.stderr)
    print("complete" if not found.problems else f"{len(found.problems)} problems")
    return 1 if found.problems else 0
