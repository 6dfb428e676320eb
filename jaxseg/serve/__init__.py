"""`jaxseg serve`: a web app over `jaxseg explain` on Starlette and uvicorn (docs/serve.md).

``app`` holds the state and rules (settings, catalog, sessions, the job queue, the predictor
cache), ``web`` the routes and the request checks, ``server`` runs them on uvicorn;
``sessions`` are the per-browser folders and upload checks, ``jobs`` the one worker and the
jobs' records on disk, ``predictors`` the compiled models kept between jobs, ``templates/`` the
page (Jinja2) and ``static/`` its script and style.
"""
