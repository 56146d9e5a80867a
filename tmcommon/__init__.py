"""Code that the node, the worker and the command lines share: the settings schema and logging.

It imports nothing of the project's other packages (tests/test_layering.py keeps it so).
"""
