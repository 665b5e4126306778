"""medkit: adapting vision-language models to medical images."""
__version__ = "0.1.0"
