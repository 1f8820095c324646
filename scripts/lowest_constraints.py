"""Print pip constraints pinning every runtime dependency (and every extra's) to its floor.

    python scripts/lowest_constraints.py > constraints.txt

``anyio>=4.4`` becomes ``anyio==4.4``: installing with these constraints tests the lowest
versions pyproject.toml declares. A dependency without a ``>=`` floor is left out.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

_FLOOR = re.compile(r"^\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*>=\s*([^,;\s]+)")


def floors(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        requirements.extend(extra)
    pins: dict[str, str] = {}
    for requirement in requirements:
        match = _FLOOR.match(requirement)
        if match and match.group(1).lower() != project["name"]:
            pins[match.group(1).lower()] = f"{match.group(1)}=={match.group(3)}"
    return sorted(pins.values())


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    sys.stdout.write("".join(f"{pin}\n" for pin in floors(root / "pyproject.toml")))
