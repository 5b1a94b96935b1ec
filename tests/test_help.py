"""Every option of every command says what it does, in `--help` and in docs/commands.md."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import click
import pytest
from cli_util import run

from softmax_cls.__main__ import COMMANDS

COMMANDS_MD = Path(__file__).resolve().parents[1] / "docs" / "commands.md"
CLICK_OWN = {"--help", "--version"}  # click's own, described by click


def options(command: click.Command) -> list[click.Option]:
    return [p for p in command.get_params(click.Context(command))
            if isinstance(p, click.Option)]


def section(text: str, heading: str) -> str:
    """The text of the `## heading` section of markdown `text`, up to the next `## `."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"commands.md has no section {heading!r}"
    return match.group(1)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_has_help(name):
    unhelped = [param.opts for param in options(COMMANDS[name]) if not (param.help or "").strip()]
    assert not unhelped, f"softmax-{name}: options without help: {unhelped}"
    shown = run(f"softmax-{name}", "--help")
    assert shown.returncode == 0, shown.stderr
    for param in options(COMMANDS[name]):
        assert param.opts[-1] in shown.stdout


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_is_in_commands_md(name):
    text = COMMANDS_MD.read_text(encoding="utf-8")
    shared = section(text, "What every command does the same way")
    own = section(text, f"softmax-{name}")
    missing = [flag for param in options(COMMANDS[name])
               for flag in param.opts + param.secondary_opts
               if flag.startswith("--") and flag not in CLICK_OWN
               and f"`{flag}" not in own and f"`{flag}` ({name}" not in shared
               and not re.search(rf"`{re.escape(flag)}[^`]*` \([^)]*\b{name}\b", shared)]
    assert not missing, f"softmax-{name}: options not in docs/commands.md: {missing}"


def synopsis(text: str, name: str) -> str:
    """The indented usage lines that open the `## softmax-NAME` section, joined."""
    lines = section(text, f"softmax-{name}").lstrip("\n").splitlines()
    return " ".join(line.strip() for line in itertools.takewhile(
        lambda line: line.startswith("    "), lines))


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_is_in_its_commands_synopsis(name):
    """The usage line of softmax-train and softmax-gradcheck left out their --threads."""
    usage = synopsis(COMMANDS_MD.read_text(encoding="utf-8"), name)
    assert usage.startswith(f"softmax-{name} "), usage
    missing = [param.opts for param in options(COMMANDS[name])
               if not set(param.opts) & CLICK_OWN
               and not any(re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", usage)
                           for flag in param.opts + param.secondary_opts)]
    assert not missing, f"softmax-{name}: options not in its synopsis: {missing}"


def test_engines_md_names_every_command_that_takes_threads():
    """engines.md's numba Threads bullet named train, eval and gradcheck, not predict."""
    page = (COMMANDS_MD.parent / "engines.md").read_text(encoding="utf-8")
    bullet = re.search(r"^- \*\*Threads\.\*\* `--threads N` on (.*?)(?= sets )", page,
                       re.M | re.S).group(1)
    takes = [name for name in COMMANDS
             if any("--threads" in param.opts for param in options(COMMANDS[name]))]
    assert "train" in takes
    assert [name for name in takes if f"`softmax-{name}`" not in bullet] == []
