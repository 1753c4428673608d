"""docs/architecture.md is checked against the tables it describes."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from greenfork.master import commands
from greenfork.master.states import CHECKS, MASTER, Event, State

DOC = (Path(__file__).resolve().parent.parent / "docs" / "architecture.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    return DOC.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def rows(text: str) -> list[list[str]]:
    out = []
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            out.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
    return out[1:]  # without the header


def test_every_change_of_state_is_in_the_transitions_table() -> None:
    moves = {(key[0].value, key[1].value, rule.next.value)
             for key, rules in MASTER.items() for rule in rules if rule.next and rule.next is not key[0]}
    documented = {(r[0], r[1], r[3]) for r in rows(section("Transitions"))}
    assert documented == moves
    # a row names its condition exactly when the pair's outcome depends on a guard
    for r in rows(section("Transitions")):
        rules = MASTER[State(r[0]), Event(r[1])]
        assert bool(r[2]) == any(rule.guard for rule in rules), r


def test_every_state_event_check_and_command_is_described() -> None:
    assert [r[0] for r in rows(section("The master's states"))] == [s.value for s in State]
    named = {name.strip(" `") for r in rows(section("Events")) for name in r[0].split(",")}
    assert named == {e.value for e in Event}
    assert [r[0] for r in rows(section("What TICK checks"))] == [s.value for s in State if CHECKS[s]]
    kinds = {t.__name__ for t in typing.get_args(commands.Command)}
    listed = {name for r in rows(section("Commands")) for name in re.findall(r"(\w+)\(", r[0])}
    assert listed == kinds
