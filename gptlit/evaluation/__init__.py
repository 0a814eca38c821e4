"""Evaluation beyond perplexity: bits per byte, multiple choice, last-word accuracy, each with its interval."""
