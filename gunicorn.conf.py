# gunicorn reads ./gunicorn.conf.py by default: the node's settings and hooks live in the package
# (so an installed wheel has them too). See nodeapp/gunicorn_conf.py for why workers = 1.
from nodeapp.gunicorn_conf import *  # noqa: F401,F403
