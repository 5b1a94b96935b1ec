"""`python -m softmax_cls` (and the `softmax` command): every command of the tool in one place.

`softmax` alone lists the commands; `softmax train --config ...` runs `softmax-train`, and so
on: the same click commands as the softmax-* console scripts, with the same one-line errors.
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


def listing() -> str:
    """One line per command: its name and its help's first paragraph (a whole sentence:
    the first line alone cut a summary that ran onto a second line mid-sentence)."""
    width = max(map(len, COMMANDS))
    lines = ["usage: softmax COMMAND [OPTIONS]   (or softmax-COMMAND; COMMAND --help for more)",
             "", "commands:"]
    for name, command in COMMANDS.items():
        summary = " ".join((command.help or "").strip().split("\n\n")[0].split())
        lines.append(f"  {name:<{width}}  {summary}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        click.echo(listing())
        sys.exit(0)
    if args[0] == "--version":
        click.echo(f"softmax-cls {__version__}")
        sys.exit(0)
    command = COMMANDS.get(args[0])
    if command is None:
        click.echo(f"error: no command {args[0][:40]!r}; the commands are "
                   f"{', '.join(COMMANDS)} (softmax --help)", err=True)
        sys.exit(2)
    command.main(args[1:], prog_name=f"softmax {args[0]}")


if __name__ == "__main__":
    main()
