"""`softmax` and `python -m softmax_cls`: the list of commands, and each command run by name."""

from __future__ import annotations

import subprocess
import sys

from cli_util import assert_one_line_error, run

NAMES = ("download", "train", "eval", "gradcheck", "plot", "sweep", "predict", "export")


def test_alone_it_lists_every_command():
    for result in (run("softmax"), subprocess.run([sys.executable, "-m", "softmax_cls"],
                                                  capture_output=True, text=True)):
        assert result.returncode == 0, result.stderr
        listed = [line.split()[0] for line in result.stdout.splitlines()
                  if line.startswith("  ")]
        assert tuple(listed) == NAMES


def test_a_command_runs_by_name_as_its_console_script_does():
    by_name = run("softmax", "gradcheck", "--samples", "20", "--checks", "2", "--classes", "3")
    script = run("softmax-gradcheck", "--samples", "20", "--checks", "2", "--classes", "3")
    assert by_name.returncode == script.returncode == 0, by_name.stderr
    assert by_name.stdout == script.stdout
    assert "Usage: softmax train" in run("softmax", "train", "--help").stdout


def test_an_unknown_command_is_one_line():
    assert_one_line_error(run("softmax", "fit"), 2, "no command 'fit'", "train")
    assert_one_line_error(run("softmax", "train", "--bogus"), 2, "--bogus")


def test_each_summary_is_a_whole_sentence():
    """A summary is its command's first help paragraph, whole: the listing once cut the one
    that ran onto a second line mid-sentence."""
    from softmax_cls.__main__ import COMMANDS

    result = run("softmax", "--help")
    summaries = {line.split()[0]: line.split(None, 1)[1] for line in result.stdout.splitlines()
                 if line.startswith("  ")}
    for name, command in COMMANDS.items():
        paragraph = " ".join(command.help.strip().split("\n\n")[0].split())
        assert summaries[name] == paragraph
        assert paragraph.endswith("."), (name, paragraph)


def test_a_summary_that_runs_onto_a_second_line_is_listed_whole(monkeypatch):
    import click

    import softmax_cls.__main__ as umbrella

    long = click.Command("long", help="Do a thing that takes a summary running\n"
                                      "    onto a second line.\n\n    Details.")
    monkeypatch.setattr(umbrella, "COMMANDS", {"long": long})
    assert umbrella.listing().splitlines()[-1] == (
        "  long  Do a thing that takes a summary running onto a second line.")


def test_help_names_a_command_and_prints_its_help():
    """`softmax help train` printed the listing, not train's help."""
    listing = run("softmax").stdout
    for args in (("help",), ("help", "help"), ("help", "--help")):
        result = run("softmax", *args)
        assert result.returncode == 0 and result.stdout == listing, (args, result.stderr)
    for name in ("train", "gradcheck"):
        result = run("softmax", "help", name)
        assert result.returncode == 0, result.stderr
        assert result.stdout == run("softmax", name, "--help").stdout
        assert result.stdout.startswith(f"Usage: softmax {name} ")
    assert_one_line_error(run("softmax", "help", "nosuch"), 2, "no command 'nosuch'", "train")
    assert_one_line_error(run("softmax", "help", "train", "eval"), 2,
                          "help takes one command, got 2 words")
