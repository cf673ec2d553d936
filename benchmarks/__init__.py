"""Benchmarks: NumPy vs torch timings, tokenizer speed, reports."""
