"""``bnexp report``: figures and a Markdown page that show what batch norm did in a set of runs.

Everything is read from the runs' own files (``run.json``, ``config.yaml``, ``overrides.yaml``,
``metrics.jsonl``, ``norm_params.json``); a run without ``metrics.jsonl`` falls back to its
TensorBoard events, read with tensorboard's own ``EventAccumulator``.

Runs whose configs differ only in ``seed`` are one *cell* (:func:`bnexp.views.stats.seed_cells`): a cell
is drawn as one line, the mean over its seeds with a ±1 standard deviation band, and its final
metrics are given as mean ± std (n); cells that differ in one setting are compared with Welch's
t-test (is the difference larger than seed noise?). Legend labels name only the settings that
differ between cells (``norm=custom lr=0.1``); report.md maps each label to its full settings and
runs. Figures are drawn on matplotlib's Agg canvas (no display, no pyplot state), 15 inches wide,
with the legend below the axes (the figure grows by its rows, so it never covers data):

    curves.png        validation accuracy / loss per epoch and training loss per step (per example seen when
                      batch sizes differ), one line per cell: its own line style and marker, custom dashed
                      above builtin, ±1 std bands as faint edged fills; a series a panel cannot draw is named
                      under the panel
    activations.png   15/50/85th percentile bands of the last norm site's unit 0 (the activation's
                      input) over training, one panel per norm, as in Ioffe & Szegedy (2015) Fig. 1(b, c);
                      below, the same bands over all units of every norm site
    norm_params.png   gamma and beta per norm site at the end of training (box plots per cell)
    gradients.png     effective learning rate lr/||W||^2 and gradient norm of the layer before the last
                      norm site, over training (runs with histograms on)
    bn_gap.png        validation accuracy with batch statistics and with recalibrated running
                      statistics, minus that with the running statistics, per epoch (runs with BN)
    batch_size.png    final validation accuracy and train/eval gap vs batch size (when batch size varies)
    search_objective.png, search_history.png
                      an Optuna sweep's objective vs each searched parameter and per trial with the best so
                      far (instead of batch_size.png)
    report.md         the figures, the label mapping, the tables of final metrics and seed statistics

The package, in the order its modules import each other: ``load`` (a run's files as RunData), ``cells``
(runs grouped by settings, their labels and colours), ``figures`` (the PNGs; with ``science`` and ``search``
the modules that draw), ``tables`` (the Markdown tables), ``markdown`` (report.md and :func:`build_report`).
The command imports it lazily.
"""
