"""The job runner: pulls jobs and serves them with an LLM engine."""
