"""Investigation scripts (studies/README.md): each runs on its own, ``python studies/NAME.py``; none is part of the
harness."""
