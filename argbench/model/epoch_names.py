"""The two epochs of a run a command can mean (``--epoch``) and an export folder records holding: the *selected*
one (the best ``eval.primary`` on validation, picked by :mod:`argbench.train.selection`) and the *last*.

Plain names, here so that the export folder (:mod:`argbench.model.export`), the trainer and every reader above it
share one spelling."""

SELECTED, LAST = "selected", "last"
EPOCHS = (SELECTED, LAST)
