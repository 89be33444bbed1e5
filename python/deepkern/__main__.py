"""python -m deepkern: the deepkern command line."""

from .cli import main

raise SystemExit(main())
