"""Simulations of hana mesh: the deterministic simulator (`simulations.sim`,
run by `python -m simulations.deterministic`) and deliberately injected bugs
that it must catch (`simulations.mutations`)."""
