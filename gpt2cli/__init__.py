"""The `gpt2` command line: one subcommand per module in gpt2cli/commands."""
