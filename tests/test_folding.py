"""Folding artifacts into the checkpoints vLLM serves: the CVSS LoRA merged into the causal LM, and the
ATT&CK LoRA + head / T as a sequence classifier. Same outputs as base + LoRA (+ head / T), built once,
rebuilt when the cached copy was altered."""

from __future__ import annotations

import torch

from tests.conftest import DEFAULT_ATTACK, DEFAULT_CVSS
from training.artifact.folding import folded_model_dir
from training.artifact.layout import FOLD_STAMP
from training.artifact.manifest import load_manifest


@torch.inference_mode()
def test_merged_model_matches_lora_and_is_cached(tmp_path, base_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from training.artifact.loading import load_tokenizer

    manifest = load_manifest(DEFAULT_CVSS)
    merged = folded_model_dir(str(base_model), DEFAULT_CVSS, manifest, tmp_path)
    assert (merged / "model.safetensors").is_file() and (merged / "tokenizer.json").is_file()
    assert not list(tmp_path.glob(".folding-*")), "staging folder left behind"

    tok = load_tokenizer(str(base_model))
    prompt = manifest.render_prompt("A SQL injection in the login form allows remote attackers to run commands.")
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32, use_safetensors=True)
    lora = PeftModel.from_pretrained(base, str(DEFAULT_CVSS)).eval()
    folded = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32, use_safetensors=True).eval()
    want, got = lora(ids).logits[0, -1], folded(ids).logits[0, -1]
    with lora.disable_adapter():
        untouched = lora(ids).logits[0, -1]
    assert not torch.allclose(want, untouched, atol=1e-3), "the adapter should change the logits"
    torch.testing.assert_close(got, want, atol=2e-3, rtol=1e-3)

    mtime = (merged / "model.safetensors").stat().st_mtime_ns
    assert folded_model_dir(str(base_model), DEFAULT_CVSS, manifest, tmp_path) == merged
    assert (merged / "model.safetensors").stat().st_mtime_ns == mtime, "a valid cached copy is reused"

    with (merged / "model.safetensors").open("r+b") as f:  # corrupt the cached weights
        f.seek(-64, 2)
        f.write(b"\0" * 64)
    again = folded_model_dir(str(base_model), DEFAULT_CVSS, manifest, tmp_path)
    rebuilt = AutoModelForCausalLM.from_pretrained(again, dtype=torch.float32, use_safetensors=True).eval()
    torch.testing.assert_close(rebuilt(ids).logits[0, -1], want, atol=2e-3, rtol=1e-3)


def test_cached_copy_from_other_inputs_is_rebuilt_and_names_are_sanitised(tmp_path, base_model):
    import json

    manifest = load_manifest(DEFAULT_CVSS).model_copy(update={"name": "../../evil name"})
    merged = folded_model_dir(str(base_model), DEFAULT_CVSS, manifest, tmp_path)
    assert merged.parent == tmp_path and ".." not in merged.name and " " not in merged.name
    stamp = merged / FOLD_STAMP
    recorded = json.loads(stamp.read_text())
    # a stamp whose weights hash matches but which claims another adapter: not trusted, rebuilt
    stamp.write_text(json.dumps({**recorded, "inputs": {**recorded["inputs"], "adapter_sha256": "0" * 64}}))
    mtime = (merged / "model.safetensors").stat().st_mtime_ns
    assert folded_model_dir(str(base_model), DEFAULT_CVSS, manifest, tmp_path) == merged
    assert (merged / "model.safetensors").stat().st_mtime_ns != mtime
    assert json.loads(stamp.read_text())["inputs"] == recorded["inputs"]


@torch.inference_mode()
def test_folded_classifier_is_base_lora_and_head_over_temperature(tmp_path, base_model):
    """What vLLM's pooling runner serves: softmax of the folded checkpoint = softmax(logits / T) of the
    artifact as training loads it; the temperature is part of the cache key."""
    from transformers import AutoModelForSequenceClassification

    from training.artifact.loading import load_attack_classifier, load_tokenizer
    from training.attack.predict import attack_logits

    manifest = load_manifest(DEFAULT_ATTACK)
    assert abs(manifest.temperature - 1.0) > 0.05, "a temperature of 1 would not test the fold"
    folded = folded_model_dir(str(base_model), DEFAULT_ATTACK, manifest, tmp_path)
    texts = [
        "The actor sent spearphishing emails with a malicious Word attachment that ran a macro.",
        "Mimikatz dumped credentials from LSASS memory; the operators then moved laterally over SMB.",
        "A scheduled task re-launched the implant at every logon.",
    ]
    tok = load_tokenizer(str(base_model))
    ref = load_attack_classifier(
        DEFAULT_ATTACK, manifest, str(base_model), tok.pad_token_id, torch.device("cpu"), torch.float32
    )
    want = torch.softmax(attack_logits(ref, tok, manifest, texts) / manifest.temperature, -1)
    model = AutoModelForSequenceClassification.from_pretrained(folded, dtype=torch.float32, use_safetensors=True)
    assert model.config.id2label[0] == manifest.labels.techniques[0].id
    got = torch.softmax(attack_logits(model.eval(), tok, manifest, texts), -1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert (got - torch.softmax(attack_logits(ref, tok, manifest, texts), -1)).abs().max() > 1e-3, "T is folded in"

    recalibrated = manifest.model_copy(update={"temperature": manifest.temperature * 2})
    assert folded_model_dir(str(base_model), DEFAULT_ATTACK, recalibrated, tmp_path) != folded


def test_builders_wait_while_an_engine_reads_the_cache(tmp_path):
    import fcntl

    import pytest

    from training.artifact.folding import reading

    # a builder's exclusive lock cannot be taken while an engine reads
    with reading(tmp_path), (tmp_path / ".lock").open("a") as other, pytest.raises(BlockingIOError):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with (tmp_path / ".lock").open("a") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released after loading


def test_hub_base_revision_is_pinned_and_keys_the_cache(base_model, monkeypatch):
    """A hub-id base loads at a pinned revision, and the folded checkpoint is keyed by it; a local folder
    needs no pin (its weights are hashed). Repo-relative base paths resolve from any working directory."""
    from training.artifact import base_model as bm
    from training.artifact.folding import folded_inputs

    monkeypatch.setattr(bm, "_PINNED", {})
    manifest = load_manifest(DEFAULT_CVSS)
    unpinned = folded_inputs("fdtn-ai/Foundation-Sec-8B", manifest)
    bm.pin_revision("fdtn-ai/Foundation-Sec-8B", "abc123")
    bm.pin_revision(str(base_model), "ignored-for-local-folders")
    pinned = folded_inputs("fdtn-ai/Foundation-Sec-8B", manifest)
    assert "base_revision" not in unpinned and pinned["base_revision"] == "abc123"
    assert bm.revision_of(str(base_model)) is None

    monkeypatch.chdir("/")
    assert bm.resolve_base_model("models/smollm2-135m") == str(base_model.resolve())
