"""`python -m deepembed`: the same CLI as the `deepembed` console script."""

from deepembed.cli.main import main

if __name__ == "__main__":
    main()
