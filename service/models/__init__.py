"""One class per model kind: load / preprocess / predict / postprocess."""
