"""The model lifecycle shared by the detector and the forecaster: training data read from the stream by time,
ground truth from labels and operators' verdicts, the promotion gate, model cards and drift.

Each service's ``offline/retrain.py`` supplies what is specific to its models (fit, evaluate); the flow
around them (``python -m services.<name> retrain``) is :mod:`shared.mlops.flow`. See docs/mlops.md.
"""
