"""The lip-sync service: a Ray Serve application that answers HTTP requests with dubbed videos.

``service`` is the deployment (routes, auth, errors), ``uploads`` turns a request's files into
checked media on a private temporary folder, ``auth`` holds the bearer-token rules. The entry
point is ``workflows/serve.py``.
"""
