# Kept by the template: `copier update` changes this file. Your code goes outside core/.
"""The service's machinery, kept by the template: the app and what every request passes
through (the edge, errors, logs, metrics), the settings, the gunicorn worker and, with a
database, its engine and migration step. Your routes and tables go in routes.py and models.py.
"""
