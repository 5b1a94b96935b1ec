"""`python -m softmax_cls` (and the `softmax` command): every command of the tool in one place.

`softmax` (or `softmax help`) alone lists the commands, `softmax help train` prints train's
--help; `softmax train --config ...` runs `softmax-train`, and so on: the same click commands
as the softmax-* console scripts, with the same one-line errors.
"""

from __future__ import annotations

import sys

import click

from . import __version__, cli

COMMANDS = {
    "download": cli.download_command,
    "train": cli.train_command,
    "eval": cli.eval_command,
    "gradcheck": cli.gradcheck_command,
    "plot": cli.plot_command,
    "sweep": cli.sweep_command,
    "predict": cli.predict_command,
    "export": cli.export_command,
}
HELP = ("-h", "--help", "help")  # the listing (`softmax help help` too)


def listing() -> str:
    """One line per command: its name and its help's first paragraph (a whole sentence:
    the first line alone cut a summary that ran onto a second line mid-sentence)."""
    width = max(map(len, COMMANDS))
    lines = ["usage: softmax COMMAND [OPTIONS]   (or softmax-COMMAND; softmax help COMMAND for "
             "more)",
             "", "commands:"]
    for name, command in COMMANDS.items():
        summary = " ".join((command.help or "").strip().split("\n\n")[0].split())
        lines.append(f"  {name:<{width}}  {summary}")
    return "\n".join(lines)


def _refuse(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _command(name: str) -> click.Command:
    """The command called `name`; one error line naming it and listing the commands."""
    command = COMMANDS.get(name)
    if command is None:
        _refuse(f"no command {name[:40]!r}; the commands are {', '.join(COMMANDS)} "
                "(softmax --help)")
    return command


def main(argv: list[str] | None = None) -> None:
    """`softmax`, `softmax --help` and `softmax help`: the listing; `softmax help CMD`: CMD's
    --help, as `softmax CMD --help` prints it; `softmax CMD ARGS...`: CMD run on ARGS."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "help" and len(args) > 1:
        if len(args) > 2:
            _refuse(f"help takes one command, got {len(args) - 1} words; e.g. softmax help "
                    "train")
        args = [args[1], "--help"]
    if not args or args[0] in HELP:
        click.echo(listing())
        sys.exit(0)
    if args[0] == "--version":
        click.echo(f"softmax-cls {__version__}")
        sys.exit(0)
    _command(args[0]).main(args[1:], prog_name=f"softmax {args[0]}")


if __name__ == "__main__":
    main()
