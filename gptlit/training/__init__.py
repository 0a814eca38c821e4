"""Training with Lightning: the LightningModule, optimizer settings, callbacks, checkpoints, exact resume and the memory plan."""
