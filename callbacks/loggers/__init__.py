"""The loggers and what they share: the metric flow (step outputs accumulated on the device), the values they log,
their base class (row schedules, per-validator values, the ``trainer.log`` sink), what ``trainer.log`` may send them,
and the failure policy of an external backend."""
