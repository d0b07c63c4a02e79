"""The demo: submit a handful of prompts to the local stack with the llmq client, watch each job's
Firestore document with on_snapshot listeners, and print the status transitions, outputs and timings;
then the client's own ways to wait (a `?wait` long-poll), stream and run many prompts at once (map); then
the same platform through OpenAI's own SDK at the stack's one URL (a chat completion, and a streamed one).

Uses the running stack found in <state dir>/stack.json, or starts one for the demo and stops it
afterwards. Exits 0 when every job succeeded and its GCS result matches its document.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import llmq
from scripts.stack_client import JobWatcher, Stack, running_stack

REPO = Path(__file__).resolve().parents[1]

PROMPTS: list[dict[str, Any]] = [
    {"prompt": "Once upon a time, in a quiet valley,", "max_tokens": 48, "metadata": {"demo": "completion"}},
    {"messages": [{"role": "system", "content": "You are a terse assistant."},
                  {"role": "user", "content": "Name three rivers of Europe."}],
     "max_tokens": 48, "temperature": 0.7, "seed": 7, "metadata": {"demo": "chat"}},
    {"messages": [{"role": "user", "content": "Write a haiku about queues."}], "max_tokens": 64,
     "stream": True, "metadata": {"demo": "streamed-chat"}},
    {"prompt": "The three laws of good software are", "max_tokens": 32, "temperature": 0,
     "stop": ["\n\n"], "metadata": {"demo": "greedy-with-stop"}},
    {"prompt": "Batch jobs run when the GPU is free:", "max_tokens": 32, "priority": "batch",
     "metadata": {"demo": "batch-priority"}},
]


def run_demo(stack: Stack, timeout: float) -> bool:
    db = stack.firestore()
    ok = True
    with llmq.Client(stack_json=str(stack.state_dir / "stack.json")) as client:
        submitted: dict[str, float] = {}
        labels: dict[str, str] = {}

        def on_change(job_id: str, doc: dict[str, Any]) -> None:
            elapsed = time.monotonic() - submitted[job_id]
            partial = doc["status"] == "running" and doc.get("output")
            extra = f"  partial output: {len(doc['output'])} chars" if partial else ""
            print(f"{labels[job_id]:>18}  +{elapsed:6.2f}s  {doc['status']}{extra}", flush=True)

        with JobWatcher(db, on_change=on_change) as watcher:
            for body in PROMPTS:
                t0 = time.monotonic()
                try:
                    job = client.submit(**body)
                except llmq.LlmqError as err:
                    print(f"submit failed: {err}")
                    return False
                submitted[job.id] = t0
                labels[job.id] = body["metadata"]["demo"]
                print(f"{labels[job.id]:>18}  +{time.monotonic() - t0:6.2f}s  submitted ({job.status}) as {job.id}",
                      flush=True)
                watcher.add(job.id)
            if not watcher.wait(timeout):
                print(f"not all jobs finished within {timeout}s")
                return False
            bucket = stack.storage().bucket(stack.info["results_bucket"])
            print()
            for job_id, t0 in submitted.items():
                doc = watcher.latest(job_id)
                assert doc is not None
                done_at = next(t for t, d in watcher.history[job_id] if d["status"] == doc["status"])
                print(f"{labels[job_id]} ({job_id}): {' -> '.join(watcher.statuses(job_id))} "
                      f"in {done_at - t0:.2f}s from submit")
                if doc["status"] != "succeeded":
                    print(f"  error: {doc.get('error')}")
                    ok = False
                    continue
                result = json.loads(bucket.blob(f"results/{job_id}.json").download_as_text())
                choice = result["choices"][0]
                text = choice["message"]["content"] if "message" in choice else choice["text"]
                matches = text.startswith(doc["output"]) and result["usage"] == doc["usage"]
                ok &= matches
                m = doc["metrics"]
                print(f"  output: {doc['output'][:100]!r}")
                print(f"  finish_reason={doc['finish_reason']} usage={doc['usage']} "
                      f"queue={m['queue_seconds']:.2f}s ttft={m['time_to_first_token_seconds']:.3f}s "
                      f"gen={m['generation_seconds']:.2f}s ({m['tokens_per_second']:.0f} tok/s)")
                print(f"  result: {doc['result_uri']} ({result['object']}; matches the document: {matches})")
            # The same job through the status function, as a client without Firestore access would.
            any_id = next(iter(submitted))
            print(f"\nclient.wait({any_id}, via='poll') (GET /v1/jobs/{{id}}?wait) -> "
                  f"{client.wait(any_id, 5, via='poll').status}")
        ok &= client_demo(client)
    return ok and openai_sdk_demo(stack)


def client_demo(client: llmq.Client) -> bool:
    """What the llmq client adds over plain HTTP: a stream of deltas, and many prompts at once."""
    job = client.submit("Tell me about queues.", max_tokens=48, stream=True)
    deltas = list(client.stream(job.id, timeout=120))
    print(f"client.stream({job.id}) -> {len(deltas)} deltas: {''.join(deltas)[:60]!r}")
    requests = [{"custom_id": f"q{i}", "prompt": f"Fact number {i}:", "max_tokens": 16} for i in range(8)]
    started = time.monotonic()
    results = list(client.map(requests, concurrency=4, timeout=120))
    good = sum(r.succeeded for r in results)
    print(f"client.map(8 prompts, concurrency=4) -> {good}/8 succeeded in {time.monotonic() - started:.1f}s "
          f"(as they completed: {', '.join(r.custom_id or '' for r in results)})")
    return bool(deltas) and good == len(requests)


def openai_sdk_demo(stack: Stack) -> bool:
    """A program written for OpenAI, pointed at llmq by base_url and api_key alone."""
    import openai  # here: only this part of the demo needs the SDK

    print(f"\nOpenAI SDK at {stack.info['api_url']}/v1")
    with openai.OpenAI(base_url=stack.info["api_url"] + "/v1", api_key=stack.info["api_key"], timeout=120) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(
            model=stack.info["model"], messages=[{"role": "user", "content": "Name a queue."}], max_tokens=24)
        chat = raw.parse()
        print(f"  chat.completions.create -> {chat.object} from {chat.model}, job {raw.headers['llmq-job-id']}: "
              f"{(chat.choices[0].message.content or '')[:60]!r} ({chat.usage.total_tokens if chat.usage else '?'} tokens)")
        pieces: list[str] = []
        with sdk.chat.completions.create(model=stack.info["model"], stream=True, max_tokens=24,
                                         stream_options={"include_usage": True},
                                         messages=[{"role": "user", "content": "Stream a poem."}]) as stream:
            for chunk in stream:
                pieces.extend(c.delta.content or "" for c in chunk.choices)
        print(f"  chat.completions.create(stream=True) -> {len(pieces)} deltas: {''.join(pieces)[:60]!r}")
    return chat.object == "chat.completion" and bool(pieces)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state-dir", type=Path, default=REPO / ".local")
    parser.add_argument("--timeout", type=float, default=180)
    args = parser.parse_args()
    args.state_dir.mkdir(parents=True, exist_ok=True)
    with running_stack(args.state_dir.resolve()) as stack:
        ok = run_demo(stack, args.timeout)
    print("\ndemo", "succeeded" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
