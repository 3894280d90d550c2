"""The `convis-db` command group: every command registered, ConvisError and file errors as one line.

Imported by `convis_db.cli.main` once its signal handlers are in place (this import brings torch)."""

from __future__ import annotations

import click
import duckdb

from convis_db import __version__
from convis_db.cli.context import App, configure_logging
from convis_db.cli.thread_waits import log_choices
from convis_db.cli.output import printable
from convis_db.errors import ConvisError, Terminated, cli_wording
from convis_db.paths import DEFAULT_DB
from convis_db.store.db import damaged_message


#: DuckDB errors that mean the file itself could not be read (short reads, bad blocks, corrupt data).
_FILE_ERRORS = tuple(getattr(duckdb, name) for name in ("IOException", "SerializationException", "InternalException",
                                                        "FatalException") if hasattr(duckdb, name))


class ConvisGroup(click.Group):
    """Turns ConvisError into one clear line on stderr and exit code 2 instead of a traceback."""

    def invoke(self, ctx: click.Context):
        with cli_wording():
            return self._invoke(ctx)

    def _invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ConvisError as exc:
            click.echo(click.style("error: ", fg="red", bold=True) + printable(str(exc)), err=True)
            ctx.exit(exc.exit_code)
        except _FILE_ERRORS as exc:
            # Raised while reading a file that opened: a truncated or damaged database. Bugs in our own
            # SQL raise other DuckDB errors (Binder, Catalog, ...) and still show a traceback.
            db = ctx.obj.db if isinstance(ctx.obj, App) else "the database"
            click.echo(click.style("error: ", fg="red", bold=True) + printable(damaged_message(db, exc)), err=True)
            ctx.exit(2)
        except click.UsageError as exc:
            # A bad option of a command (out of range, not a number, ...): one line, as for every other
            # input error, instead of click's usage block.
            where = exc.ctx.command_path if exc.ctx is not None else "convis-db"
            click.echo(click.style("error: ", fg="red", bold=True)
                       + printable(f"{exc.format_message()} (see: {where} --help)"), err=True)
            ctx.exit(exc.exit_code)
        except Terminated:
            click.echo(f"terminated (SIGTERM): stopped before {ctx.invoked_subcommand or 'the command'} finished.",
                       err=True)
            ctx.exit(143)
        except KeyboardInterrupt:
            click.echo("interrupted.", err=True)
            ctx.exit(130)


@click.group(cls=ConvisGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--db", envvar="CONVIS_DB", default=DEFAULT_DB, show_default=True, type=click.Path(dir_okay=False),
              help="The DuckDB database file. Env: CONVIS_DB.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars; errors only.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(__version__, prog_name="convis-db")
@click.pass_context
def cli(ctx: click.Context, db: str, quiet: bool, verbose: int) -> None:
    """convis-db: explain CLIP image embeddings with WordNet concepts, stored in DuckDB.

    \b
    Quick start:
      convis-db demo --pretrained none          # offline smoke run on the sample images
      convis-db --db my.duckdb init --model ViT-B-32 --pretrained openai
      convis-db --db my.duckdb ingest photos/ --recursive
      convis-db --db my.duckdb search dog.n.01
    """
    configure_logging(verbose, quiet)
    log_choices()
    ctx.obj = App(db=db, quiet=quiet, verbose=verbose)


COMMAND_MODULES = ("cmd_init", "cmd_ingest", "cmd_map", "cmd_search", "cmd_regions", "cmd_explain", "cmd_concepts",
                   "cmd_sql", "cmd_stats", "cmd_demo", "cmd_eval", "cmd_serve", "cmd_mutual", "cmd_merge",
                   "cmd_explain_text")


def _register() -> None:
    import importlib

    for name in COMMAND_MODULES:
        cli.add_command(importlib.import_module(f"convis_db.cli.{name}").command)


_register()
