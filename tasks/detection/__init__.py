"""The detector: model and checkpoint (`model`), OpenVINO export and IR names (`export`),
pre- and post-processing shared by every path (`preprocess`, `postprocess`), the OpenVINO
runtime (`runtime`) and training (`training`)."""
