"""`python -m mnistops`: the command line."""

from mnistops.cli import main

if __name__ == "__main__":
    main()
