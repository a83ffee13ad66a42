"""Distributed runs under ``torchrun``: the process environment (``environment``: ``init_from_env``, ``rank``,
``world_size`` ...), the trainer's view of the other processes (``ranks``), collectives between ranks, the DDP wrap,
the stop vote and the error that names a lost peer (``peer_failure.PeerFailure``)."""
