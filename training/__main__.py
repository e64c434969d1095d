"""Training CLI: `python -m training --help`."""

from training.cli import app

if __name__ == "__main__":
    app()
