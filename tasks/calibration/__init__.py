"""Calibration: INT8 PTQ on exactly the selected images (`quantize`), and what the FP model's
activations say about a calibration set — per-image activation ranges (`profiles`) and the
share of activations an INT8 range clips (`clipping`), both read through `probes`."""
