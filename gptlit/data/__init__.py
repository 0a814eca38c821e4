"""Text to training windows: the token cache, the window datasets, the resumable sampler and the LightningDataModule."""
