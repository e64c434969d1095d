"""The contract between training (writes artifacts) and serving (reads them), and the inference primitives
both sides share. Light on purpose: nothing here imports the training stack (Trainer, scikit-learn, scipy,
matplotlib, typer), so the service imports only this subpackage.

- `layout`: the file names of an artifact folder, one constant each.
- `manifest`: the manifest and split schemas; the store (atomic write, load with hash verification).
- `base_model`: resolving and hashing the base model (and converting the embedded GGUF once).
- `loading`: loading the tokenizer, base + adapter, and the classifier with its head.
- `prompting`, `encoding`: prompt templates, truncation, token ids, CVSS value tokens and temperature.
- `scoring`: CVSS base score and severity.
- `folding`: the folded-checkpoint cache the vLLM engines load.
"""
