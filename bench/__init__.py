"""`make bench`: performance figures for Porchlight (see bench/common.py and bench/__main__.py)."""
