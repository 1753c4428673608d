"""The documentation is generated from, or checked against, the code it describes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from greenfork.master import docsgen
from greenfork.master.settings import SETTINGS, Setting, check_table

ROOT = Path(__file__).resolve().parent.parent


def test_settings_md_is_generated_from_the_table() -> None:
    path = ROOT / docsgen.DOC_PATH
    assert path.is_file(), f"{docsgen.DOC_PATH} is missing; run: {docsgen.REGENERATE}"
    current = path.read_text(encoding="utf-8")
    assert current == docsgen.render_settings_md(), (
        f"{docsgen.DOC_PATH} is out of date with master/settings.py; regenerate it with:\n"
        f"    {docsgen.REGENERATE}\n"
        f"(or: python -m greenfork.master.docsgen > {docsgen.DOC_PATH})")


def test_settings_md_documents_every_setting() -> None:
    text = docsgen.render_settings_md()
    for s in SETTINGS:
        assert f"\n### {s.name}\n" in text
        assert f"`{s.env_var}`" in text
        for flag in s.flags:
            assert f"`{flag}" in text


def test_every_flag_is_in_help() -> None:
    out = subprocess.run([sys.executable, "-m", "greenfork.master", "--help"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    missing: list[str] = []
    for s in SETTINGS:
        names = [s.metavar] if s.positional else list(s.flags)
        if s.is_flag:
            names += ["--no-" + f[2:] for f in s.flags if f.startswith("--")]
        missing += [n for n in names if not re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", out)]
        if s.env_var not in out:
            missing.append(s.env_var)
    assert not missing, f"not in greenfork --help: {missing}"


def test_settings_table_matches_dataclass() -> None:
    check_table()


def test_default_rendering() -> None:
    def setting(default: object, **kw: Any) -> Setting:
        return Setting("x", str, default, ("--x",), help="", section="S", **kw)

    assert docsgen.render_default(setting(0o640, type_doc="octal mode")) == "`640`"
    assert docsgen.render_default(setting(("a", "b"))) == '`["a", "b"]`'
    assert docsgen.render_default(setting(30.0)) == "`30`"
    assert docsgen.render_default(setting(2.5)) == "`2.5`"
    assert docsgen.render_default(setting(True)) == "`true`"
    assert docsgen.render_default(setting(None)) == "not set"
    assert docsgen.render_default(setting(None, default_doc="off")) == "off"


def test_docsgen_check_and_write(tmp_path: Path) -> None:
    assert docsgen.main(["--check", str(tmp_path)]) == 1
    assert docsgen.main(["--write", str(tmp_path)]) == 0
    assert (tmp_path / docsgen.DOC_PATH).read_text(encoding="utf-8") == docsgen.render_settings_md()
    assert docsgen.main(["--check", str(tmp_path)]) == 0
    assert docsgen.find_root() == ROOT


def test_readme_names_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "scripts/serve" in readme
    assert "scripts/test" in readme


@pytest.mark.parametrize("doc", ["README.md", "docs/settings.md", "docs/signals.md", "docs/addresses.md",
                                 "docs/http.md", "docs/conformance.md", "docs/proxies.md",
                                 "docs/deployment.md"])
def test_relative_links_resolve(doc: str) -> None:
    path = ROOT / doc
    text = path.read_text(encoding="utf-8")
    broken = []
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target or target.startswith("mailto:"):
            continue
        if not (path.parent / target).exists():
            broken.append(target)
    assert not broken, f"{doc} links to missing files: {broken}"
