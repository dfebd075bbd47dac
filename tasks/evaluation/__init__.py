"""Evaluation: the labelled split loaded once per run (`split`), COCO mAP (`coco`), one model's
evaluation (`evaluate`) and FP16 against INT8 (`comparison`)."""
