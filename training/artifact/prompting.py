"""Prompt templates (defined here only, then carried to the service inside the manifest) and truncation."""

from __future__ import annotations

# User text is plain text: special tokens written inside it ("<|endoftext|>", "<|im_start|>") are split into
# ordinary tokens rather than read as the model's control tokens. Every encoding of a prompt, in training,
# evaluation and serving, goes through these options (templates hold no special tokens: checked at load).
PLAIN_TEXT = {"add_special_tokens": False, "split_special_tokens": True}

CVSS_TEMPLATE = "Vulnerability description: {text}\nCVSS v3.1 base metrics (AV AC PR UI S C I A):"
ATTACK_TEMPLATE = "Threat report excerpt: {text}\nMITRE ATT&CK technique:"


def truncate(tokenizer, text: str, max_tokens: int) -> tuple[str, bool]:
    """Cut `text` to its first `max_tokens` tokens; returns (text, was_truncated).

    Untruncated text is returned unchanged (never re-decoded), so training and serving see the
    same string for every input that fits.
    """
    ids = tokenizer.encode(text, **PLAIN_TEXT)
    if len(ids) <= max_tokens:
        return text, False
    return tokenizer.decode(ids[:max_tokens]), True
