"""One module per CLI command (`python -m profiler NAME`), each with add_arguments() and main()."""
