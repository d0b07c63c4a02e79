"""llmq's infrastructure as Pulumi components: one ComponentResource per module, composed by
`pulumi/__main__.py`. Only `config.py` reads `pulumi.Config`; components take typed Args.

A package (not loose modules) because Pulumi runs `pulumi/` with that folder first on sys.path:
loose modules named like `queue.py` would shadow the standard library."""
