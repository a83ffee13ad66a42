"""The loggers and what they share: the metric flow (step outputs accumulated on the device), the values they log,
and the failure policy of an external backend."""
