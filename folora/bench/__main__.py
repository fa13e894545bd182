"""`python -m folora.bench [key=value ...]`: see `folora.bench` for the options."""

import sys

from folora.bench import main

main(sys.argv[1:])
