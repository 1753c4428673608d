"""The generated parts of docs/migrating-from-gunicorn.md: every gunicorn setting and hook
(from gunicornmap.TABLE and hookspec.HOOK_DEFS), and the systemd units of examples/systemd/
from-gunicorn/ and a gunicorn.conf.py of tests/gunicorn/ as they are. docsgen.py writes and
checks them between their markers:

    <!-- BEGIN GENERATED NAME -->
    ...
    <!-- END GENERATED NAME -->
"""

from __future__ import annotations

import re
from pathlib import Path

from greenfork.master import gunicornmap, hookspec
from greenfork.master.gunicornmap import CLI, CONVERT, HOOK, SAME, WARN

DOC_PATH = "docs/migrating-from-gunicorn.md"
UNITS = "examples/systemd/from-gunicorn"
UNIT_FILES = ("gunicorn.service", "greenfork.service", "gunicorn.socket")
PROJECTS = "tests/gunicorn"  # gunicorn.conf.py files the tests run unchanged
SHOWN_PROJECTS = ("edge",)
_MARKER = re.compile(r"(<!-- BEGIN GENERATED (\S+) -->\n)(.*?)(<!-- END GENERATED \2 -->)", re.DOTALL)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _setting_link(name: str) -> str:
    return f"[`{name}`](settings.md#{name})"


def _greenfork_side(g: gunicornmap.G) -> str:
    if g.shown:
        return g.shown
    if g.kind == SAME:
        return _setting_link(g.to)
    if g.kind == CONVERT:
        return _setting_link(g.to)
    if g.kind == HOOK:
        return f"hook [`{g.name}`](#server-hooks)"
    if g.kind == CLI:
        return f"`{g.flags[-1]}`" if g.flags else "none (internal)"
    return "none: warned"


def _flags(g: gunicornmap.G) -> str:
    return ", ".join(f"`{f}`" for f in g.flags) if g.flags else "config file only"


def render_settings() -> str:
    lines = ["| gunicorn setting | gunicorn's flags | greenfork | what to know |", "|---|---|---|---|"]
    for g in gunicornmap.TABLE:
        if g.kind == HOOK:
            note = hookspec.HOOKS[g.name].signature
        elif g.kind == WARN:
            note = g.note + ("" if not g.fine else " (not warned: " + ", ".join(f"`{v!r}`" for v in g.fine)
                             + ")")
        else:
            note = g.note
        lines.append("| " + " | ".join(_cell(c) for c in (
            f"`{g.name}`", _flags(g), _greenfork_side(g), note)) + " |")
    return "\n".join(lines) + "\n"


def render_hooks() -> str:
    lines = ["| Hook | Runs in | When greenfork calls it |", "|---|---|---|"]
    for h in hookspec.HOOK_DEFS:
        lines.append("| " + " | ".join(_cell(c) for c in (f"`{h.signature}`", h.side, h.when)) + " |")
    return "\n".join(lines) + "\n"


def render_unit(root: Path, name: str) -> str:
    text = (root / UNITS / name).read_text(encoding="utf-8")
    return f"```ini\n{text}```\n"


def render_project_config(root: Path, project: str) -> str:
    text = (root / PROJECTS / project / "gunicorn.conf.py").read_text(encoding="utf-8")
    return f"```python\n{text}```\n"


def sections(root: Path) -> dict[str, str]:
    return {
        "gunicorn-settings": render_settings(),
        "gunicorn-hooks": render_hooks(),
        **{f"unit:{n}": render_unit(root, n) for n in UNIT_FILES},
        **{f"project:{p}": render_project_config(root, p) for p in SHOWN_PROJECTS},
    }


def fill(text: str, root: Path) -> str:
    """The document with every generated section rendered anew; KeyError for an unknown one."""
    parts = sections(root)

    def replace(m: re.Match[str]) -> str:
        return m.group(1) + parts[m.group(2)] + m.group(4)

    return _MARKER.sub(replace, text)
