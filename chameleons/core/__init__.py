"""The ground every stage stands on: errors, ranks, the config file, model sources, run folders."""
