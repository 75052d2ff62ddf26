"""The ``svgfeat`` command: one click group, one module per command, loaded lazily.

Each command module is imported only when that command runs (or ``--help`` lists it), so a
missing optional dependency of one command never breaks another.
"""

from __future__ import annotations

import importlib
import sys

import click

from .._version import __version__

# command name -> "module:attribute" (module relative to svgfeat.cli)
COMMANDS: dict[str, str] = {
    "doctor": "doctor:doctor",
    "encode": "encode:encode",
    "reconstruct": "reconstruct:reconstruct",
    "extract": "extract:extract",
    "cache": "cache:cache",
    "stats": "stats:stats",
    "probe": "probe:probe",
    "knn": "knn:knn",
    "eval": "eval:eval_group",
    "index": "index:index",
    "search": "search:search",
    "serve": "serve:serve",
    "seg": "seg:seg",
    "depth": "depth:depth",
    "pca": "pca:pca",
    "train-dit": "train_dit:train_dit",
    "generate": "generate:generate",
    "interpolate": "interpolate:interpolate",
    "fid": "fid:fid",
    "train-ae": "train_ae:train_ae",
    "eval-recon": "eval_recon:eval_recon",
    "export": "export:export",
}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx):
        return sorted(name for name, target in COMMANDS.items() if _module_exists(target))

    def get_command(self, ctx, cmd_name):
        target = COMMANDS.get(cmd_name)
        if target is None or not _module_exists(target):
            return None
        module_name, attr = target.split(":")
        module = importlib.import_module(f"{__name__}.{module_name}")
        return getattr(module, attr)


def _module_exists(target: str) -> bool:
    module_name = target.split(":")[0]
    return importlib.util.find_spec(f"{__name__}.{module_name}") is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="svgfeat")
def cli():
    """svgfeat: extract SVG features once, reuse them in every head."""


def _one_line(text: str) -> str:
    """Messages are printed on one line: embedded newlines/control characters never start a new line."""
    parts = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return " ".join(parts).replace("\r", " ")


# OSError numbers that are the environment's doing, not a bug: one line, exit status 1
_ENVIRONMENT_ERRNOS = {"ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EADDRINUSE", "EADDRNOTAVAIL", "ENOTDIR",
                       "EISDIR", "EEXIST", "ENOENT", "ENAMETOOLONG", "EMFILE", "ENFILE", "EFBIG", "EIO", "EBUSY",
                       "ETXTBSY", "ELOOP", "EXDEV", "ENOMEM"}


def _environment_error(e: OSError) -> str | None:
    """'cannot ...: <reason>' for OSErrors caused by the machine (disk full, read-only, ...), else None."""
    import errno

    name = errno.errorcode.get(e.errno or -1)
    if name not in _ENVIRONMENT_ERRNOS:
        return None
    where = " ".join(repr(str(f))[1:-1] for f in (e.filename, e.filename2) if f is not None)
    return (f"{where}: " if where else "") + f"{e.strerror or name}"


def main(argv=None):
    """Entry point: run the CLI. User mistakes (svgfeat errors, bad options) become ONE line ``Error: ...`` with
    exit status 2; environment failures (disk full, read-only output, ...) one line with exit status 1. Anything
    else is a bug and keeps its traceback."""
    from ..errors import SvgfeatError

    try:
        cli.main(args=argv, prog_name="svgfeat", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as e:
        click.echo(f"Error: {_one_line(e.format_message())}", err=True)
        sys.exit(e.exit_code)
    except SvgfeatError as e:
        click.echo(f"Error: {_one_line(e)}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except OSError as e:
        msg = _environment_error(e)
        if msg is None:
            raise
        click.echo(f"Error: {_one_line(msg)}", err=True)
        sys.exit(1)
    sys.exit(0)
