"""Adaptive precision serving: route each request to the int8, mixed or fp16 IR.

`routing` holds the pure decision, `engines` the OpenVINO tiers, `app` the FastAPI service
and `server` how it runs (`tailcal serve`). The difficulty it routes on is
`tasks.difficulty`'s, the scale calibration sets were selected on.
"""
