"""Read models beyond the run summary, and the snapshots that make start-up flat.

`runpage`: what a run page draws, bounded (`series`: min/max buckets at every zoom);
`snapshots`: the cached state of every read model with the seq it reflects, verified
at start and folded forward from the log.
"""
