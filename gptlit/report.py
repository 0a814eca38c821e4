"""`python -m gptlit.report <sweep dir>`: the older spelling of `python report.py <sweep dir>` (gptlit/run/report.py)."""

from gptlit.run.report import main

if __name__ == "__main__":
    main()
