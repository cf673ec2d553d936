"""Benchmarks: NumPy vs torch timings, tokenizer speed, reports."""
import npgpt  # noqa: F401  (first: sets OpenBLAS's thread timeout before NumPy loads, see npgpt/__init__.py)
