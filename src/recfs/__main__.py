from .cli import main

# guarded: `recfs map` starts worker processes that import the main module again
if __name__ == "__main__":
    raise SystemExit(main())
