"""The `gpt2` command line: one subcommand per module in gpt2cli/commands."""
import npgpt  # noqa: F401  (first: sets OpenBLAS's thread timeout before NumPy loads, see npgpt/__init__.py)
