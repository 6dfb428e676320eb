"""`python -m jaxseg ...`: the same commands as the installed `jaxseg` script."""
import sys

from jaxseg.cli import main

if __name__ == "__main__":
    sys.exit(main())
