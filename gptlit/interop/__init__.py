"""Weights in and out: gptlit's own checkpoints, Hugging Face GPT-2 folders and the book's .pth files."""
