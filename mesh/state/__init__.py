"""The replicated state machine: pure, deterministic functions of the
committed log (no clock, network or randomness inside `apply`)."""
