"""Routing: address normalisation, local submission, and (later) local vs remote and aliases."""
