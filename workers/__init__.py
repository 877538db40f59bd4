"""Expert workers: expert compute and expert weights, loaded, dropped and copied at run time."""
