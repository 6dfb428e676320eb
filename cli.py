"""`python cli.py ...` from a checkout: the same commands as the installed `jaxseg` script.

The command line itself lives in :mod:`jaxseg.cli`, so that what a wheel installs stays under
``jaxseg/`` (no generic top-level module in site-packages).
"""
import sys

from jaxseg.cli import main

if __name__ == "__main__":
    sys.exit(main())
