"""`python -m prefect_evolink …` is the `prefect-evolink` command."""

import sys

from prefect_evolink.cli import main

sys.exit(main())
