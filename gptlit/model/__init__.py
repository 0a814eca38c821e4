"""The network and what it knows about itself: config and presets, the GPT, tokenizer, decoding, FLOPs."""
