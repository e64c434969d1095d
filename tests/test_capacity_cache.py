"""The start-up capacity measurement is reused by the next start with the same model, settings and machine,
and measured again when any of them changes (fast tier: fake engines; the measured seconds are the fakes')."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from service import capacity_cache
from service.app import create_app
from service.settings import Settings
from tests.conftest import DEFAULT_ATTACK
from tests.fakes import FAKES


def _start(tmp_path, **settings) -> tuple[dict, float]:
    s = Settings(cvss_artifact="", attack_artifact=DEFAULT_ATTACK, cache_dir=tmp_path, **settings)
    with TestClient(create_app(s, model_classes=FAKES)) as c:
        return dict(c.app.state.startup_seconds), c.app.state.models.attack.seconds_per_text


def test_second_start_reuses_the_measurement_and_a_changed_setting_measures_again(tmp_path, base_model):
    first, measured = _start(tmp_path)
    assert "capacity_probe" in first and "capacity_cached" not in first
    records = list((tmp_path / capacity_cache.FOLDER).glob("*.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["seconds_per_text"] == measured > 0

    second, reused = _start(tmp_path)
    assert "capacity_cached" in second and "capacity_probe" not in second
    assert reused == measured  # the recorded figure, not a new timing

    changed, _ = _start(tmp_path, max_num_seqs=32)  # other engine settings: other work per text
    assert "capacity_probe" in changed
    assert len(list((tmp_path / capacity_cache.FOLDER).glob("*.json"))) == 2

    off, _ = _start(tmp_path, capacity_cache=False)
    assert "capacity_probe" in off


def test_unreadable_or_foreign_records_are_measured_again(tmp_path):
    identity = {"task": "attack", "engine": {"max_num_seqs": 64}}
    capacity_cache.store(tmp_path, identity, 0.5)
    assert capacity_cache.load(tmp_path, identity) == 0.5
    assert capacity_cache.load(tmp_path, {**identity, "engine": {"max_num_seqs": 32}}) is None
    path = tmp_path / capacity_cache.FOLDER / f"{capacity_cache.key_of(identity)}.json"
    path.write_text('{"identity": ')  # a torn or hand-edited record
    assert capacity_cache.load(tmp_path, identity) is None
    path.write_text(json.dumps({"identity": identity, "seconds_per_text": 0}))
    assert capacity_cache.load(tmp_path, identity) is None  # never a zero cost per text
    path.write_text(json.dumps({"identity": {"task": "cvss"}, "seconds_per_text": 0.5}))
    assert capacity_cache.load(tmp_path, identity) is None  # a record under the wrong name


def test_an_unwritable_cache_costs_only_the_next_measurement(tmp_path, caplog):
    (tmp_path / capacity_cache.FOLDER).write_text("not a folder")  # (root ignores permission bits)
    capacity_cache.store(tmp_path, {"task": "attack"}, 0.5)  # logs, does not raise
    assert capacity_cache.load(tmp_path, {"task": "attack"}) is None
    assert "not cached" in caplog.text
