"""Local tools: the local stack, the demo, model building, load and benchmark scripts."""
