"""Layer 3, store: run directories, their ``run.json`` record, who may write them, and finding them
(files, record, lock, run, catalog; registry queries, labels, trash, history on top).

A run directory is a small database and behaves like one:

* **one writer**: a process writing a run holds an exclusive ``flock`` on its ``.lock`` file for as
  long as it writes (the OS drops it when the process dies, even by SIGKILL); a second writer is
  refused with a message naming the owner;
* **no run looks alive when it is not**: ``running`` in ``run.json`` is believed only while that
  lock is held (same host) or the heartbeat is fresh (another host); otherwise the run is ``dead``;
* **atomic files**: ``run.json`` and the other small files are replaced by rename, never
  half-written; the checkpoint likewise (:mod:`bnexp.engine.checkpoint`);
* **hostile files are data, not code or traps**: records are parsed as JSON and type-checked,
  non-regular files (a FIFO named ``run.json``) are refused without being opened for a blocking
  read, and nothing here follows a symlink out of the output directory when deleting.

Layout of a run directory::

    run.json           the record (RunRecord): id, status, owner, times, key config values, final metrics
    config.yaml        the composed, resolved config
    overrides.yaml     the command-line overrides that produced it
    metrics.jsonl      one JSON record per line: kind = train | epoch | activation | grad
    norm_params.json   final per-site gamma/beta/running stats
    checkpoint.pt      model, optimizer, scheduler and RNG state (plain tensors; see bnexp.engine.checkpoint)
    .lock              held by the process writing the run
    events.out.tfevents.*   TensorBoard events

Nothing in this package imports torch, so registry commands stay fast.
"""
