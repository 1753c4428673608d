"""Generate docs/settings.md from the settings table.

    python -m greenfork.master.docsgen > docs/settings.md
    python -m greenfork.master.docsgen --write [REPO_ROOT]
    python -m greenfork.master.docsgen --check [REPO_ROOT]

tests/test_docs.py fails when the committed file differs from render_settings_md(),
so a setting can never be added or changed without its documentation.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from greenfork.master.settings import ENV_PREFIX, SETTINGS, Setting

DOC_PATH = "docs/settings.md"
REGENERATE = "python -m greenfork.master.docsgen --write"

INTRO = f"""\
# Settings reference

<!-- Generated from master/settings.py by `{REGENERATE}`.
     Do not edit by hand: tests/test_docs.py fails when this file and the table differ. -->

Every setting can be given on the command line, as an environment variable, or as a key
in a TOML configuration file, optionally inside a named profile. This page lists them all;
the same text is in `greenfork --help`.

## Setting a value

Taking `workers` as the example, each of these sets it to 4:

| Where | How |
|---|---|
| Command line | `greenfork -w 4 app:app` or `greenfork --workers 4 app:app` |
| Environment | `GREENFORK_WORKERS=4 greenfork app:app` |
| Configuration file | `workers = 4` at the top level of `greenfork.toml` |
| Profile | `workers = 4` in a `[profiles.NAME]` table of that file, applied with `--profile NAME` |

The configuration file is `greenfork.toml` in the current directory when it exists, or
the file named by `-c PATH` / `--config PATH` (or by the `GREENFORK_CONFIG` environment
variable). Its keys are the setting names below. A gunicorn configuration works too: a Python
`gunicorn.conf.py` (read by default when there is no `greenfork.toml`), `-c python:MODULE`
and `GUNICORN_CMD_ARGS`, read as gunicorn reads them; see
[migrating-from-gunicorn.md](migrating-from-gunicorn.md). A profile is a table with the same keys,
applied over the file's top-level keys when selected with `--profile NAME` (or
`GREENFORK_PROFILE=NAME`):

```toml
# greenfork.toml
app = "myproject.wsgi:application"
bind = ["http://0.0.0.0:8000"]
workers = 4
access_logfile = "-"

[profiles.dev]
bind = ["http://127.0.0.1:8000"]
workers = 1
log_level = "debug"
```

`greenfork` uses the top-level keys; `greenfork --profile dev` uses the `dev` table over
them. Naming a profile the file does not have, or giving `--profile` without a
configuration file, is an error.

## Precedence

Each setting is resolved on its own, and the first source that gives it wins:

1. the command line;
2. the environment (`{ENV_PREFIX}*`);
3. `GUNICORN_CMD_ARGS`, gunicorn's command-line flags in one variable;
4. the selected profile (`[profiles.NAME]`);
5. the configuration file's top-level keys (or a Python configuration file's names);
6. for `workers` only, `WEB_CONCURRENCY` in the environment (gunicorn's default);
7. the default listed below.

A list (such as `bind`) from a higher source replaces the lower one's list; the two are
not merged. `greenfork --check-config` prints every resolved value with the source it came
from, then exits 0 without starting the server.

## Value syntax

- Integers: `4`. In the environment and on the command line `2_048` is also accepted.
- Seconds: a number, fractions allowed: `2.5`.
- Booleans: on the command line `--NAME` / `--no-NAME`; in the environment `1`, `true`,
  `yes`, `on` or `0`, `false`, `no`, `off` (any case); in the file `true` / `false`.
- Lists of addresses: repeat the flag (`-b A -b B`); in the environment separate them with
  commas (`GREENFORK_BIND=http://127.0.0.1:8000,unix:/run/app.sock`); in the file a TOML
  array of strings.
- Octal file modes: `660` or `0o660` on the command line and in the environment; in the file
  write `0o660` (a TOML octal integer) or the string `"660"`. A bare `660` in the file is
  the decimal number 660 and is rejected.
- Optional paths: an empty value (`GREENFORK_ACCESS_LOGFILE=`) means "not set".

## Invalid values

greenfork checks every value before it binds or forks anything. The first invalid one
stops it with exit code 2 and a single line naming the setting, the value and where it came
from:

```
greenfork: error: invalid value 'many' for workers (from env GREENFORK_WORKERS): expected an integer
```

An unknown key in the configuration file or a profile is an error too (with a suggestion
when a known name is close). An unknown `{ENV_PREFIX}*` environment variable is only a
warning, because an environment is often shared between tools and versions. On a reload
(`kill -HUP`), an invalid configuration is logged and the running workers keep serving; see
[signals.md](signals.md).

## Reloading

"Changed by HUP: yes" means a reload (`kill -HUP <master pid>`) applies a new value from the
configuration file to the workers it starts. "no" means the value is read once at start and
a restart is needed to change it. The environment and command line a reload applies are the
ones the master was started with.
"""


def _code(text: str) -> str:
    return f"`{text}`"


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def render_default(s: Setting) -> str:
    """The default as an operator would read or write it."""
    if s.default_doc:
        return s.default_doc
    v = s.default
    if v is None:
        return "not set"
    if isinstance(v, bool):
        return _code("true" if v else "false")
    if s.type_doc == "octal mode" and isinstance(v, int):
        return _code(format(v, "o"))
    if isinstance(v, int):
        return _code(str(v))
    if isinstance(v, float):
        return _code(f"{v:g}")
    if isinstance(v, tuple | list):
        return _code("[" + ", ".join(_toml_string(str(x)) for x in v) + "]")
    return _code(str(v))


def render_flags(s: Setting) -> str:
    if s.positional:
        return f"{_code(s.metavar)} (positional, after the options)"
    if not s.flags:  # the server hooks: one --hook option sets them all
        return _code(f"--hook {s.name}={s.metavar}")
    if s.is_flag:
        shown = list(s.flags) + ["--no-" + f[2:] for f in s.flags if f.startswith("--")]
        return ", ".join(_code(f) for f in shown)
    shown = [f"{f} {s.metavar}" if s.metavar else f for f in s.flags]
    text = ", ".join(_code(f) for f in shown)
    if s.bare is not None:
        text += f" (alone: {_code(s.bare)})"
    return text + " (repeat for several)" if s.multiple else text


def _sections() -> list[tuple[str, list[Setting]]]:
    out: list[tuple[str, list[Setting]]] = []
    for s in SETTINGS:
        if out and out[-1][0] == s.section:
            out[-1][1].append(s)
            continue
        for name, items in out:
            if name == s.section:
                items.append(s)
                break
        else:
            out.append((s.section, [s]))
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _index(sections: list[tuple[str, list[Setting]]]) -> list[str]:
    lines = ["## All settings", "",
             "| Setting | Command line | Environment | Default | HUP |",
             "|---|---|---|---|---|"]
    for _section, items in sections:
        for s in items:
            flags = [s.metavar] if s.positional else list(s.flags) or [f"--hook {s.name}=..."]
            lines.append("| " + " | ".join(_cell(c) for c in (
                f"[{s.name}](#{s.name})", ", ".join(_code(f) for f in flags), _code(s.env_var),
                render_default(s),
                "yes" if s.reloadable else "no")) + " |")
    lines.append("")
    return lines


def render_setting(s: Setting) -> list[str]:
    return [
        f"### {s.name}",
        "",
        f"- Command line: {render_flags(s)}",
        f"- Environment: {_code(s.env_var)}",
        f"- greenfork.toml key: {_code(s.name)}",
        f"- Type: {s.type_doc}",
        f"- Default: {render_default(s)}",
        "- Changed by HUP: " + ("yes" if s.reloadable else "no, needs a restart"),
        "",
        s.help,
        "",
    ]


def render_settings_md() -> str:
    sections = _sections()
    lines = [INTRO]
    lines += _index(sections)
    for section, items in sections:
        lines += [f"## {section}", ""]
        for s in items:
            lines += render_setting(s)
    return "\n".join(lines).rstrip("\n") + "\n"


# ------------------------------------------------------------------ writing


def find_root(start: Path | None = None) -> Path:
    """The repository root: the nearest directory above this module (following the
    strict editable install's symlink) that holds pyproject.toml and master/."""
    here = (start or Path(__file__)).resolve()
    for d in here.parents:
        if (d / "pyproject.toml").is_file() and (d / "master").is_dir():
            return d
    raise FileNotFoundError(f"no greenfork checkout above {here}; pass the repository root")


def write_settings_md(root: Path) -> Path:
    from greenfork.master.report import atomic_write

    path = root / DOC_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(str(path), render_settings_md())
    return path


def generated_docs(root: Path) -> list[tuple[Path, str]]:
    """(path, what it must hold) for every document with generated content under root: the
    settings reference, and docs/migrating-from-gunicorn.md's generated sections when it exists."""
    from greenfork.master import migratedoc

    out = [(root / DOC_PATH, render_settings_md())]
    migrating = root / migratedoc.DOC_PATH
    if migrating.is_file():
        out.append((migrating, migratedoc.fill(migrating.read_text(encoding="utf-8"), root)))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m greenfork.master.docsgen",
                                description="Print docs/settings.md generated from the settings table.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"write {DOC_PATH} (atomically) instead")
    mode.add_argument("--check", action="store_true",
                      help=f"exit 1 if {DOC_PATH} differs from what would be generated")
    p.add_argument("root", nargs="?", type=Path, default=None,
                   help="repository root (default: found from this module's location)")
    ns = p.parse_args(sys.argv[1:] if argv is None else list(argv))
    if not (ns.write or ns.check):
        sys.stdout.write(render_settings_md())
        return 0
    try:
        root: Path = ns.root if ns.root is not None else find_root()
    except FileNotFoundError as e:
        print(f"docsgen: {e}", file=sys.stderr)
        return 2
    if ns.check:
        stale = 0
        for path, want in generated_docs(root):
            try:
                current = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                current = ""
            if current != want:
                print(f"docsgen: {path} is out of date; run: {REGENERATE}", file=sys.stderr)
                stale = 1
        return stale
    from greenfork.master.report import atomic_write

    print(f"wrote {write_settings_md(root)}", file=sys.stderr)
    for path, want in generated_docs(root)[1:]:
        if path.read_text(encoding="utf-8") != want:
            atomic_write(str(path), want)
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
