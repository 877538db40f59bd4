"""`switchyard.cluster.serve_app:app`, the import path of the Serve application (`serving.app.app`).

A short path for Serve configs and the chart's `serve.importPath`; the application lives in
`cluster/serving/`.
"""

from switchyard.cluster.serving.app import app

__all__ = ["app"]
