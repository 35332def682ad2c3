"""The only code that knows Flower: apps, strategy, array conversion, launcher."""
