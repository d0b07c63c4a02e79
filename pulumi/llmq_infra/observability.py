"""Alerts (dead letters waiting, the oldest unacknowledged job, the runner's 5xx ratio, the submissions'
error ratio, the jobs' failure ratio) and one dashboard (queue depth and age, submissions by outcome, job
latency, time to first token, in flight and the engine's queue per runner, GPU instances, runner answers,
dead letters).

Where the figures come from (docs/DEPLOY.md "Metrics"): Pub/Sub's and Cloud Run's own metrics; the runner's
Prometheus metrics (runner/metrics.py), which Managed Service for Prometheus' sidecar writes to Cloud
Monitoring as `prometheus.googleapis.com/<name>/<kind>`; and the functions' one `submission` log line per
submission, counted by the log-based metric `llmq_submissions` (a function's instances cannot be scraped)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import pulumi_gcp as gcp

import pulumi
from llmq_infra.common import child_options, duration


@dataclass
class ObservabilityArgs:
    project: str
    dashboard_name: str
    runner_services: Sequence[pulumi.Input[str]]
    jobs_subscriptions: Sequence[pulumi.Input[str]]
    inspection_subscription: pulumi.Input[str]
    oldest_unacked_alert_seconds: int
    runner_error_ratio: float
    # Submissions answered unavailable/overloaded/internal, and jobs ended failed, over all, for 10 minutes.
    error_ratio: float = 0.05
    alert_emails: Sequence[str] = ()
    labels: dict[str, str] = field(default_factory=dict)


def _one_of(values: Sequence[str]) -> str:
    return "one_of(" + ", ".join(json.dumps(v) for v in values) + ")"


def subscription_filter(metric: str, subscriptions: Sequence[str]) -> str:
    return (f'resource.type = "pubsub_subscription" AND metric.type = "pubsub.googleapis.com/subscription/{metric}" '
            f"AND resource.label.subscription_id = {_one_of(subscriptions)}")


def runner_filter(metric: str, services: Sequence[str], extra: str = "") -> str:
    return (f'resource.type = "cloud_run_revision" AND metric.type = "run.googleapis.com/{metric}" '
            f"AND resource.label.service_name = {_one_of(services)}{extra}")


SUBMISSIONS_METRIC = "llmq_submissions"
# The submission outcomes that are the platform's fault (jobs.adapters.http.Submission: an error's code).
SERVER_OUTCOMES = ("unavailable", "overloaded", "internal")


def submissions_filter(extra: str = "") -> str:
    return (f'resource.type = "cloud_run_revision" AND metric.type = "logging.googleapis.com/user/{SUBMISSIONS_METRIC}"'
            f"{extra}")


def prometheus_filter(name: str, kind: str, extra: str = "") -> str:
    """A runner metric as Managed Service for Prometheus writes it (runner/metrics.py names)."""
    return f'resource.type = "prometheus_target" AND metric.type = "prometheus.googleapis.com/{name}/{kind}"{extra}'


def _chart(title: str, filter_: str, aligner: str, reducer: str, group_by: list[str], x: int, y: int,
           period: str = "60s") -> dict:
    return {
        "xPos": x, "yPos": y, "width": 24, "height": 16,
        "widget": {"title": title, "xyChart": {"dataSets": [{
            "plotType": "LINE",
            "timeSeriesQuery": {"timeSeriesFilter": {"filter": filter_, "aggregation": {
                "alignmentPeriod": period, "perSeriesAligner": aligner,
                "crossSeriesReducer": reducer, "groupByFields": group_by}}},
        }]}},
    }


def dashboard_json(title: str, services: Sequence[str], subscriptions: Sequence[str], inspection: str) -> str:
    """The dashboard's mosaic layout (Cloud Monitoring's JSON shape)."""
    runner_tiles = [
        _chart("Queue depth (jobs not yet delivered)", subscription_filter("num_undelivered_messages", subscriptions),
               "ALIGN_MAX", "REDUCE_SUM", ["resource.label.subscription_id"], 0, 0),
        _chart("Oldest unacknowledged job (s)", subscription_filter("oldest_unacked_message_age", subscriptions),
               "ALIGN_MAX", "REDUCE_MAX", ["resource.label.subscription_id"], 24, 0),
        # One push request is one job from claim to finish: its latency is the job's run time.
        _chart("Job latency p50 (push request, ms)", runner_filter("request_latencies", services),
               "ALIGN_DELTA", "REDUCE_PERCENTILE_50", ["resource.label.service_name"], 0, 16),
        _chart("Job latency p95 (push request, ms)", runner_filter("request_latencies", services),
               "ALIGN_DELTA", "REDUCE_PERCENTILE_95", ["resource.label.service_name"], 24, 16),
        _chart("GPU instances (one L4 each)", runner_filter("container/instance_count", services),
               "ALIGN_MAX", "REDUCE_SUM", ["resource.label.service_name", "metric.label.state"], 0, 32),
        _chart("Runner answers by class (2xx ack, 429/5xx redeliver)", runner_filter("request_count", services),
               "ALIGN_RATE", "REDUCE_SUM", ["metric.label.response_code_class"], 24, 32),
    ]
    runner_metrics = [
        _chart("Jobs in flight per runner instance", prometheus_filter("llmq_inflight", "gauge"),
               "ALIGN_MAX", "REDUCE_MAX", ["resource.label.instance"], 0, 64),
        _chart("Engine: requests waiting to run", prometheus_filter("llmq_engine_waiting", "gauge"),
               "ALIGN_MAX", "REDUCE_SUM", [], 24, 64),
        _chart("Time to first token p99 (s)", prometheus_filter("llmq_time_to_first_token_seconds", "histogram"),
               "ALIGN_DELTA", "REDUCE_PERCENTILE_99", [], 0, 80),
        _chart("Job latency p50 (s, submit to finish)", prometheus_filter("llmq_job_latency_seconds", "histogram"),
               "ALIGN_DELTA", "REDUCE_PERCENTILE_50", [], 24, 80),
        _chart("Job latency p99 (s, submit to finish)", prometheus_filter("llmq_job_latency_seconds", "histogram"),
               "ALIGN_DELTA", "REDUCE_PERCENTILE_99", [], 0, 96),
        _chart("Jobs finished by outcome, lost claims", prometheus_filter("llmq_jobs_finished_total", "counter"),
               "ALIGN_RATE", "REDUCE_SUM", ["metric.label.outcome"], 24, 96),
        _chart("Dead letters per minute", subscription_filter("dead_letter_message_count", subscriptions),
               "ALIGN_RATE", "REDUCE_SUM", [], 0, 112),
    ]
    tiles = [*(runner_tiles + runner_metrics if services else []),
             _chart("Dead letters kept for inspection", subscription_filter("num_undelivered_messages", [inspection]),
                    "ALIGN_MAX", "REDUCE_SUM", [], 0, 48),
             _chart("Submissions by outcome", submissions_filter(), "ALIGN_RATE", "REDUCE_SUM",
                    ["metric.label.outcome"], 24, 48)]
    return json.dumps({"displayName": title, "mosaicLayout": {"columns": 48, "tiles": tiles}}, sort_keys=True)


class Observability(pulumi.ComponentResource):
    alert_policies: dict[str, gcp.monitoring.AlertPolicy]
    dashboard: gcp.monitoring.Dashboard
    submissions_metric: gcp.logging.Metric

    def __init__(self, name: str, args: ObservabilityArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if bool(args.runner_services) != bool(args.jobs_subscriptions):
            raise ValueError("Observability: runners and their subscriptions come together")
        if args.oldest_unacked_alert_seconds < 60:
            raise ValueError("Observability: oldest_unacked_alert_seconds must be at least 60")
        if not 0 < args.runner_error_ratio <= 1 or not 0 < args.error_ratio <= 1:
            raise ValueError("Observability: runner_error_ratio and error_ratio must be in (0, 1]")
        super().__init__("llmq:infra:Observability", name, None, opts)
        child = child_options(self, opts)
        channels = [
            gcp.monitoring.NotificationChannel(
                f"{name}-email-{i}", project=args.project, type="email", display_name=f"llmq alerts: {email}",
                labels={"email_address": email}, opts=child).name
            for i, email in enumerate(args.alert_emails)
        ]
        services = pulumi.Output.all(*args.runner_services)
        subscriptions = pulumi.Output.all(*args.jobs_subscriptions)
        inspection = pulumi.Output.from_input(args.inspection_subscription)

        def policy(key: str, display: str, condition: gcp.monitoring.AlertPolicyConditionArgs, doc: str,
                   severity: str) -> gcp.monitoring.AlertPolicy:
            return gcp.monitoring.AlertPolicy(
                f"{name}-{key}", project=args.project, display_name=display, combiner="OR",
                conditions=[condition], notification_channels=channels, severity=severity,
                user_labels=args.labels,
                documentation=gcp.monitoring.AlertPolicyDocumentationArgs(content=doc, mime_type="text/markdown"),
                alert_strategy=gcp.monitoring.AlertPolicyAlertStrategyArgs(auto_close="1800s"),
                opts=child)

        def ratio(key: str, display: str, numerator: pulumi.Input[str], denominator: pulumi.Input[str], doc: str,
                  *, depends_on: list[pulumi.Resource] | None = None) -> gcp.monitoring.AlertPolicy:
            aggregation = {"alignment_period": "300s", "per_series_aligner": "ALIGN_RATE",
                           "cross_series_reducer": "REDUCE_SUM"}
            return gcp.monitoring.AlertPolicy(
                f"{name}-{key}", project=args.project, display_name=display, combiner="OR",
                conditions=[gcp.monitoring.AlertPolicyConditionArgs(
                    display_name=display,
                    condition_threshold=gcp.monitoring.AlertPolicyConditionConditionThresholdArgs(
                        filter=numerator, denominator_filter=denominator,
                        aggregations=[gcp.monitoring.AlertPolicyConditionConditionThresholdAggregationArgs(
                            **aggregation)],
                        denominator_aggregations=[
                            gcp.monitoring.AlertPolicyConditionConditionThresholdDenominatorAggregationArgs(
                                **aggregation)],
                        comparison="COMPARISON_GT", threshold_value=args.error_ratio, duration=duration(600)))],
                notification_channels=channels, severity="ERROR", user_labels=args.labels,
                documentation=gcp.monitoring.AlertPolicyDocumentationArgs(content=doc, mime_type="text/markdown"),
                alert_strategy=gcp.monitoring.AlertPolicyAlertStrategyArgs(auto_close="1800s"),
                opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=depends_on or [])))

        # One `submission` log line per submission (jobs/adapters/http.py), counted by outcome.
        self.submissions_metric = gcp.logging.Metric(
            f"{name}-submissions", project=args.project, name=SUBMISSIONS_METRIC,
            description="llmq submissions (POST /v1/jobs, /v1/chat/completions, /v1/completions) by outcome",
            filter='resource.type = "cloud_run_revision" AND jsonPayload.message = "submission"',
            label_extractors={"outcome": "EXTRACT(jsonPayload.outcome)"},
            metric_descriptor=gcp.logging.MetricMetricDescriptorArgs(
                metric_kind="DELTA", value_type="INT64", unit="1",
                labels=[gcp.logging.MetricMetricDescriptorLabelArgs(key="outcome", value_type="STRING")]),
            opts=child)

        per_minute_max = [gcp.monitoring.AlertPolicyConditionConditionThresholdAggregationArgs(
            alignment_period="60s", per_series_aligner="ALIGN_MAX")]
        self.alert_policies = {}
        self.alert_policies["dead-letters"] = policy(
            "dead-letters", "llmq: jobs were dead-lettered",
            gcp.monitoring.AlertPolicyConditionArgs(
                display_name="messages in the dead-letter subscription",
                condition_threshold=gcp.monitoring.AlertPolicyConditionConditionThresholdArgs(
                    filter=inspection.apply(lambda s: subscription_filter("num_undelivered_messages", [s])),
                    comparison="COMPARISON_GT", threshold_value=0, duration="0s",
                    aggregations=per_minute_max)),
            "Jobs exhausted their delivery attempts and were marked `failed` (`dead_lettered`). "
            "Read them with `gcloud pubsub subscriptions pull <inspection subscription> --limit 10`; "
            "acknowledge (`--auto-ack`) to close the alert.",
            "ERROR")
        self.alert_policies["submission-errors"] = ratio(
            "submission-errors", "llmq: submissions fail on the platform's side",
            submissions_filter(f" AND metric.label.outcome = {_one_of(SERVER_OUTCOMES)}"), submissions_filter(),
            "More than the threshold of submissions were answered 503 (a dependency down, or the submit "
            "instances overloaded) or 500 for 10 minutes. The `submission` log lines carry the outcome and, "
            "through their trace, the span that failed.", depends_on=[self.submissions_metric])
        if args.runner_services:  # none before the runner image is built
            self.alert_policies["job-failures"] = ratio(
                "job-failures", "llmq: jobs end failed",
                prometheus_filter("llmq_jobs_finished_total", "counter", ' AND metric.label.outcome = "failed"'),
                prometheus_filter("llmq_jobs_finished_total", "counter"),
                "More than the threshold of the jobs the runners ended were failed for 10 minutes "
                "(prompts too long, requests the engine rejects). `error.code` on the job documents says why; "
                "`trace_id` leads to the job's trace in Cloud Trace.")
            self.alert_policies["oldest-unacked"] = policy(
                "oldest-unacked", "llmq: jobs wait too long in the queue",
                gcp.monitoring.AlertPolicyConditionArgs(
                    display_name="oldest unacknowledged job message",
                    condition_threshold=gcp.monitoring.AlertPolicyConditionConditionThresholdArgs(
                        filter=subscriptions.apply(lambda s: subscription_filter("oldest_unacked_message_age", s)),
                        comparison="COMPARISON_GT", threshold_value=args.oldest_unacked_alert_seconds,
                        duration="300s", aggregations=per_minute_max)),
                "The oldest job message has waited longer than the threshold: runners cannot start "
                "(GPU quota, image, model load), are at max instances, or keep failing the job.",
                "WARNING")
            self.alert_policies["runner-5xx"] = policy(
                "runner-5xx", "llmq: the GPU runner answers 5xx",
                gcp.monitoring.AlertPolicyConditionArgs(
                    display_name="runner 5xx ratio",
                    condition_threshold=gcp.monitoring.AlertPolicyConditionConditionThresholdArgs(
                        filter=services.apply(lambda s: runner_filter(
                            "request_count", s, ' AND metric.label.response_code_class = "5xx"')),
                        denominator_filter=services.apply(lambda s: runner_filter("request_count", s)),
                        aggregations=[gcp.monitoring.AlertPolicyConditionConditionThresholdAggregationArgs(
                            alignment_period="300s", per_series_aligner="ALIGN_RATE",
                            cross_series_reducer="REDUCE_SUM", group_by_fields=["resource.label.service_name"])],
                        denominator_aggregations=[
                            gcp.monitoring.AlertPolicyConditionConditionThresholdDenominatorAggregationArgs(
                                alignment_period="300s", per_series_aligner="ALIGN_RATE",
                                cross_series_reducer="REDUCE_SUM", group_by_fields=["resource.label.service_name"])],
                        comparison="COMPARISON_GT", threshold_value=args.runner_error_ratio,
                        duration=duration(600))),
                "More than the threshold of pushes got 5xx (transient faults, engine not ready or dead) "
                "for 10 minutes. See the runner's logs (severity ERROR).",
                "ERROR")
        self.dashboard = gcp.monitoring.Dashboard(
            f"{name}-dashboard", project=args.project,
            dashboard_json=pulumi.Output.all(services, subscriptions, inspection).apply(
                lambda v: dashboard_json(args.dashboard_name, v[0], v[1], v[2])),
            opts=child)
        self.register_outputs({"alert_policies": [p.name for p in self.alert_policies.values()],
                               "dashboard": self.dashboard.id, "submissions_metric": self.submissions_metric.name})
