"""Running the CLI in this process from a test: ``run_cli(args, capsys) -> (exit status, stdout, stderr)``."""

from __future__ import annotations


def run_cli(args, capsys):
    from svgfeat.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    else:
        code = 0
    out = capsys.readouterr()
    return code, out.out, out.err
