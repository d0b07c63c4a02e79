"""The platform's domain core: request and job models, the job state machine, errors and ports.

Pure Python: no Google client and no engine is imported here. Adapters live in `jobs.adapters`.
"""
