"""The `llmq` command: human output by default, `--json` for scripts. Exit status 0 on success, 1 when
the job failed or was cancelled or the API refused the request (the reason on stderr), 2 on bad usage."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from llmq import runfile
from llmq.client import Client
from llmq.errors import LlmqError
from llmq.progress import CountsProgress, MapProgress
from llmq.types import Batch, Job

app = typer.Typer(help="llmq: submit LLM jobs now, collect them later.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
batch_app = typer.Typer(help="OpenAI-format batch files: create, status, results, cancel, list.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (an operator's command: needs the repository and Firestore access).",
                       no_args_is_help=True)
stack_app = typer.Typer(help="The local stack (emulators, functions, runner) of this repository.", no_args_is_help=True)
app.add_typer(batch_app, name="batch")
app.add_typer(keys_app, name="keys")
app.add_typer(stack_app, name="stack")

err_console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False)

JsonFlag = Annotated[bool, typer.Option("--json", help="print JSON (for scripts)")]


class _Settings:
    base_url: str | None = None
    api_key: str | None = None
    stack_json: str | None = None


_settings = _Settings()


@app.callback()
def _main(base_url: Annotated[str | None, typer.Option(envvar="LLMQ_BASE_URL", help="the API's base URL")] = None,
          api_key: Annotated[str | None, typer.Option(envvar="LLMQ_API_KEY", help="the API key")] = None,
          stack: Annotated[str | None, typer.Option(envvar="LLMQ_STACK_JSON",
                                                    help="a local stack's stack.json (default .local/stack.json)")] = None,
          ) -> None:
    _settings.base_url, _settings.api_key, _settings.stack_json = base_url, api_key, stack


def _client() -> Client:
    try:
        return Client(_settings.base_url, _settings.api_key, stack_json=_settings.stack_json)
    except LlmqError as err:
        _fail(err)


def _fail(err: Exception | str) -> NoReturn:
    err_console.print(f"error: {err}", markup=False)
    details = getattr(err, "details", None)
    for detail in details or []:
        err_console.print(f"  {detail.get('field', '')}: {detail.get('code', '')}: {detail.get('message', '')}",
                          markup=False)
    raise typer.Exit(1)


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def _job_json(job: Job) -> dict[str, Any]:
    return job.model_dump(mode="json")


def _finish(job: Job, *, as_json: bool, print_output: bool = True) -> None:
    """Print a job and exit non-zero, its error on stderr, when it failed or was cancelled."""
    if as_json:
        _print_json(_job_json(job))
    elif job.status == "succeeded" and print_output:
        typer.echo(job.output or "")
    elif not job.done:
        typer.echo(f"{job.id} {job.status}")
    if job.status in ("failed", "cancelled"):
        reason = f": {job.error.code}: {job.error.message}" if job.error else ""
        err_console.print(f"job {job.id} {job.status}{reason}", markup=False)
        raise typer.Exit(1)


def _split_pairs(pairs: list[str] | None, what: str) -> dict[str, str] | None:
    if not pairs:
        return None
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"{what} must be KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


# -- jobs ---------------------------------------------------------------------------------------------------

@app.command()
def submit(prompt: Annotated[str | None, typer.Argument(help="the prompt (a user message)")] = None,
           messages: Annotated[Path | None, typer.Option(help="a JSON file of OpenAI chat messages")] = None,
           completion: Annotated[bool, typer.Option(help="send PROMPT as a text completion, not a chat")] = False,
           model: Annotated[str | None, typer.Option()] = None,
           max_tokens: Annotated[int | None, typer.Option()] = None,
           temperature: Annotated[float | None, typer.Option()] = None,
           priority: Annotated[str | None, typer.Option(help="interactive | batch")] = None,
           deadline: Annotated[float | None, typer.Option(help="seconds the job may wait to start")] = None,
           metadata: Annotated[list[str] | None, typer.Option(help="KEY=VALUE (repeatable)")] = None,
           idempotency_key: Annotated[str | None, typer.Option()] = None,
           wait: Annotated[bool, typer.Option("--wait", help="wait for the result and print it")] = False,
           stream: Annotated[bool, typer.Option("--stream", help="print the output as it is generated")] = False,
           as_json: JsonFlag = False) -> None:
    """Submit a job; print its id (or, with --wait / --stream, its output)."""
    if (prompt is None) == (messages is None):
        raise typer.BadParameter("give PROMPT or --messages FILE")
    if messages is not None:
        chat: list[dict[str, Any]] | None = json.loads(messages.read_text())
        text = None
    elif completion:
        chat, text = None, prompt
    else:
        chat, text = [{"role": "user", "content": prompt}], None
    with _client() as client:
        try:
            job = client.submit(text, messages=chat, model=model, max_tokens=max_tokens, temperature=temperature,
                                priority=priority, deadline_seconds=deadline, stream=True if stream else None,
                                metadata=_split_pairs(metadata, "--metadata"), idempotency_key=idempotency_key)
            if stream:
                err_console.print(f"{job.id} {job.status}", markup=False)
                for delta in client.stream(job.id):
                    if not as_json:
                        sys.stdout.write(delta)
                        sys.stdout.flush()
                job = client.get(job.id)
                if not as_json:
                    typer.echo("")
                _finish(job, as_json=as_json, print_output=False)
            elif wait:
                _finish(client.wait(job.id), as_json=as_json)
            elif as_json:
                _print_json(_job_json(job))
            else:
                typer.echo(job.id)
        except LlmqError as err:
            _fail(err)


@app.command()
def get(job_id: str, wait: Annotated[bool, typer.Option("--wait", help="wait until it is final")] = False,
        timeout: Annotated[float | None, typer.Option(help="seconds to wait at most")] = None,
        as_json: JsonFlag = False) -> None:
    """Show a job (its output when it succeeded)."""
    with _client() as client:
        try:
            job = client.wait(job_id, timeout) if wait else client.get(job_id)
        except LlmqError as err:
            _fail(err)
        _finish(job, as_json=as_json)


@app.command()
def watch(job_id: str, timeout: Annotated[float | None, typer.Option(help="seconds at most")] = None) -> None:
    """Follow a job live: its status changes on stderr, its output on stdout as it grows (through a Firestore
    listener where the client can read the database, else by polling)."""
    with _client() as client:
        status, shown = "", ""
        try:
            for job in client.updates(job_id, timeout=timeout):
                if job.status != status:
                    status = job.status
                    err_console.print(f"[{time.strftime('%H:%M:%S')}] {job.id} {status}", markup=False)
                output = job.output or ""
                if output.startswith(shown) and len(output) > len(shown):
                    sys.stdout.write(output[len(shown):])
                    sys.stdout.flush()
                    shown = output
        except LlmqError as err:
            _fail(err)
        if shown:
            typer.echo("")
        _finish(job, as_json=False, print_output=False)


@app.command()
def cancel(job_id: str, as_json: JsonFlag = False) -> None:
    """Cancel a queued or running job (a finished job is left as it is)."""
    with _client() as client:
        try:
            job = client.cancel(job_id)
        except LlmqError as err:
            _fail(err)
        if as_json:
            _print_json(_job_json(job))
        else:
            typer.echo(f"{job.id} {job.status}")


@app.command()
def models(as_json: JsonFlag = False) -> None:
    """The deployment's models (the default first) and their aliases."""
    with _client() as client:
        try:
            listed = client.models()
        except LlmqError as err:
            _fail(err)
    if as_json:
        _print_json([m.model_dump(mode="json") for m in listed])
        return
    table = Table("model", "alias of")
    for m in listed:
        table.add_row(m.id, m.alias_of or "")
    out_console.print(table)


@app.command()
def run(input: Annotated[Path, typer.Argument(help="JSONL of requests (or plain text: one prompt a line)",
                                              exists=True, dir_okay=False)],
        output: Annotated[Path, typer.Option("-o", "--output", help="JSONL of results (appended; resumable)")],
        concurrency: Annotated[int, typer.Option("-c", "--concurrency", min=1, help="jobs in flight")] = 16,
        model: Annotated[str | None, typer.Option(help="for lines that name none")] = None,
        max_tokens: Annotated[int | None, typer.Option(help="for lines that give none")] = None,
        priority: Annotated[str | None, typer.Option(help="for lines that give none (interactive | batch)")] = None,
        timeout: Annotated[float | None, typer.Option(help="seconds each job may take")] = None,
        progress: Annotated[bool | None, typer.Option(help="show a progress bar (default: on a terminal)")] = None,
        ) -> None:
    """Run every request of a file as jobs, at most --concurrency in flight, appending one result line each to
    OUTPUT as it completes. Run it again after a crash or Ctrl-C: lines already in OUTPUT are skipped and jobs
    already submitted are attached to, never submitted twice."""
    defaults = {k: v for k, v in {"model": model, "max_tokens": max_tokens, "priority": priority}.items()
                if v is not None}
    try:
        lines = runfile.read_input(input, defaults)
    except (runfile.InputError, UnicodeDecodeError) as err:
        _fail(str(err))
    done = runfile.done_ids(output)
    todo = list(runfile.pending(lines, done))
    err_console.print(f"{len(lines)} requests, {len(lines) - len(todo)} already in {output}, {len(todo)} to run",
                      markup=False)
    bar = MapProgress(len(lines), completed=len(lines) - len(todo), force=bool(progress)) if progress is not False \
        else None
    failed = left = 0
    with _client() as client, open(output, "a", encoding="utf-8") as out:
        try:
            for result in client.map(todo, concurrency=concurrency, timeout=timeout):
                if runfile.is_final(result):
                    runfile.append(out, runfile.result_line(result))
                    failed += not result.succeeded
                else:
                    left += 1
                if bar:
                    bar.advance(result.succeeded)
        except KeyboardInterrupt:
            if bar:
                bar.close()
            err_console.print("interrupted: run the same command again to resume", markup=False)
            out.close()
            os._exit(130)  # map()'s threads may be holding long-polls: do not wait for them
        finally:
            if bar:
                bar.close()
    summary = f"done: {len(lines) - failed - left} succeeded, {failed} failed"
    if left:
        summary += f", {left} not finished (a transient error or a timeout): run the same command again"
    err_console.print(summary, markup=False)
    if failed or left:
        raise typer.Exit(1)


# -- batches ------------------------------------------------------------------------------------------------

def _batch_line(batch: Batch) -> str:
    c = batch.request_counts
    return f"{batch.id} {batch.status} {c.completed + c.failed}/{c.total} ({c.failed} failed)"


def _watch_batch(client: Client, batch_id: str, *, as_json: bool, timeout: float | None) -> Batch:
    bar = None if as_json else CountsProgress(batch_id)
    try:
        def update(b: Batch) -> None:
            if bar:
                c = b.request_counts
                bar.update(status=b.status, total=c.total, completed=c.completed, failed=c.failed)

        return client.batches.wait(batch_id, timeout, on_update=update)
    finally:
        if bar:
            bar.close()


def _batch_done(batch: Batch, *, as_json: bool) -> None:
    if as_json:
        _print_json(batch.model_dump(mode="json"))
    else:
        typer.echo(_batch_line(batch))
    if batch.status in ("failed", "cancelled", "expired"):
        error = batch.extra("error")
        err_console.print(f"batch {batch.id} {batch.status}" + (f": {error}" if error else ""), markup=False)
        raise typer.Exit(1)


@batch_app.command("create")
def batch_create(file: Annotated[Path | None, typer.Argument(help="a local OpenAI-format JSONL file",
                                                             exists=True, dir_okay=False)] = None,
                 input_uri: Annotated[str | None, typer.Option(help="gs://<batch bucket>/<object> instead")] = None,
                 metadata: Annotated[list[str] | None, typer.Option(help="KEY=VALUE (repeatable)")] = None,
                 watch: Annotated[bool, typer.Option("--watch", help="follow it to the end")] = False,
                 timeout: Annotated[float | None, typer.Option(help="seconds to watch at most")] = None,
                 as_json: JsonFlag = False) -> None:
    """Start a batch now from a local file or a gs:// object."""
    if (file is None) == (input_uri is None):
        raise typer.BadParameter("give FILE or --input-uri")
    with _client() as client:
        try:
            batch = client.batches.create(file, input_uri=input_uri, metadata=_split_pairs(metadata, "--metadata"))
            if not watch:
                _batch_done(batch, as_json=as_json)
                return
            err_console.print(f"{batch.id} created", markup=False)
            _batch_done(_watch_batch(client, batch.id, as_json=as_json, timeout=timeout), as_json=as_json)
        except LlmqError as err:
            _fail(err)


@batch_app.command("status")
def batch_status(batch_id: str, watch: Annotated[bool, typer.Option("--watch")] = False,
                 timeout: Annotated[float | None, typer.Option()] = None, as_json: JsonFlag = False) -> None:
    """Show a batch (with --watch, a progress bar until it ends)."""
    with _client() as client:
        try:
            batch = (_watch_batch(client, batch_id, as_json=as_json, timeout=timeout) if watch
                     else client.batches.get(batch_id))
        except LlmqError as err:
            _fail(err)
        _batch_done(batch, as_json=as_json)


@batch_app.command("results")
def batch_results(batch_id: str,
                  errors: Annotated[bool, typer.Option("--errors", help="the error lines instead")] = False) -> None:
    """Print the batch's output lines (JSONL), or its error lines."""
    with _client() as client:
        try:
            lines = client.batches.errors(batch_id) if errors else client.batches.results(batch_id)
            for line in lines:
                typer.echo(json.dumps(line))
        except LlmqError as err:
            _fail(err)


@batch_app.command("cancel")
def batch_cancel(batch_id: str, as_json: JsonFlag = False) -> None:
    """Cancel a batch: finished lines are kept."""
    with _client() as client:
        try:
            batch = client.batches.cancel(batch_id)
        except LlmqError as err:
            _fail(err)
    if as_json:
        _print_json(batch.model_dump(mode="json"))
    else:
        typer.echo(_batch_line(batch))


@batch_app.command("list")
def batch_list(limit: Annotated[int, typer.Option()] = 20, as_json: JsonFlag = False) -> None:
    """The tenant's batches (needs the server's GET /v1/batches, from the OpenAI Batches API)."""
    with _client() as client:
        try:
            batches = client.batches.list(limit=limit)
        except LlmqError as err:
            _fail(err)
    if as_json:
        _print_json([b.model_dump(mode="json") for b in batches])
        return
    for b in batches:
        typer.echo(_batch_line(b))


# -- operators: keys and the local stack (repo-only) --------------------------------------------------------

def _repo() -> Path:
    """The llmq repository these commands drive: LLMQ_REPO, else the current directory or one above it."""
    if explicit := os.environ.get("LLMQ_REPO"):
        return Path(explicit)
    for folder in (Path.cwd(), *Path.cwd().parents):
        if (folder / "scripts" / "local_stack.py").exists():
            return folder
    _fail("not inside the llmq repository (set LLMQ_REPO): this command runs the repository's scripts")


@keys_app.command("create")
def keys_create(tenant: Annotated[str, typer.Option()], name: Annotated[str, typer.Option()] = "",
                project: Annotated[str | None, typer.Option(help="a deployment's project (default: the local stack)")]
                = None, state_dir: Annotated[Path | None, typer.Option()] = None) -> None:
    """Create a key for a tenant; prints it, once."""
    from llmq import operator

    raise typer.Exit(operator.api_keys(_repo(), ["create", "--tenant", tenant, "--name", name],
                                       project=project, state_dir=state_dir))


@keys_app.command("list")
def keys_list(tenant: Annotated[str | None, typer.Option()] = None,
              project: Annotated[str | None, typer.Option()] = None,
              state_dir: Annotated[Path | None, typer.Option()] = None) -> None:
    """List keys (hash prefix, tenant, name, state)."""
    from llmq import operator

    raise typer.Exit(operator.api_keys(_repo(), ["list", *(["--tenant", tenant] if tenant else [])],
                                       project=project, state_dir=state_dir))


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str | None, typer.Option()] = None,
                key_hash: Annotated[str | None, typer.Option("--hash")] = None,
                project: Annotated[str | None, typer.Option()] = None,
                state_dir: Annotated[Path | None, typer.Option()] = None) -> None:
    """Revoke a key (by the key itself or its SHA-256)."""
    from llmq import operator

    if (key is None) == (key_hash is None):
        raise typer.BadParameter("give --key or --hash")
    which = ["--key", key] if key else ["--hash", key_hash or ""]
    raise typer.Exit(operator.api_keys(_repo(), ["revoke", *which], project=project, state_dir=state_dir))


@app.command("top")
def top(once: Annotated[bool, typer.Option(help="one frame, then exit")] = False,
        interval: Annotated[float, typer.Option(help="seconds between refreshes")] = 2.0,
        state_dir: Annotated[Path | None, typer.Option()] = None) -> None:
    """A live view of the local stack: queued, running and finished per minute, in flight, latency, failures."""
    from llmq import operator

    args = ["--interval", str(interval), *(["--once"] if once else []),
            *(["--state-dir", str(state_dir)] if state_dir else [])]
    raise typer.Exit(operator.script(_repo(), "top", args))


@app.command("trace")
def trace(job_id: Annotated[str, typer.Argument(help="a job id, or a batch id")],
          wait: Annotated[float, typer.Option(help="seconds to wait for the job's last span")] = 0.0,
          state_dir: Annotated[Path | None, typer.Option()] = None) -> None:
    """A job's hops as a waterfall with durations, from the local stack's traces."""
    from llmq import operator

    args = [job_id, "--wait", str(wait), *(["--state-dir", str(state_dir)] if state_dir else [])]
    raise typer.Exit(operator.script(_repo(), "trace", args))


@stack_app.command("up")
def stack_up(state_dir: Annotated[Path | None, typer.Option(help="default <repo>/.local")] = None,
             timeout: Annotated[float, typer.Option()] = 600,
             args: Annotated[list[str] | None, typer.Argument(help="more arguments for scripts.local_stack up")] = None,
             ) -> None:
    """Start the local stack in the background and wait until it serves (stack.json written)."""
    from llmq import operator

    try:
        info = operator.stack_up(_repo(), state_dir, list(args or []), timeout=timeout,
                                 on_wait=lambda: err_console.print("starting the local stack (first time: builds the "
                                                                   "model, ~1-2 min)...", markup=False))
    except RuntimeError as err:
        _fail(str(err))
    typer.echo(f"stack ready: {info['api_url']} (model {info.get('model')}); stop it with `llmq stack down`")


@stack_app.command("down")
def stack_down(state_dir: Annotated[Path | None, typer.Option()] = None) -> None:
    """Stop the local stack started by `llmq stack up` (every process it started)."""
    from llmq import operator

    try:
        stopped = operator.stack_down(_repo(), state_dir)
    except RuntimeError as err:
        _fail(str(err))
    typer.echo("stack stopped" if stopped else "no stack was running")


@stack_app.command("status")
def stack_status(state_dir: Annotated[Path | None, typer.Option()] = None, as_json: JsonFlag = False) -> None:
    """Whether the local stack runs, its URL and its components."""
    from llmq import operator

    report = operator.stack_status(_repo(), state_dir)
    if as_json:
        _print_json(report)
    elif report["running"]:
        typer.echo(f"running: {report['api_url']} (model {report['model']})")
        for name, alive in report["components"].items():
            typer.echo(f"  {name:12} {'up' if alive else 'DOWN'}")
    else:
        typer.echo("not running")
    if not report["running"]:
        raise typer.Exit(1)


def main() -> None:
    app()
