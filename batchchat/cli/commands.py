"""The ``batchchat`` command. The only module that prints, exits, or reads the terminal.

Heavy imports (aiohttp, pyarrow, tqdm) happen inside commands so ``--help`` stays instant.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast

import click

from ..core.errors import BatchchatError, FatalAPIError, Interrupted, MissingKey, RequestError, StorageError
from ..core.words import plural
from ..job.settings import CHOICE, FLAG, FLOAT, INT, TABLE, flag_name
from ..reports.text import dry_run_text, overview_text, quiet_line, summary_text
from .console import Progress, Shown, say

if TYPE_CHECKING:
    from ..execute.pipeline import RunResult
    from ..job.spec import Job
    from ..runs.chat import Conversation

Command = TypeVar("Command", bound=Callable[..., Any])
EXIT_JOB = 2
EXIT_STORAGE = 74  # sysexits' EX_IOERR: the disk refused what the run wrote
EXIT_INTERRUPTED = 130
CLICK_TYPES: dict[str, Any] = {INT: int, FLOAT: float}


def setting_options(command: str) -> Callable[[Command], Command]:
    """The flags of ``command`` ("run" or "chat"), made from the settings table: each setting's
    flag, value type, choices, help and stated default are the table's."""
    options = []
    for setting in TABLE:
        if not setting.flags or (command == "chat" and not setting.chat):
            continue
        help_text = setting.chat if command == "chat" and isinstance(setting.chat, str) else setting.help_text
        multiple = setting.multiple
        if setting.kind == FLAG:
            if "/" in setting.flags[0]:  # --stream/--no-stream: click makes the pair
                options.append(click.option(*setting.flags, setting.name, default=None, help=help_text))
            else:
                options.append(click.option(*setting.flags, setting.name, is_flag=True, default=None, help=help_text))
        elif setting.bare is not None:
            options.append(click.option(*setting.flags, setting.name, is_flag=False, flag_value=setting.bare,
                                        default=None, metavar=setting.metavar, help=help_text))  # fmt: skip
        else:
            kind = click.Choice(list(setting.choices)) if setting.kind == CHOICE else CLICK_TYPES.get(setting.kind)
            if setting.file:
                kind = click.Path(dir_okay=False)
            options.append(click.option(*setting.flags, setting.name, type=kind, metavar=setting.metavar,
                                        multiple=multiple, help=help_text))  # fmt: skip

    def decorate(function: Command) -> Command:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def parse_param(text: str, flag: str = "--param") -> tuple[str, Any]:
    """``KEY=VALUE``: VALUE as JSON when it parses (numbers, lists, objects), else as text."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise click.BadParameter(f"expected KEY=VALUE, got {text!r}", param_hint=flag)
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except (json.JSONDecodeError, RecursionError):
        value = raw
    except ValueError:
        raise click.BadParameter(f"{text!r}: NaN and Infinity are not JSON numbers", param_hint=flag) from None
    return key, value


def _no_constant(name: str) -> None:
    """NaN and Infinity are not JSON, and no server reads them."""
    raise ValueError(name)


def parse_price(text: str) -> tuple[str, dict[str, Any]]:
    """``MODEL=IN,OUT``: US dollars per million input and output tokens (a model name may hold '=')."""
    model, sep, pair = text.rpartition("=")
    parts = pair.split(",")
    if not sep or not model.strip() or len(parts) != 2:
        raise click.BadParameter(f"expected MODEL=IN,OUT (dollars per million tokens), got {text!r}",
                                 param_hint="--price")  # fmt: skip
    return model.strip(), {"input": parts[0].strip(), "output": parts[1].strip()}


def parse_pairs(text: str, flag: str) -> dict[str, Any]:
    """``KEY=VALUE,KEY=VALUE``; a comma inside brackets, braces or quotes belongs to its value."""
    pairs: dict[str, Any] = {}
    depth, quoted, start = 0, False, 0
    for i, char in enumerate(text + ","):
        if char == '"' and text[i - 1 : i] != "\\":
            quoted = not quoted
        elif not quoted and char in "[{":
            depth += 1
        elif not quoted and char in "]}":
            depth -= 1
        elif char == "," and not quoted and depth == 0:
            if text[start:i].strip():
                key, value = parse_param(text[start:i].strip(), flag)
                pairs[key] = value
            start = i + 1
    return pairs


class Batchchat(click.Group):
    """Click, with its usage errors (a bad flag value, an unknown option) on one line, like ours."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as e:  # plain `batchchat`: the help, as click shows it
            e.show()
            sys.exit(e.exit_code)
        except click.UsageError as e:
            command = e.ctx.command_path if e.ctx is not None else "batchchat"
            message = e.format_message().rstrip()
            message += "" if message.rstrip(")").endswith((".", "?", "!")) else "."
            say(f"batchchat: error: {message} See '{command} --help'.", err=True)
            sys.exit(EXIT_JOB)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            say("Aborted!", err=True)
            sys.exit(1)


@click.group(cls=Batchchat, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="batchchat", prog_name="batchchat")  # read from the metadata only when asked
def main() -> None:
    """Answer every row of a CSV, Parquet or JSONL table with a chat model.

    Together's API by default; any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp,
    Ollama) with --provider/--base-url; or the built-in simulator with --provider sim.
    """


# `batchchat run --help` shows its options in these groups, in this order (the rest under "Other"):
# the settings table's, and the flags of the command itself.
OPTION_GROUPS: dict[str, list[str]] = {}
for _setting in TABLE:
    if _setting.group is not None and _setting.flags:
        OPTION_GROUPS.setdefault(_setting.group, []).append(_setting.name)
OPTION_GROUPS["Output and resume"].append("report")
RUN_EXAMPLES = """\b
  batchchat run jobs/demo.toml                       the demo, on the built-in simulator
  batchchat run -i questions.csv -m meta-llama/Llama-3.3-70B-Instruct-Turbo
  batchchat run -i big.parquet -m MODEL --limit 20   try the first 20 rows; run again without it to go on
  batchchat run -i q.csv -m A -m B --expected-column answer --score contains   compare two models
  batchchat run -i reviews.csv -m MODEL --template 'Label: {review}' --labels positive,negative
  batchchat run jobs/eval-models.toml --dry-run      rows, requests and cost, sending nothing"""


class GroupedCommand(click.Command):
    """A command whose --help lists its options in groups (``OPTION_GROUPS``) and ends with examples."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        records = {param.name: param.get_help_record(ctx) for param in self.get_params(ctx)
                   if isinstance(param, click.Option)}  # the usage line shows the arguments  # fmt: skip
        placed: set[str | None] = set()
        for title, names in [*OPTION_GROUPS.items(), ("Other", None)]:
            chosen = names if names is not None else [name for name in records if name not in placed]
            rows = [records[name] for name in chosen if records.get(name) is not None]
            placed.update(chosen)
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)  # type: ignore[arg-type]

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Examples"):
            formatter.write_text(RUN_EXAMPLES)


@main.command(cls=GroupedCommand, context_settings={"max_content_width": 100})
@click.argument("job_file", required=False, type=click.Path(dir_okay=False))
@setting_options("run")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.option("--dry-run", is_flag=True, help="Check everything and estimate tokens and cost; send nothing.")
@click.option("--report", is_flag=True, help="At the end, write OUTPUT.report.html: the run's plots and tables.")
@click.option("-q", "--quiet", is_flag=True, help="No progress and no summary: one line at the end (rows, errors, cost, output), and errors.")
@click.option(
    "--progress-every",
    type=float,
    default=30.0,
    callback=lambda ctx, param, value: _at_least(value, 0.05, "--progress-every"),
    metavar="SECONDS",
    help="Without a terminal (cron, nohup, CI), print a progress line this often [default: 30].",
)
def run(job_file: str | None, dry_run: bool, report: bool, quiet: bool, debug: bool, progress_every: float,
        **options: Any) -> None:  # fmt: skip
    """Send every row of a table to a chat model and write the answers beside the input rows.

    JOB_FILE is an optional TOML job file; flags override what it sets.

    Finished requests are kept in OUTPUT.journal as they finish: run the same command again after a
    crash or Ctrl-C and only what is missing is sent. One run at a time per output.

    Several -m, or [[variants]] in a job file, send every row to each model and variant; see
    jobs/README.md for labels, JSON schemas, scoring, scripted conversations and prices.

    Exit codes: 0 every row ok (or submitted with --detach), 1 some rows ended in error (or stayed
    pending at --max-cost), 2 the job could not run, 74 the disk refused the journal or the output, 130
    stopped by Ctrl-C or SIGTERM.
    """
    observer = Progress(quiet, progress_every)
    stop_on_sigterm()  # before anything takes the lock: a SIGTERM now stops as cleanly as Ctrl-C
    try:
        from ..job.jobfile import build_job
        from ..runs.runfile import every_problem
        from ..runs.runfile import run as run_job

        address = options.get("ray")
        if job_file is None and isinstance(address, str) and address.lower().endswith(".toml"):
            raise BatchchatError(f"--ray took {address} as a Ray address: give the job file first "
                                 f"(batchchat run {address} --ray), or the address with --ray=ADDRESS")  # fmt: skip
        if job_file is None and options["input"] is None:
            raise BatchchatError(
                "nothing to run: give a job file (batchchat run jobs/demo.toml) or an input table "
                "(batchchat run -i prompts.csv -m MODEL)"
            )
        overrides = from_flags(options)
        try:
            job = build_job(job_file, overrides, flag_name, check_key=not dry_run)
        except MissingKey as missing:
            raise every_problem(missing, build_job(job_file, overrides, flag_name, check_key=False)) from None
        if dry_run:
            from ..runs.dryrun import dry_run as plan_only

            say(dry_run_text(plan_only(job)))
            sys.exit(0)
        try:
            result = run_job(job, observer=observer)
        finally:
            observer.close()
    except Interrupted as e:  # Ctrl-C or SIGTERM: finished work was kept
        stopped = cast("RunResult | None", e.result)
        if stopped is not None:
            say(f"batchchat: {quiet_line(stopped, finished=False)}" if quiet else summary_text(stopped, finished=False), err=True)
        if report and stopped is not None and stopped.output is not None:
            _write_report(stopped.output, quiet)  # what is pending, too
        say(f"batchchat: {e}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except StorageError as e:  # disk full or read-only: not "nothing changed", so not exit 2
        _fail(str(e), debug, EXIT_STORAGE)
    except BatchchatError as e:  # a bad job, or an API that refuses every request
        _fail(str(e), debug)
    except KeyboardInterrupt:  # before sending began, or while the output was written
        if observer.answered:
            again = "run the same command again" + (" without --restart" if options.get("restart") else "")
            say(f"\nbatchchat: interrupted; the output was not written. The {plural(observer.answered, 'answer')} "
                f"received are kept in the journal: {again} to resume", err=True)  # fmt: skip
        else:
            say("\nbatchchat: interrupted before any request was answered; nothing written", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException:
        raise
    except Exception as e:  # a bug, not a user error: say so, keep the message short
        _fail(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", debug)
    say(f"batchchat: {quiet_line(result)}" if quiet else summary_text(result), err=True)
    if report and result.output is not None:
        _write_report(result.output, quiet)
    sys.exit(result.exit_code)


def _write_report(output: Path, quiet: bool) -> None:
    from ..reports.htmlreport import write_report

    try:
        path = write_report(output)
    except ImportError:
        say("batchchat: no report: it needs matplotlib (pip install 'batchchat[report]')", err=True)
        return
    if not quiet:
        say(f"report: {path}", err=True)


@main.command(context_settings={"max_content_width": 100})
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("-o", "--to", "to", metavar="FILE.html", help="Where to write it [default: OUTPUT.report.html].")
def report(output: str, to: str | None) -> None:
    """Write the HTML report of OUTPUT, a table a run wrote: one file, offline, with plots.

    Built from the table and the journal beside it; nothing is sent. Needs matplotlib
    (pip install 'batchchat[report]').
    """
    try:
        from ..reports.htmlreport import write_report

        say(str(write_report(output, to)))
    except ImportError:
        _fail("the report needs matplotlib: pip install 'batchchat[report]'", False)
    except BatchchatError as e:
        _fail(str(e), False)


@main.command(context_settings={"max_content_width": 100})
@click.argument("output", type=click.Path(dir_okay=False))
def show(output: str) -> None:
    """Print the summary of OUTPUT, a table a run wrote, and its table per model and variant,
    without running the job again."""
    try:
        from ..reports.survey import overview

        say(overview_text(overview(output)))
    except BatchchatError as e:
        _fail(str(e), False)


def _at_least(value: float, low: float, flag: str) -> float:
    if value < low:
        raise click.BadParameter(f"must be at least {low:g}, got {value:g}", param_hint=flag)
    return value


def stop_on_sigterm() -> None:
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does, so the lock is released and the exit
    code and message are the same; while requests are sent the run's own handler stops it
    gracefully instead."""

    def interrupt(number: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _models(names: str | tuple[str, ...] | None) -> str | list[str] | None:
    if isinstance(names, str):  # chat's one model
        return names
    if not names:
        return None
    return names[0] if len(names) == 1 else list(names)


# The settings whose flags' text is read into the value a job takes (the rest pass as click typed them).
FROM_TEXT: dict[str, Callable[[Any], Any]] = {
    "params": lambda texts: dict(parse_param(text) for text in texts) or None,
    "model": _models,
    "json_schema": lambda text: _json_schema(text),
    "variants": lambda texts: [parse_pairs(text, "--variant") for text in texts] or None,
    "simulator": lambda texts: {k: v for text in texts for k, v in parse_pairs(text, "--sim").items()} or None,
    "prices": lambda texts: dict(parse_price(text) for text in texts) or None,
    "option_columns": lambda texts: list(texts) or None,
    "reuse": lambda texts: list(texts) or None,
}


def from_flags(options: dict[str, Any]) -> dict[str, Any]:
    """The settings the flags give, as a job takes them."""
    return {name: FROM_TEXT[name](value) if name in FROM_TEXT and value is not None else value
            for name, value in options.items()}  # fmt: skip


def _json_schema(value: str | None) -> dict[str, Any] | None:
    """A schema given inline (JSON text) or as the path of a .json file."""
    if value is None:
        return None
    where = "--json-schema"
    text = value
    if not value.lstrip().startswith("{"):
        try:
            text = Path(value).read_text(encoding="utf-8")
        except OSError as e:
            raise BatchchatError(
                f"{where}: cannot read {value}: {e.strerror}; give a .json file or inline JSON"
            ) from None
        where = f"--json-schema file {value}"
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as e:
        raise BatchchatError(f"{where}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise BatchchatError(f"{where}: nested too deeply to read") from None
    if not isinstance(schema, dict):
        raise BatchchatError(f"{where}: a schema is a JSON object, got {type(schema).__name__}")
    return schema


def _fail(message: str, debug: bool, code: int = EXIT_JOB) -> NoReturn:
    if debug:
        traceback.print_exc()
    say(f"batchchat: error: {message}", err=True)
    sys.exit(code)


@main.command(context_settings={"max_content_width": 100})
@click.argument("prompt", required=False)
@setting_options("chat")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.option(
    "--save",
    type=click.Path(dir_okay=False),
    metavar="FILE.jsonl",
    help='Append the conversation to this file as one JSONL row {"messages": [...]}.',
)
def chat(prompt: str | None, save: str | None, debug: bool, **options: Any) -> None:
    """Ask one question (PROMPT), or, without one, hold a conversation that keeps its history.

    In a conversation each line of input is a turn, until end of input (Ctrl-D). A file saved with
    --save is a table `batchchat run --messages-column messages` can read back.

    Exit codes: 0 answered, 1 a request failed, 2 it could not run (bad settings, key, credit).
    """
    try:
        from ..core.sync import run_sync
        from ..job.jobfile import build_job
        from ..runs.chat import check_save_path

        settings = from_flags(options)
        if isinstance(settings.get("model"), list):
            raise BatchchatError(f"-m/--model: a conversation asks one model, and {len(settings['model'])} are given; "
                                 "give -m once")  # fmt: skip
        job = build_job(None, settings, flag_name)
        save_path = Path(save) if save else None
        if save_path is not None:
            check_save_path(save_path)
        code = run_sync(_chat(job, prompt, save_path))
    except BatchchatError as e:
        _fail(str(e), debug)
    except KeyboardInterrupt:
        say("", err=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code)


async def _chat(job: Job, prompt: str | None, save: Path | None) -> int:
    import asyncio

    from ..execute.connect import open_client
    from ..runs.chat import Conversation

    async with open_client(job.endpoint, concurrency=job.limits.concurrency, retry=job.retry, stream=job.stream,
                           simulator=job.simulator_config) as client:  # fmt: skip
        shown = Shown(client.stream)
        conversation = Conversation(partial(client.complete, on_text=shown.piece if client.stream else None),
                                    job.model, job.params, system=job.prompt.system,
                                    max_attempts=job.retry.max_attempts, on_retry=shown.retrying)  # fmt: skip
        try:
            if prompt is not None:
                return await _turn(job, conversation, shown, prompt)
            interactive = sys.stdin.isatty()
            worst = 0
            while True:
                line = await asyncio.to_thread(_read_turn, interactive)
                if line is None:
                    return worst
                if not line.strip():
                    continue
                worst = max(worst, await _turn(job, conversation, shown, line))
                if worst == EXIT_JOB:
                    return worst
        finally:
            if save is not None and conversation.started:
                conversation.save(save)


def _read_turn(interactive: bool) -> str | None:
    """The next line the user typed, or None at end of input."""
    if interactive:
        try:
            return input("> ")
        except EOFError:
            say("", err=True)
            return None
    line = sys.stdin.readline()
    return line.rstrip("\r\n") if line else None


async def _turn(job: Job, conversation: Conversation, shown: Shown, text: str) -> int:
    """Ask, print the answer (as it arrives when streaming); 0 answered, 1 failed, 2 fatal."""
    shown.any = False
    try:
        result = await conversation.ask(text)
    except FatalAPIError as fatal:
        if shown.any:
            say()
        say(f"batchchat: error: {job.endpoint.refusal(fatal.error, flag_name)}", err=True)
        return EXIT_JOB
    except RequestError as error:
        if shown.any:
            say()
        say(f"batchchat: error: {error.error_type}: {error.message}", err=True)
        return 1
    # a server that ignored the stream request answered whole: print it whole
    say("" if shown.streaming and shown.any else (result.content or ""))
    return 0


@main.command(context_settings={"max_content_width": 100})
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port; 0 picks a free one."
)
@click.option(
    "--latency-ms", default=0.0, type=click.FloatRange(0), help="Delay before each answer (time to first token)."
)
@click.option("--jitter-ms", default=0.0, type=click.FloatRange(0), help="Extra random delay, up to this much.")
@click.option(
    "--tokens-per-s", type=click.FloatRange(0, min_open=True), help="Generation speed; streams pace their tokens."
)
@click.option("--rpm", type=click.IntRange(1), help="Requests per minute before answering 429.")
@click.option("--tpm", type=click.IntRange(1), help="Tokens per minute before answering 429.")
@click.option(
    "--fault-rate",
    default=0.0,
    type=click.FloatRange(0, 1),
    help="Share of requests that fail (500, 503, HTML 502, dropped, truncated, malformed).",
)
@click.option("--seed", default=0, type=int, help="Seed for latency jitter and fault choice.")
@click.option("--labels", metavar="A,B,...", help="Answer with one of these labels, like a labeling model.")
@click.option(
    "--invalid-rate",
    default=0.0,
    type=click.FloatRange(0, 1),
    help="Share of label and JSON answers that are wrong (no label, broken JSON, a missing field).",
)
@click.option(
    "--batch-dialect",
    type=click.Choice(["together", "openai"]),
    default="together",
    show_default=True,
    help="Whose Batch API /v1/files and /v1/batches speak.",
)
@click.option("--batch-seconds", default=1.0, type=click.FloatRange(0), show_default=True,
              help="How long a batch takes.")  # fmt: skip
@click.option(
    "--batch-error-rate", default=0.0, type=click.FloatRange(0, 1), help="Share of a batch's requests that fail."
)
@click.option("--batch-expire-at", type=click.FloatRange(0, 1), help="Every batch expires with this share done.")
@click.option("--batch-fail-at", type=click.FloatRange(0, 1), help="Every batch fails with this share done.")
@click.option("--one-at-a-time", is_flag=True,
              help="Serve one request at a time, a new one cutting the stream in flight short, as llama.cpp's "
                   "server does by default.")  # fmt: skip
@click.option("--slots", default=0, type=click.IntRange(0),
              help="Serve this many requests at once (0: any number); one more stream arriving cuts the oldest in "
                   "flight short, as llama.cpp's server does (--slots 1 is --one-at-a-time).")  # fmt: skip
@click.option("--share-429", default=0.0, type=click.FloatRange(0, 1),
              help="Share of requests answered 429 (retry-after 1) whatever the rate, as providers do.")  # fmt: skip
@click.option("--share-503", default=0.0, type=click.FloatRange(0, 1),
              help="Share of requests answered 503 whatever the rate (capacity short).")  # fmt: skip
@click.option("--rpm-later", type=click.IntRange(1), help="The requests/min limit once --rpm-change-s has passed.")
@click.option("--rpm-change-s", default=0.0, type=click.FloatRange(0),
              help="When --rpm-later replaces --rpm: this many seconds after the first request (a limit that "
                   "moves).")  # fmt: skip
@click.option("--batch-delay-ms", default=0.0, type=click.FloatRange(0),
              help="Every files or batches call waits this long before it is read.")  # fmt: skip
@click.option("--batch-upload-delay-ms", default=0.0, type=click.FloatRange(0),
              help="An upload keeps its file after this long, then answers (a slow upload).")  # fmt: skip
@click.option("--batch-create-delay-ms", default=0.0, type=click.FloatRange(0),
              help="A create makes its batch after this long, then answers (a slow create).")  # fmt: skip
@click.option("--batch-upload-fails", default=0, type=click.IntRange(0),
              help="The first N uploads keep their file, then answer 502.")  # fmt: skip
@click.option("--batch-create-fails", default=0, type=click.IntRange(0),
              help="The first N creates make their batch, then answer 502.")  # fmt: skip
@click.option("--batch-max-lines", type=click.IntRange(1),
              help="Fewer requests a batch may hold than 50,000 (a client splits files at 50,000 unless it runs "
                   "the simulator itself: --provider sim --sim batch_max_lines=N).")  # fmt: skip
@click.option(
    "--api-key-env",
    "api_key_env",
    metavar="NAME",
    help="Require the key held by this environment variable; other keys get 401.",
)
def serve(host: str, port: int, api_key_env: str | None, labels: str | None, **options: Any) -> None:
    """Run the built-in simulator: a Together/OpenAI-compatible endpoint (and Anthropic's Messages
    API at /v1/messages) with synthetic answers.

    Answers are synthetic and deterministic (the same request gets the same answer); use it to try
    jobs, tests and benchmarks without a key or network. Point a run at it with
    --base-url http://127.0.0.1:PORT/v1.
    """
    import asyncio

    from ..job.spec import SimConfig
    from ..simulator import serve as serve_forever

    def ready(url: str) -> None:
        say(f"batchchat simulator on {url} (synthetic answers; Ctrl-C to stop)")
        sys.stdout.flush()

    options["labels"] = tuple(label.strip() for label in labels.split(",") if label.strip()) if labels else ()
    if api_key_env:
        options["api_key"] = os.environ.get(api_key_env)
        if not options["api_key"]:
            from ..job.endpoint import key_state

            _fail(f"--api-key-env: the variable {api_key_env} {key_state(api_key_env)}", False)
    try:
        asyncio.run(serve_forever(SimConfig(**options), host, port, ready))
    except OSError as e:
        _fail(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port", False)
    except KeyboardInterrupt:
        pass
