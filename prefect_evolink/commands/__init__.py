"""The subcommands of `prefect-evolink` that run no flow of their own, one module each, and how
every command ends (`outcome`). `prefect_evolink/cli.py` builds the parser and runs `demo` and
`campaign`; importing these modules imports no Prefect (`--help` stays light).
"""
