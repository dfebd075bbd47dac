"""Detector internals: shared pre/post-processing, OpenVINO runtime, training loop, clipping analysis.

Public stage entry points live in `tasks.detector`, `tasks.quantize` and `tasks.evaluate`.
"""
