"""The `tailcal` command: one sub-command per flow or entry point, options taken from its signature.

Options, their types, defaults, choices and help come from each function's signature and
docstring (cyclopts reads them), so a flow parameter is defined once and the command line,
`prefect deployment run --param` and the Prefect UI all agree. A `TailcalError` ends the
command with exit code 2 and one line on stderr; the traceback is not the user's problem.

Prefect reads its settings when it is imported; the ephemeral-API defaults (a private
`PREFECT_HOME` under the working directory, a start-up timeout fit for a busy 2-core
machine, no analytics) are applied here, around the flow call, never on import.
"""

from __future__ import annotations

import atexit
import importlib.metadata
import inspect
import itertools
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import cyclopts

from tasks.config import TailcalConfig, load_for
from tasks.errors import ConfigError, TailcalError
from tasks.services import prefect_environment

app = cyclopts.App(
    name="tailcal",
    version=lambda: importlib.metadata.version("tailcal"),
    help="INT8 calibration sets for object detectors, chosen by VLM difficulty scoring and proven on mAP.",
    default_parameter=cyclopts.Parameter(
        # `config_path` is the flows' parameter (deployments pass --param config_path=…); people type --config.
        name_transform=lambda name: "config" if name == "config_path" else cyclopts.default_name_transform(name),
        consume_multiple=True,  # --seeds 0 1 2
        negative=(),  # --dry-run, no --no-dry-run
    ),
    result_action="return_value",
)


def _prefect_settings() -> AbstractContextManager:
    """The ephemeral Prefect API's settings for the duration of a flow run (none with a server)."""
    from prefect import settings

    updates = prefect_environment(Path.cwd() / ".prefect")
    if not updates:
        return nullcontext()
    return settings.temporary_settings({getattr(settings, name): value for name, value in updates.items()})


class _NoTracebackForUserErrors(logging.Filter):
    """Prefect logs a flow's exception with its traceback; for a TailcalError the message is
    the whole story (and `tailcal` prints it once more as its last line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], TailcalError):
            record.exc_info, record.exc_text = None, None
        return True


@contextmanager
def _user_errors_without_traceback() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in ("prefect.flow_runs", "prefect.task_runs")]
    quiet = _NoTracebackForUserErrors()
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


def _register(command: str, target: Callable, preflight: Callable[[TailcalConfig, str], object] | None = None) -> None:
    """Register `command` running `target` (a Prefect flow or a plain function) with its options;
    `preflight(config, config_path)` runs the command's own checks of its config before Prefect starts."""
    signature_of = getattr(target, "fn", target)  # a flow's own function carries the signature

    def run(**kwargs):
        # cyclopts reads "None"/"null" given as an option's value as None, which here means
        # "not given": the config's value would run in silence. A value must be a value.
        nulls = [name for name, value in kwargs.items() if value is None]
        if nulls:
            options = ", ".join("--" + name.replace("_", "-") for name in nulls)
            raise ConfigError(
                f"{options} given as None/null: give a value, or leave the option out to use the config's"
            )
        if target is signature_of:  # a plain function, not a flow: it reads what it needs of its config
            return target(**kwargs)
        arguments = inspect.signature(signature_of).bind_partial(**kwargs)
        arguments.apply_defaults()
        config_path = arguments.arguments.get("config_path")
        if config_path is not None:
            config = load_for(signature_of, arguments.arguments)  # a bad file or option fails here, before Prefect
            if preflight is not None:
                preflight(config, config_path)
        with _prefect_settings(), _user_errors_without_traceback():
            return target(**kwargs)

    # The command takes the function's options by name only (no positional surprises), with
    # its annotations resolved where they were written, and its docstring as the help.
    signature = inspect.signature(signature_of, eval_str=True)
    keyword_only = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in signature.parameters.values()]
    run.__signature__ = signature.replace(parameters=keyword_only)
    run.__doc__ = signature_of.__doc__
    app.command(run, name=command)


def _commands() -> None:
    # Flow modules import Prefect (~1 s) but none of the heavy stage libraries (torch,
    # OpenVINO, litellm load inside the stages), so `tailcal --help` stays quick.
    from flows import ablation, drift_monitor, release_cycle, scoring, train_detector
    from tasks.serving import server
    from tasks.testing import reference_scorer

    _register("run", release_cycle.release_cycle)
    _register("ablate", ablation.ablation)
    _register("score", scoring.score)
    _register("drift", drift_monitor.drift_monitor, preflight=drift_monitor.production_sample_uri)
    _register("train-detector", train_detector.train_detector)
    _register("serve", server.serve)
    _register("reference-scorer", reference_scorer.serve)


_commands()


def _one_line(error: TailcalError) -> str:
    """The error on one line: after a line that introduces a list (ends with ':') or a sentence
    ('.') the next runs on with a space; other lines are kept apart with '; '."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    for previous, line in itertools.pairwise(lines):
        text += (" " if previous.endswith((":", ".")) else "; ") + line
    return text


# The console script's error line is printed by an exit handler registered here, at import,
# before Prefect registers the one that stops its temporary server: exit handlers run last
# registered first, so Prefect's "Stopping temporary server" log comes before it and the
# error stays the last line on stderr.
_LAST_WORDS: list[str] = []
atexit.register(lambda: _LAST_WORDS and print(_LAST_WORDS[-1], file=sys.stderr, flush=True))


def main(argv: list[str] | None = None, *, error_at_exit: bool = False) -> int:
    """Run `tailcal` with `argv` (default: the process's arguments); returns the exit code.

    A TailcalError becomes one `tailcal: …` line on stderr, printed at once, or with
    `error_at_exit` as the process's very last line (after Prefect's shutdown logs).
    """
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("tasks").setLevel(logging.INFO)
    logging.getLogger("flows").setLevel(logging.INFO)
    try:
        result = app(sys.argv[1:] if argv is None else argv, exit_on_error=False, print_error=True)
    except TailcalError as error:
        line = f"tailcal: {_one_line(error)}"
        if error_at_exit:
            _LAST_WORDS.append(line)
        else:
            print(line, file=sys.stderr)
        return 2
    except cyclopts.CycloptsError:
        return 2
    describe = getattr(result, "describe", None)
    if callable(describe):
        print(describe())
    return 0


def entry_point() -> None:
    """The `tailcal` console script."""
    sys.exit(main(error_at_exit=True))


if __name__ == "__main__":
    entry_point()
