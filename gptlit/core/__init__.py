"""The foundation: errors, files, the launcher environment and the job record. Imports nothing else of gptlit."""
