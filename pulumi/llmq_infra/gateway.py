"""One base URL for the whole API (CONTRACT §8): API Gateway, configured from `openapi.yaml` itself.

Why API Gateway and not an HTTPS load balancer with serverless NEGs (docs/DEPLOY.md, "One URL"): it reads
the API document the functions already serve, so the routing table has one source (jobs/routes.py
generates the config, as it routes the local front door); it is billed per call and idles at zero, where
a load balancer's forwarding rule is billed by the hour; and it has no URL map to keep in step with the
document by hand. Its costs: streaming responses (the chat stream) are in preview, each backend has a
deadline (up to 3,600 s), and custom domains or Cloud Armor need a load balancer in front of it.

Authentication stays in the functions: the gateway passes `Authorization` through unchanged
(`disable_auth`), which needs functions that accept unauthenticated calls (api_key mode, public invokers).
In iam mode the gateway would have to replace the caller's token with its own, so it is not deployed."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi_gcp as gcp
import yaml

import pulumi
from jobs.adapters.http import openapi_document
from jobs.routes import RoutingTable, gateway_document
from llmq_infra.common import child_options

# Each function's backend deadline: a little over the function's own timeout, so the function answers first.
DEFAULT_DEADLINE_SECONDS = 90.0


@dataclass
class GatewayArgs:
    project: pulumi.Input[str]
    region: str
    api_id: str
    addresses: Mapping[str, pulumi.Input[str]]  # function name (x-llmq-function) -> its URL
    deadlines: Mapping[str, float] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)


class Gateway(pulumi.ComponentResource):
    url: pulumi.Output[str]

    def __init__(self, name: str, args: GatewayArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        document = openapi_document()
        missing = RoutingTable.from_document(document).functions() - set(args.addresses)
        if missing:
            raise ValueError(f"Gateway: no address for the function(s) {', '.join(sorted(missing))}")
        super().__init__("llmq:infra:Gateway", name, None, opts)
        child = child_options(self, opts)
        names = sorted(args.addresses)

        def config_contents(urls: list[str]) -> str:
            config = gateway_document(document, dict(zip(names, urls)), deadlines=args.deadlines, title=args.api_id)
            return base64.b64encode(yaml.safe_dump(config, sort_keys=False).encode()).decode()

        contents = pulumi.Output.all(*(args.addresses[n] for n in names)).apply(config_contents)
        api = gcp.apigateway.Api(f"{name}-api", project=args.project, api_id=args.api_id, labels=dict(args.labels),
                                 opts=child)
        # A config cannot be changed in place: a new one (generated id) replaces it once the gateway uses it.
        config = gcp.apigateway.ApiConfig(
            f"{name}-config", project=args.project, api=api.api_id, api_config_id_prefix=f"{args.api_id}-",
            openapi_documents=[gcp.apigateway.ApiConfigOpenapiDocumentArgs(
                document=gcp.apigateway.ApiConfigOpenapiDocumentDocumentArgs(path="openapi.yaml",
                                                                              contents=contents))],
            labels=dict(args.labels),
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(delete_before_replace=False)))
        gateway = gcp.apigateway.Gateway(f"{name}-gateway", project=args.project, region=args.region,
                                         gateway_id=args.api_id, api_config=config.id, labels=dict(args.labels),
                                         opts=child)
        self.url = gateway.default_hostname.apply(lambda host: f"https://{host}")
        self.register_outputs({"url": self.url})
