"""Distributed runs under ``torchrun``: the process environment, collectives between ranks, the DDP wrap, the stop
vote and the error that names a lost peer."""
