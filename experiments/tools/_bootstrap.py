"""Run as a file, a script here has this folder as sys.path[0]: put the repository root first (see experiments/__init__.py)."""
import sys, pathlib
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
