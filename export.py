#!/usr/bin/env python
"""Export a gptlit checkpoint as a Hugging Face GPT-2 folder (config.json + model.safetensors + its tokenizer).

The command line is gptlit.commands.export (installed as gptlit-export); `python export.py --help` says more.
"""

from gptlit.commands.export import main

if __name__ == "__main__":
    main()
