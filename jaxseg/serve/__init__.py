"""`jaxseg serve`: a local web app over `jaxseg explain` (docs/serve.md).

``app`` is the HTTP server and its routes, ``sessions`` the per-browser folders and upload
checks, ``jobs`` the one worker that runs explanations in turn, ``static/`` the page.
"""
