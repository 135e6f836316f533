"""The command line, on its own floor above the library: ``python -m bench COMMAND`` (or
``stochgrad-bench COMMAND``). It imports bench, analysis and experiments; none of them imports it.

:func:`benchcli.cli.main` parses and dispatches; one module per subcommand in :mod:`benchcli.commands`.
"""
