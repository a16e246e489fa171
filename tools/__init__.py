"""Repository tools, run from the repository root: the local cluster (`localcluster`), the
monitoring generators (`monitoring`), `render_manifests.py`, `render_dashboard.py`, `demo.py`."""
