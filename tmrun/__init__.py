"""The command line of ``run_program.py``: local mode (``local``) and AWS mode (``aws``).

Entry-point code (argparse, printing, exit codes) that uses ``nodeapp`` and ``provisioning``.
"""
