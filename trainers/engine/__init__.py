"""The engine: the ``BaseTrainer`` facade and the parts it delegates to (driving the loop, control, requests,
signals, the callback set, the optimisation step)."""
