"""FastAPI inference service for the CVSS and ATT&CK classifiers."""
