"""The HTTP layer: Flask blueprints for every endpoint, the dashboard, ``/metrics`` and the
OpenAPI document; request parsing, token checks, JSON views and error bodies.

It turns requests into calls on the ``Node`` (``nodeapp/node.py``) and the peer client, and their
answers into JSON. It may import ``nodeapp.store``, ``nodeapp.fleet`` and the node's top-level
modules; nothing below it imports it (``tests/test_layering.py``).
"""
