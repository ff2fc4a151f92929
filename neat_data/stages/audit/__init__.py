"""The data audit (`neat-data audit`): what the ranked pairs would teach — its measures, duplicates, report."""
