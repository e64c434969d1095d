"""Whole threat reports: text extraction, the report pipeline over the ATT&CK model, and its exports
(ATT&CK Navigator layer, STIX 2.1 bundle); `python -m service.report` runs it on files."""
