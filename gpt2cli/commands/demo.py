"""`gpt2 demo`: the README's first command (replaced by the real NumPy-vs-torch demo)."""


def register(subparsers):
    parser = subparsers.add_parser("demo", help="train a small GPT in NumPy and in torch side by side")
    parser.set_defaults(func=run)


def run(args):
    print("demo: not built yet")
    return 0
