"""Manifest: round trip, hash verification, pickle refusal, atomic writes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from training.artifact.manifest import (
    ArtifactError,
    BaseModelRef,
    Manifest,
    TrainingData,
    load_manifest,
    write_artifact,
)
from training.cvss.train import cvss_labels


def _manifest() -> Manifest:
    return Manifest(
        name="t",
        version="1",
        task="cvss",
        created_at="now",
        base_model=BaseModelRef(name_or_path="m"),
        prompt_template="Q: {text}\nA:",
        max_input_tokens=16,
        labels=cvss_labels(),
        hyperparameters={"lr": 1},
        training_data=TrainingData(sources=["x"], sha256="0", n_train=1, n_validation=1, split="by CVE"),
    )


def _weights(d):
    save_file({"w": torch.ones(2, 2)}, str(d / "adapter_model.safetensors"))
    (d / "adapter_config.json").write_text("{}")


def test_round_trip(tmp_path):
    out = tmp_path / "art"
    written = write_artifact(out, _manifest(), _weights)
    loaded = load_manifest(out)
    assert loaded == written
    assert set(loaded.files) == {"adapter_model.safetensors", "adapter_config.json"}
    assert loaded.render_prompt("{x} y") == "Q: {x} y\nA:"  # braces in input are kept verbatim
    assert loaded.labels.answer_regex() == "( N| A| L| P)( L| H)( N| L| H)( N| R)( C| U)( H| L| N)( H| L| N)( H| L| N)"
    assert loaded.labels.answer_text({m.key: next(iter(m.values)) for m in loaded.labels.metrics}).startswith(" N L")
    assert '"answers"' not in (out / "manifest.json").read_text()  # letter manifests: the earlier schema's bytes


def test_word_answers_round_trip_and_drive_the_grammar(tmp_path):
    """A word-answer artifact carries its words in the manifest; the grammar and answer text use them."""
    manifest = _manifest().model_copy(update={"labels": cvss_labels("word")})
    loaded = load_manifest(write_artifact(tmp_path / "art", manifest, _weights) and tmp_path / "art")
    av = loaded.labels.metrics[0]
    assert av.answers == {"N": "network", "A": "adjacent", "L": "local", "P": "physical"}
    assert loaded.labels.answer_regex().startswith(
        "( network| adjacent| local| physical)( low| high)( none| low| high)"
    )
    values = {"AV": "A", "AC": "H", "PR": "L", "UI": "R", "S": "C", "C": "N", "I": "L", "A": "H"}
    assert loaded.labels.answer_text(values) == " adjacent high low required changed none low high"


def test_word_answers_must_match_the_values():
    from training.artifact.manifest import CvssMetric

    values = {"L": "Low", "H": "High"}
    with pytest.raises(ValueError, match="must list the values"):
        CvssMetric(key="AC", name="Attack Complexity", values=values, answers={"H": "high", "L": "low"})
    with pytest.raises(ValueError, match="share an answer word"):
        CvssMetric(key="AC", name="Attack Complexity", values=values, answers={"L": "low", "H": "low"})
    with pytest.raises(ValueError, match="answers must be one of"):
        cvss_labels("phrase")


def test_written_files_are_readable_by_other_users(tmp_path):
    """A service running as another user (the image's uid 10001) must read what training wrote."""

    def private(d):
        _weights(d)
        (d / "adapter_model.safetensors").chmod(0o600)  # as safetensors' writer leaves it

    out = write_artifact(tmp_path / "art", _manifest(), private) and tmp_path / "art"
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {
        "adapter_model.safetensors": 0o644,
        "adapter_config.json": 0o644,
        "manifest.json": 0o644,
        "README.md": 0o644,  # the model card
    }
    assert out.stat().st_mode & 0o777 == 0o755


def test_tampered_file_is_refused(tmp_path):
    out = tmp_path / "art"
    write_artifact(out, _manifest(), _weights)
    save_file({"w": torch.zeros(2, 2)}, str(out / "adapter_model.safetensors"))
    with pytest.raises(ArtifactError, match="sha256 mismatch for adapter_model.safetensors"):
        load_manifest(out)


def test_pickle_and_unlisted_files_are_refused(tmp_path):
    out = tmp_path / "art"
    write_artifact(out, _manifest(), _weights)
    (out / "extra.safetensors").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="not listed in the manifest"):
        load_manifest(out)
    (out / "extra.safetensors").unlink()
    (out / "model.bin").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="pickle"):
        load_manifest(out)

    def writes_pickle(d):
        _weights(d)
        torch.save({"w": torch.ones(1)}, d / "head.pt")

    with pytest.raises(ArtifactError, match="pickle"):
        write_artifact(tmp_path / "p", _manifest(), writes_pickle)
    assert not (tmp_path / "p").exists()


def test_failed_write_keeps_previous_artifact(tmp_path):
    out = tmp_path / "art"
    write_artifact(out, _manifest(), _weights)
    before = (out / "manifest.json").read_text()

    def crashes(d):
        _weights(d)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_artifact(out, _manifest().model_copy(update={"version": "2"}), crashes)
    assert (out / "manifest.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["art"]  # no half-written sibling left behind


def test_bad_manifest(tmp_path):
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"task": "cvss"}))
    with pytest.raises(ArtifactError, match="invalid manifest"):
        load_manifest(tmp_path)


def test_base_weights_hash_refuses_a_folder_it_cannot_read(tmp_path):
    """An unreadable base folder lists no files; hashing nothing would blame the artifact, not the folder."""
    from training.artifact.base_model import weights_hash

    (tmp_path / "base").mkdir()
    with pytest.raises(PermissionError, match="not readable"):
        weights_hash(str(tmp_path / "base"))


def test_committed_defaults_load_and_are_named_for_their_folders():
    """Responses carry the manifest's name (`model.name`); a refit written under another name must not ship."""
    from tests.conftest import DEFAULT_ATTACK, DEFAULT_CVSS

    for folder in (DEFAULT_CVSS, DEFAULT_ATTACK):
        assert load_manifest(folder).name == folder.name


def test_base_folder_check_covers_tokenizer_and_config(tmp_path, base_model):
    """A base folder with the same weights and another tokenizer is refused: the model would read other ids."""
    import shutil

    from tests.conftest import DEFAULT_CVSS
    from training.artifact.base_model import files_hash
    from training.artifact.loading import base_for

    manifest = load_manifest(DEFAULT_CVSS)
    assert manifest.base_model.files_sha256 == files_hash(str(base_model))  # setup rebuilt the same files
    copy = tmp_path / "base"
    copy.mkdir()
    for f in base_model.iterdir():
        (copy / f.name).symlink_to(f) if f.suffix == ".safetensors" else shutil.copy2(f, copy / f.name)
    pinned = manifest.model_copy(
        update={"base_model": manifest.base_model.model_copy(update={"name_or_path": str(copy)})}
    )
    assert base_for(pinned) == str(copy)
    cfg = json.loads((copy / "tokenizer_config.json").read_text())
    (copy / "tokenizer_config.json").write_text(json.dumps({**cfg, "pad_token": "<|endoftext|>"}))
    with pytest.raises(ArtifactError, match="config and tokenizer files"):
        base_for(pinned)
