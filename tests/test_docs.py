"""What a newcomer reads stays true: the README's length and layout, the model cards against their manifests,
and every bench command's --help (fast tier)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import DEFAULT_ATTACK, DEFAULT_CVSS, REPO

PACKAGES = ("service", "training", "bench")


def _layout() -> dict[str, str]:
    """The README's layout block, split by top-level folder."""
    text = (REPO / "README.md").read_text()
    block = text[text.index("## Layout") :]
    block = block[block.index("```") + 3 :]
    block = block[: block.index("```")]
    sections: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        m = re.match(r"^(\w+)/\s", line)
        if m:
            current = m.group(1)
        if current:
            sections[current] = sections.get(current, "") + line + "\n"
    return sections


def _listed(section: str) -> set[str]:
    """Module paths a layout section names: `folder/ (a.py, b.py)` groups, and paths written out."""
    paths = set()
    for folder, names in re.findall(r"(\w+)/ \(([^)]*)\)", section):
        paths |= {f"{folder}/{n}" for n in re.findall(r"([\w]+\.py)\b", names)}
    rest = re.sub(r"(\w+)/ \(([^)]*)\)", "", section)
    rest = re.sub(r"^\w+/\s", "", rest)
    return paths | set(re.findall(r"\b([\w/]+\.py)\b", rest))


def test_readme_is_short_and_its_layout_names_every_module_and_nothing_else():
    assert len((REPO / "README.md").read_text().splitlines()) <= 450
    sections = _layout()
    for package in PACKAGES:
        listed = _listed(sections[package])
        modules = {p.relative_to(REPO / package).as_posix() for p in (REPO / package).rglob("*.py")}
        modules = {m for m in modules if not m.endswith("__init__.py")}
        assert modules - listed == set(), f"{package}/ modules missing from the README layout"
        assert listed - modules == set(), f"{package}/ paths in the README layout that do not exist"
    for folder in sections:
        assert (REPO / folder).is_dir(), folder


@pytest.mark.parametrize("artifact", [DEFAULT_CVSS, DEFAULT_ATTACK], ids=["cvss", "attack"])
def test_committed_model_cards_match_their_manifests(artifact):
    from training.artifact.card import card_text, headline
    from training.artifact.manifest import load_manifest

    manifest = load_manifest(artifact)
    card = (artifact / "README.md").read_text()
    assert card == card_text(manifest), "stale card: run `python -m training card --artifact ...`"
    assert card.startswith("---\nbase_model: ") and "\n---\n" in card  # the Hugging Face YAML header
    rows = headline(manifest)
    assert all(model != "–" and base != "–" for _, model, base in rows), rows  # model beside the baseline
    for name, model, base in rows:
        assert f"| {name} | {model} | {base} |" in card
    assert manifest.version in card


def test_a_card_follows_its_manifest():
    """Another figure in the manifest gives another card: the card is derived, never hand-edited."""
    from training.artifact.card import card_text
    from training.artifact.manifest import load_manifest

    manifest = load_manifest(DEFAULT_CVSS)
    changed = manifest.model_copy(update={"metrics": {**manifest.metrics, "mean_metric_accuracy": 0.5}})
    assert "| mean per-metric accuracy | 0.500 |" in card_text(changed)
    assert "| mean per-metric accuracy | 0.500 |" not in card_text(manifest)


BENCH_COMMANDS = sorted(p.stem for p in (REPO / "bench").glob("*.py") if 'if __name__ == "__main__":' in p.read_text())


@pytest.mark.parametrize("module", BENCH_COMMANDS)
def test_every_bench_command_runs_its_help(module):
    r = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage:" in r.stdout


def test_bench_commands_are_found():
    assert {"run", "batch", "burst", "soak", "cvss_tuning", "train_speed", "seed_method"} <= set(BENCH_COMMANDS)
