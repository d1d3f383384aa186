"""docs/architecture.md's map stays true: every module of the package is named in the row of
its room (the folder that holds it), and every room of the package has a row."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAP = (ROOT / "docs" / "architecture.md").read_text()


def _rows() -> dict[str, str]:
    """Room ("voxline/worker/", "voxline/" for the top) -> the row's text."""
    rows = {}
    for line in MAP.splitlines():
        if match := re.match(r"\| `(voxline/[a-z_/]*)`(?: \(top\))? \| (.*) \|$", line):
            rows[match[1]] = match[2]
    return rows


def _room_of(module: Path, rows: dict[str, str]) -> str:
    """The deepest room with a row that holds `module`."""
    folder = module.parent.relative_to(ROOT).as_posix() + "/"
    while folder not in rows and folder.count("/") > 1:
        folder = folder.rsplit("/", 2)[0] + "/"
    return folder


def test_every_module_is_named_in_its_rooms_row() -> None:
    rows = _rows()
    missing = []
    for module in sorted((ROOT / "voxline").rglob("*.py")):
        if module.name == "__init__.py" and module.parent.name != "engines":
            continue  # a package is named by its folder
        room = _room_of(module, rows)
        row = rows.get(room, "")
        inner = module.relative_to(ROOT / room).as_posix()
        # A module of a sub-folder without its own row is named with its folder (`kokoro/`).
        names = (
            {f"`{inner}`", f"`{module.name}`"}
            if "/" not in inner
            else {f"`{inner.split('/')[0]}/`"}
        )
        if not any(name in row for name in names):
            missing.append(f"{module.relative_to(ROOT)} (room {room})")
    assert missing == [], missing


def test_every_package_folder_is_a_room_or_named_in_one() -> None:
    rows = _rows()
    for folder in sorted((ROOT / "voxline").rglob("__init__.py")):
        room = folder.parent.relative_to(ROOT).as_posix() + "/"
        parent = _room_of(folder.parent / "x.py", rows)
        assert room in rows or f"`{folder.parent.name}/`" in rows[parent], room
