"""The execution layer: what starts, watches, stops and reconciles trainer attempts.

`executor` is the interface every way of running an attempt implements (`local`: a
spawned child; `slurm`: a batch job); `supervisor` runs attempts for a `RunService` on
an executor, in the slots `scheduler` gives (one per GPU; the run queue); `job` is the
contract between the server and a trainer (what an attempt is given, the wire format it
reports in); `reconcile` recovers what a dead server left behind. Torch-free: only the
trainer imports torch. See docs/execution.md.
"""
