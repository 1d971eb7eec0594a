"""The execution layer: what starts, watches, stops and reconciles trainer attempts.

`job` is the contract between the server and a trainer (what an attempt is given, the
wire format it reports in); `supervisor` runs attempts for a `RunService`; `reconcile`
recovers what a dead server left behind. Torch-free: only the trainer child imports torch.
"""
