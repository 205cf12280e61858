"""Cluster credentials (issue 18): the cluster CA, node certificates, join
tokens, pending machines, revocation, renewal and CA rolls."""
