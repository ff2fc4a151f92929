"""`python -m neat_data.cli …` (what `neat-data run` starts for each stage; torchrun / accelerate launch -m)."""

from neat_data.cli import main

if __name__ == "__main__":
    main()
