"""What of the forecaster never runs in the worker: retraining from the stream (``retrain.py``)."""
