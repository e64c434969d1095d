"""Benchmark result files are named after the machine: the name must be one plain file-name part."""

from __future__ import annotations

import re

from bench.harness import file_safe, machine


def test_file_safe_drops_marks_and_odd_characters():
    assert file_safe("Intel(R) Xeon(R) Processor") == "Intel-Xeon-Processor"
    assert file_safe("Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz") == "Intel-Core-i7-8700-CPU-3.20GHz"
    assert file_safe("NVIDIA H200") == "NVIDIA-H200"


def test_machine_name_is_a_plain_file_name_part():
    assert re.fullmatch(r"(cpu-)?[A-Za-z0-9_.-]+", machine())
