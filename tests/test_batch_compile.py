"""When the batch command compiles its engines (`batch_compile`, `--compile`): only where the longer start-up
pays back, and never where Inductor has no C++ compiler to build with."""

from __future__ import annotations

import logging
import os

import pytest

from service import batch, engine
from service.settings import Settings


@pytest.mark.parametrize(
    ("mode", "texts", "expected"),
    [
        ("auto", batch.COMPILE_MIN_TEXTS - 1, False),
        ("auto", batch.COMPILE_MIN_TEXTS, True),
        ("on", 1, True),
        ("off", 100_000, False),
    ],
)
def test_compiled_only_where_it_pays_back_or_is_asked_for(monkeypatch, mode, texts, expected):
    monkeypatch.setattr(engine, "can_compile", lambda: True)
    assert batch.compiles(mode, texts) is expected


def test_no_compiler_means_eager_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(engine, "can_compile", lambda: False)
    with caplog.at_level(logging.WARNING, logger="service.batch"):
        assert batch.compiles("on", batch.COMPILE_MIN_TEXTS) is False
    assert "no C++ compiler" in caplog.text


def test_can_compile_looks_for_the_compiler_inductor_would_call(monkeypatch, tmp_path):
    monkeypatch.setattr(engine, "on_gpu", lambda: False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no g++, no c++
    monkeypatch.setenv("CXX", "my-cxx")
    assert engine.can_compile() is False
    cxx = tmp_path / "my-cxx"
    cxx.write_text("#!/bin/sh\n")
    cxx.chmod(0o755)
    assert engine.can_compile() is True


def test_a_compiled_cpu_engine_keeps_its_compile_cache_beside_the_folded_models(monkeypatch, tmp_path):
    for name in ("VLLM_USE_AOT_COMPILE", "TORCHINDUCTOR_CACHE_DIR"):  # unset here, restored afterwards
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    engine._compiled_on_cpu(Settings(cache_dir=tmp_path / "cache"))
    # vLLM 0.32's AOT artifacts do not load back on a CPU: with them every start compiled again
    assert os.environ["VLLM_USE_AOT_COMPILE"] == "0"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str((tmp_path / "cache" / "inductor").resolve())
