"""Adaptive precision serving: route each request to the int8, mixed or fp16 IR.

`routing` holds the pure decision, `difficulty` the in-service estimate, `engines` the
OpenVINO tiers, `app` the FastAPI service and `server` how it runs.
"""
