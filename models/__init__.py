"""Reference models of onnxslice: build scripts (torch, scikit-learn) and the small exported files.

``models.zoo`` lists them and is importable without torch; each ``models/<script>.py`` builds,
trains and exports its models when run as ``python -m models.<script>`` from the repository root.
"""
