"""The training callbacks besides checkpoints (gptlit/training/checkpointing.py) and the loss guard
(gptlit/training/guard.py), one job a file:

  progress.py    the console: the time per step and to the end (`StepTime`), plain progress lines where the
                 output is no terminal (`ProgressLog`), the progress bar (`LogStepProgressBar`), `say`
  sampling.py    a text sample every N steps (`SampleText`)
  book.py        the book's evaluate_model every N steps (`BookEval`, callbacks=book)
  loss_plot.py   the loss plot written when training ends (`LossPlot`)
  job_result.py  each run's job_result.json, what a sweep summary reads, and the HPARAMS tab (`JobResult`)

They read the module only through gptlit.training.contracts.TrainingModule, and none of them reads a
device tensor back to the host after an optimizer step that does not log (GPTLitModule.logging_step):
on a GPU each such read makes the host wait for the device.
"""
